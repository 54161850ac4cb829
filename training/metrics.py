"""Classification metrics from labels and predicted probabilities (pure functions over numpy arrays)."""
from __future__ import annotations

import itertools

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: sum over confidence bins of |accuracy - confidence| * bin weight."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """accuracy, precision/recall/F1 (positive class = classes[1] for two classes, else macro), ROC-AUC,
    log loss, ECE and the confusion matrix (rows = true, columns = predicted)."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1)
    clipped = np.clip(proba, 1e-7, 1)  # a probability of exactly 0 would make the log loss infinite
    clipped /= clipped.sum(axis=1, keepdims=True)
    labels = list(range(len(classes)))
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    both_present = len(np.unique(y_true)) == len(classes)
    result = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, average=average, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, average=average, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, average=average, zero_division=0)),
        "roc_auc": (float(skm.roc_auc_score(y_true, proba[:, 1] if binary else proba, multi_class="ovr"))
                    if both_present else float("nan")),
        "log_loss": float(skm.log_loss(y_true, clipped, labels=labels)),
        "ece": expected_calibration_error(y_true, proba),
        "n": len(y_true),
    }
    result["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return result
