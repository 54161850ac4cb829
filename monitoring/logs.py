"""Prediction records from TorchServe's model_log.log: the handler's one JSON line per answered or rejected request.

The frontend prefixes each line with its MODEL_LOG log4j2 pattern (`%d{ISO8601} [%-5p] %t %c - %m%n`):
    2026-11-25T13:12:04,211 [INFO ] W-9000-catsdogs_1.0-stdout MODEL_LOG - {"batch_size": 1, ...}
or not at all (monitoring/log4j2.xml's JSON-only file). A timestamp without an offset is read as UTC
(TorchServe's local time in the containers). Rotated model_log.<date>.log.gz files are read too.
"""
from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from catsdogs.contract import PREDICTION_EVENT

# "2026-11-25T13:12:04,211", "2026-11-25 13:12:04.211", optional "Z" / "+01:00" / "+0100" (datetime.fromisoformat)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without an offset is UTC."""
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def parse_line(line: str) -> dict | None:
    """One log line -> the prediction record, with "time" (ISO) when the line has one; None for any other line."""
    start = line.find('{"')
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != PREDICTION_EVENT:
        return None
    stamp = _TIMESTAMP.match(line[:start].strip())
    if stamp:
        record["time"] = parse_time(stamp.group(0)).isoformat()
    return record


def log_files(path: Path) -> list[Path]:
    """A file as is; a folder -> its model_log*.log(.gz) files, rotated ones first (oldest name first)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("model_log*") if p.is_file())
        current = [p for p in files if p.name == "model_log.log"]
        return [p for p in files if p.name != "model_log.log"] + current
    raise FileNotFoundError(f"{path}: no such log file or folder; TorchServe writes model_log.log into its log "
                            f"folder (LOG_LOCATION: logs/ for `make serve`, else the --log-dir given to "
                            f"`python -m serving start`); pass that file or folder with --log")


def read_records(path: Path) -> list[dict]:
    """Every prediction record in a log file, or in a folder's model_log*.log(.gz) files, in file order."""
    records: list[dict] = []
    for file in log_files(Path(path)):
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8", errors="replace") as handle:
            records.extend(filter(None, map(parse_line, handle)))
    return records


def answered(records: Iterable[dict]) -> list[dict]:
    """Records of requests that got a prediction (status 200 with a label)."""
    return [r for r in records if r.get("status") == 200 and "label" in r]


def by_request_id(records: Iterable[dict]) -> dict[str, dict]:
    """request id -> record (the last one wins if an id repeats)."""
    return {str(r["request_id"]): r for r in records if r.get("request_id")}


def probabilities(record: dict, classes: list[str]) -> list[float]:
    """Class probabilities of an answered record: its confidence, the rest spread evenly (exact for two classes)."""
    label, confidence = record["label"], float(record["confidence"])
    if label not in classes:
        raise ValueError(f"record {record.get('request_id')}: label {label!r} is not one of {classes}")
    rest = (1.0 - confidence) / max(1, len(classes) - 1)
    return [confidence if name == label else rest for name in classes]
