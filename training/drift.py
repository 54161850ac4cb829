"""Prediction drift: live label and confidence distributions against the offline test-split baseline.

Population stability index (PSI) of two distributions over the same bins:
    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)      (e: baseline share, a: live share; empty bins smoothed)
Common reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
The baseline: the model's own test-split predictions, as model-meta.json `drift_baseline` (summarise(), written
by the export stage) or an evaluate-stage predictions.csv. `python -m monitoring drift` reads live predictions
against it; the statistics live here, beside the training metrics, because the export stage writes the baseline.
"""
from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SMOOTHING = 1e-4
DEFAULT_BINS = 10
STABLE, MODERATE = 0.1, 0.25


def psi(expected: Sequence[float], actual: Sequence[float], smoothing: float = SMOOTHING) -> float:
    """PSI of two histograms (counts or shares) over the same bins; an empty bin costs a large, finite amount."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size == 0:
        raise ValueError(f"psi needs two histograms over the same bins, got shapes {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs non-negative histograms with at least one observation each")
    e = np.clip(e / e.sum(), smoothing, None)
    a = np.clip(a / a.sum(), smoothing, None)
    return float(np.sum((a - e) * np.log(a / e)))


def severity(value: float) -> str:
    return "stable" if value < STABLE else "moderate" if value < MODERATE else "significant"


def quantile_edges(baseline: Sequence[float], bins: int = DEFAULT_BINS) -> list[float]:
    """Inner bin edges at the baseline's quantiles (duplicates dropped; outer bins open-ended)."""
    values = np.asarray(baseline, dtype=np.float64)
    if values.size == 0:
        raise ValueError("the baseline has no values to bin")
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({float(x) for x in inner})


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin: (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")
    return np.bincount(index, minlength=len(edges) + 1).tolist()


def label_counts(labels: Sequence[str], classes: Sequence[str]) -> list[int]:
    counts = Counter(labels)
    unknown = set(counts) - set(classes)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among the model's classes {list(classes)}")
    return [counts[c] for c in classes]


def baseline_from_predictions(path: Path, classes: Sequence[str]) -> dict:
    """{"labels": predicted labels, "confidences": top-class probabilities} of the evaluate stage's CSV."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [f"p_{c}" for c in classes]
    if not rows or any(c not in rows[0] for c in [*columns, "predicted"]):
        raise ValueError(f"{path}: expected columns predicted, {', '.join(columns)} (evaluate stage output)")
    return {"labels": [r["predicted"] for r in rows],
            "confidences": [max(float(r[c]) for c in columns) for r in rows], "source": str(path)}


def summarise(labels: Sequence[str], confidences: Sequence[float], classes: Sequence[str],
              bins: int = DEFAULT_BINS, source: str = "") -> dict:
    """model-meta.json's drift_baseline from the test-split predictions (what compare() and the rules need)."""
    edges = quantile_edges(confidences, bins)
    return {"n": len(labels), "source": source,
            "label_shares": dict(zip(classes, _shares(label_counts(labels, classes)))),
            "mean_confidence": round(float(np.mean(confidences)), 4),
            "confidence_edges": [round(e, 6) for e in edges],
            "confidence_shares": _shares(histogram(confidences, edges))}


def compare(baseline: dict, live_labels: Sequence[str], live_confidences: Sequence[float],
            classes: Sequence[str], bins: int = DEFAULT_BINS) -> dict:
    """PSI of predicted labels and (when the baseline has them) top-class confidences, with the shares."""
    if not live_labels:
        raise ValueError("no live predictions to compare")
    live = label_counts(live_labels, classes)
    if baseline.get("labels"):
        expected: Sequence[float] = label_counts(baseline["labels"], classes)
    elif isinstance(baseline["label_shares"], dict):
        expected = [baseline["label_shares"].get(c, 0.0) for c in classes]
    else:
        expected = baseline["label_shares"]
    result = {
        "n_live": len(live_labels), "n_baseline": baseline.get("n") or len(baseline.get("labels") or []),
        "label_shares": {"baseline": dict(zip(classes, _shares(expected))), "live": dict(zip(classes, _shares(live)))},
        "label_psi": psi(expected, live),
    }
    if baseline.get("confidences"):
        edges = quantile_edges(baseline["confidences"], bins)
        expected_bins, mean = histogram(baseline["confidences"], edges), float(np.mean(baseline["confidences"]))
    elif baseline.get("confidence_shares"):  # a summarise()d baseline: its own bins
        edges, expected_bins = baseline["confidence_edges"], baseline["confidence_shares"]
        mean = baseline["mean_confidence"]
    else:
        return result
    result.update(confidence_edges=edges, confidence_psi=psi(expected_bins, histogram(live_confidences, edges)),
                  mean_confidence={"baseline": float(mean), "live": float(np.mean(live_confidences))})
    return result


def drifted(result: dict, threshold: float) -> list[str]:
    """Names of the PSIs above `threshold`."""
    return [name for name in ("label_psi", "confidence_psi") if result.get(name, 0.0) > threshold]


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [round(c / total, 4) for c in counts]
