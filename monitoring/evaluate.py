"""Post-deployment evaluation: send a labelled batch to the live endpoint, score it, compare with offline.

Labels come from the images' paths exactly as the training ingest reads them (training/ingest.py:
`cat.1.jpg`, `dogs/x.jpg`, `PetImages/Cat/1.jpg`), in a folder or a .zip/.tar(.gz) archive read in place.
The deployed model's offline test metrics come from the server itself: the handler answers
`GET /models/<name>?customized=true` with model-meta.json's fields (version, test_metrics,
mlflow_run_id, mlflow_model_version ...) in `customizedMetadata`.
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from training.ingest import LabelledImage, labelled
from training.metrics import classification_metrics

COMPARED = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")
LOWER_IS_BETTER = {"log_loss", "ece"}


def choose(items: Sequence[tuple[str, str]], classes: Sequence[str], *, limit: int | None = None,
           sample: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """Which (relpath, label) items to send, in relpath order.

    limit: the first ceil(limit / classes) of each class in path order (a cheap, balanced, repeatable pick);
    sample: a seeded random subset of that size. Both: sample first, then limit.
    """
    chosen = sorted(items)
    if sample is not None and sample < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, sample))
    if limit is not None and limit < len(chosen):
        per_class = math.ceil(limit / len(classes))
        taken, picked = Counter(), []
        for relpath, label in chosen:
            if taken[label] < per_class and len(picked) < limit:
                taken[label] += 1
                picked.append((relpath, label))
        chosen = picked
    return chosen


def compare_metrics(live: dict, offline: dict | None, max_drop: float) -> dict:
    """Live vs offline metrics, metric by metric; `failed` when accuracy fell more than `max_drop` (absolute).

    Returns {"rows": [{"metric", "live", "offline", "delta", "worse"}], "accuracy_drop", "max_drop", "failed",
    "reason"}. delta = live - offline (so a negative delta of accuracy is a drop; of log loss, an improvement).
    """
    rows = []
    for name in COMPARED:
        value, reference = _number(live.get(name)), _number((offline or {}).get(name))
        delta = None if value is None or reference is None else value - reference
        rows.append({"metric": name, "live": value, "offline": reference, "delta": delta,
                     "worse": None if delta is None else (delta > 0 if name in LOWER_IS_BETTER else delta < 0)})
    accuracy = rows[COMPARED.index("accuracy")]
    if accuracy["delta"] is None:
        return {"rows": rows, "accuracy_drop": None, "max_drop": max_drop, "failed": False,
                "reason": "no offline accuracy to compare with"}
    drop = -accuracy["delta"]
    failed = drop > max_drop + 1e-12
    where = f"{abs(drop) * 100:.2f} pp {'below' if drop > 0 else 'above'}" if drop else "equal to"
    reason = (f"accuracy {accuracy['live']:.4f} is {where} offline {accuracy['offline']:.4f} "
              f"({'a drop of more' if failed else 'not a drop of more'} than the allowed {max_drop * 100:.2f} pp)")
    return {"rows": rows, "accuracy_drop": drop, "max_drop": max_drop, "failed": failed, "reason": reason}


def _number(value) -> float | None:
    """`value` as a float; None when it is missing, not a number or NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def list_labelled(source: Path, classes: Sequence[str]) -> list[tuple[str, str]]:
    """(relpath, label) of every file under `source` whose path names a class (nothing is read)."""
    found = [(relpath, label) for relpath, label, _read in labelled(source, list(classes)) if label is not None]
    if not found:
        raise ValueError(f"{source}: no file names or folders carry a label among {list(classes)} "
                         f"(expected e.g. cat.1.jpg, dogs/x.jpg, PetImages/Cat/1.jpg)")
    return found


def read_samples(source: Path, chosen: Sequence[tuple[str, str]]) -> list[LabelledImage]:
    """The bytes of the chosen files (one more pass over the folder or archive)."""
    wanted = dict(chosen)
    return [LabelledImage(relpath, wanted[relpath], read())
            for relpath, _, read in labelled(source, []) if relpath in wanted]


def send(predict: Callable[[bytes], requests.Response], samples: Sequence[LabelledImage],
         concurrency: int = 4) -> list[dict]:
    """POST every sample; returns per sample {"status", "body", "request_id", "seconds"} in input order."""
    def one(sample: LabelledImage) -> dict:
        began = time.perf_counter()
        try:
            response = predict(sample.data)
        except requests.RequestException as exc:
            return {"status": None, "body": {"error": "connection", "message": str(exc)}, "request_id": None,
                    "seconds": time.perf_counter() - began}
        try:
            body = response.json()
        except ValueError:
            body = {"error": "not_json", "message": response.text[:200]}
        return {"status": response.status_code, "body": body, "request_id": response.headers.get("x-request-id"),
                "seconds": time.perf_counter() - began}

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, samples))


def score(samples: Sequence[LabelledImage], results: Sequence[dict], classes: Sequence[str]) -> dict:
    """Metrics over the answered samples (training/metrics.py), plus counts of the refused ones."""
    ok = [r["status"] == 200 and isinstance(r["body"], dict) and "probabilities" in r["body"] for r in results]
    answered = [(s, r) for s, r, good in zip(samples, results, ok) if good]
    refused = [(s, r) for s, r, good in zip(samples, results, ok) if not good]
    if not answered:
        first = refused[0][1] if refused else {}
        raise RuntimeError(f"none of the {len(samples)} images got a prediction (first answer: HTTP "
                           f"{first.get('status')} {json.dumps(first.get('body'))[:200]})")
    y_true = np.array([classes.index(s.label) for s, _ in answered])
    proba = np.array([[float(r["body"]["probabilities"][c]) for c in classes] for _, r in answered])
    proba /= proba.sum(axis=1, keepdims=True)  # the handler rounds to 6 decimals: rows sum to exactly 1 again
    metrics = classification_metrics(y_true, proba, list(classes))
    metrics["refused"] = len(refused)
    metrics["refused_by_status"] = _count(str(r["status"]) for _, r in refused)
    metrics["model_versions"] = _count(str(r["body"].get("model_version")) for _, r in answered)
    metrics["latency_ms_p50"], metrics["latency_ms_p95"] = (
        float(v) * 1000 for v in np.percentile([r["seconds"] for _, r in answered], [50, 95]))
    return metrics


def _count(values) -> dict:
    return dict(sorted(Counter(values).items()))


def write_predictions(path: Path, samples: Sequence[LabelledImage], results: Sequence[dict],
                      classes: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "actual", "predicted", *[f"p_{c}" for c in classes], "status", "request_id",
                         "model_version"])
        for sample, result in zip(samples, results):
            body = result["body"] if isinstance(result["body"], dict) else {}
            probs = body.get("probabilities") or {}
            writer.writerow([sample.name, sample.label, body.get("label", ""),
                             *[probs.get(c, "") for c in classes], result["status"], result["request_id"] or "",
                             body.get("model_version", "")])


def format_table(comparison: dict) -> str:
    lines = ["| metric | live | offline (test split) | live - offline |", "|---|---:|---:|---:|"]
    for row in comparison["rows"]:
        cells = [f"{row[k]:{f}}" if row[k] is not None else "n/a"
                 for k, f in (("live", ".4f"), ("offline", ".4f"), ("delta", "+.4f"))]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(*, source: str, meta: dict, live: dict, comparison: dict, classes: Sequence[str],
                    endpoint: str, mlflow_run: str | None) -> str:
    matrix = live["confusion_matrix"]
    header = "| true \\ predicted | " + " | ".join(classes) + " |"
    cm_lines = [header, "|---|" + "---:|" * len(classes)]
    cm_lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(classes, matrix)]
    verdict = "FAILED" if comparison["failed"] else "passed"
    return "\n".join([
        f"# Post-deployment evaluation: model {meta.get('version', '?')}",
        "",
        f"- endpoint: {endpoint}",
        f"- images: {source} ({live['n']} answered, {live['refused']} refused {live['refused_by_status']})",
        f"- served versions seen: {live['model_versions']}",
        (f"- registered model: {meta.get('registered_model', '?')} v{meta.get('mlflow_model_version', '?')}, "
         f"training run {meta.get('mlflow_run_id', '?')}"),
        f"- MLflow monitoring run: {mlflow_run or 'not logged'}",
        (f"- latency per request (client side): p50 {live['latency_ms_p50']:.1f} ms, "
         f"p95 {live['latency_ms_p95']:.1f} ms"),
        f"- verdict: **{verdict}**: {comparison['reason']}",
        "",
        "## Metrics",
        "",
        format_table(comparison),
        "",
        "## Confusion matrix (rows = true label)",
        "",
        *cm_lines,
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ])
