"""Ground-truth feedback: (request id, predicted, true label, time) pairs in SQLite, and metrics over a window.

A client gets each prediction's request id in the `x-request-id` response header (TorchServe sets it);
when the true label becomes known (a user correction, a human review) it is stored against that id.
The prediction itself (label, confidence, model version, time) is looked up in TorchServe's
model_log.log by request id (monitoring/logs.py), so the feedback store never trusts a client's claim
about what the model said.
"""
from __future__ import annotations

import csv
import re
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from monitoring.logs import parse_time, probabilities
from training.metrics import classification_metrics

COLUMNS = {"request_id": "TEXT PRIMARY KEY", "predicted": "TEXT NOT NULL", "confidence": "REAL NOT NULL",
           "true_label": "TEXT NOT NULL", "model_version": "TEXT", "predicted_at": "TEXT",
           "labelled_at": "TEXT NOT NULL", "source": "TEXT"}
SCHEMA = f"CREATE TABLE IF NOT EXISTS feedback ({', '.join(f'{name} {kind}' for name, kind in COLUMNS.items())})"
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_window(text: str) -> timedelta:
    """"90m", "24h", "7d", "2w", "30s" -> timedelta (ValueError for anything else)."""
    match = _WINDOW.match(text or "")
    if not match:
        raise ValueError(f"window {text!r} is not a number with a unit s, m, h, d or w (e.g. 24h, 7d)")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def in_window(rows: Iterable[dict], now: datetime, window: timedelta) -> list[dict]:
    """Rows whose prediction time (else labelling time) lies in (now - window, now]."""
    return [r for r in rows if now - window < parse_time(r.get("predicted_at") or r["labelled_at"]) <= now]


def make_row(record: dict, true_label: str, classes: Sequence[str], labelled_at: datetime, source: str) -> dict:
    """A feedback row from the logged prediction record and the true label."""
    if true_label not in classes:
        raise ValueError(f"label {true_label!r} is not one of the model's classes {list(classes)}")
    if record.get("status") != 200 or "label" not in record:
        raise ValueError(f"request {record.get('request_id')} was not answered with a prediction "
                         f"(status {record.get('status')}, error {record.get('error')}); nothing to label")
    return {"request_id": str(record["request_id"]), "predicted": record["label"],
            "confidence": float(record["confidence"]), "true_label": true_label,
            "model_version": record.get("model_version"), "predicted_at": record.get("time"),
            "labelled_at": labelled_at.astimezone(timezone.utc).isoformat(), "source": source}


def window_metrics(rows: Sequence[dict], classes: Sequence[str]) -> dict:
    """training/metrics.py's metrics over feedback rows (probabilities rebuilt from label + confidence)."""
    if not rows:
        raise ValueError("no feedback in this window")
    y_true = np.array([list(classes).index(r["true_label"]) for r in rows])
    proba = np.array([probabilities({"label": r["predicted"], "confidence": r["confidence"]}, list(classes))
                      for r in rows])
    metrics = classification_metrics(y_true, proba, list(classes))
    metrics["model_versions"] = sorted({str(r.get("model_version")) for r in rows})
    return metrics


def connect(path: Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.execute(SCHEMA)
    return conn


def store(conn: sqlite3.Connection, rows: Iterable[dict]) -> int:
    """Insert or replace (a later label for the same request wins); returns the number of rows written."""
    rows = list(rows)
    with conn:
        conn.executemany(f"INSERT OR REPLACE INTO feedback ({', '.join(COLUMNS)}) VALUES "
                         f"({', '.join(':' + name for name in COLUMNS)})", rows)
    return len(rows)


def fetch(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM feedback ORDER BY labelled_at")]


def read_csv(path: Path) -> list[dict]:
    """request_id,label[,labelled_at] rows (header required; `true_label` accepted for `label`)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        label_field = "label" if "label" in fields else "true_label" if "true_label" in fields else None
        if "request_id" not in fields or label_field is None:
            raise ValueError(f"{path}: needs a header with request_id and label columns, got {sorted(fields)}")
        return [{"request_id": r["request_id"].strip(), "label": r[label_field].strip(),
                 "labelled_at": (r.get("labelled_at") or "").strip() or None} for r in reader if r["request_id"]]
