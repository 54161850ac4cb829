"""evaluate stage: metrics and plots of the best checkpoint on the held-out test split."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.network import predict_proba
from model.preprocess import eval_transform
from training import plots, tracking
from training.dataset import CachedImages
from training.metrics import classification_metrics
from training.prepare import read_manifest
from training.train import load_trained


def predict_split(net, rows: list[dict], meta: dict, batch_size: int = 128) -> np.ndarray:
    dataset = CachedImages(rows, meta["classes"], eval_transform(meta), desc="load test")
    probabilities = [predict_proba(net, images)
                     for images, _ in tqdm(DataLoader(dataset, batch_size=batch_size), desc="evaluate", leave=False)]
    return torch.cat(probabilities).numpy()


def worst_mistakes(rows: list[dict], y_true: np.ndarray, proba: np.ndarray, classes: list[str], n: int) -> list:
    wrong = np.flatnonzero(proba.argmax(1) != y_true)
    wrong = wrong[np.argsort(-proba[wrong].max(1))][:n]
    return [(rows[i]["cache"], classes[y_true[i]], classes[proba[i].argmax()], float(proba[i].max())) for i in wrong]


class QualityGateError(RuntimeError):
    """The model scored worse than evaluate.min_accuracy / evaluate.max_log_loss on the test split."""


def quality_gate(metrics: dict, cfg: dict) -> list[str]:
    """Reasons the test metrics fail the thresholds in params.yaml `evaluate` (empty list = pass)."""
    failures = []
    if cfg.get("min_accuracy") is not None and not metrics["accuracy"] >= float(cfg["min_accuracy"]):
        failures.append(f"accuracy {metrics['accuracy']:.4f} < evaluate.min_accuracy {cfg['min_accuracy']}")
    if cfg.get("max_log_loss") is not None and not metrics["log_loss"] <= float(cfg["max_log_loss"]):
        failures.append(f"log loss {metrics['log_loss']:.4f} > evaluate.max_log_loss {cfg['max_log_loss']}")
    return failures


def evaluate(params: dict, prepared_dir: Path, train_dir: Path, out_dir: Path) -> dict:
    net, meta = load_trained(train_dir)
    classes = meta["classes"]
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(prepared_dir, "test")
    if not rows:
        raise ValueError(f"{prepared_dir}: the test split is empty; raise prepare.test_ratio or add images")
    proba = predict_split(net, rows, meta)
    y_true = np.array([classes.index(r["label"]) for r in rows])
    result = classification_metrics(y_true, proba, classes)

    metrics = {k: round(v, 5) if isinstance(v, float) else v for k, v in result.items() if k != "confusion_matrix"}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "confusion_matrix.json").write_text(json.dumps({"classes": classes,
                                                               "matrix": result["confusion_matrix"]}) + "\n")
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "sha256", "actual", "predicted", *[f"p_{c}" for c in classes]])
        for row, truth, p in zip(rows, y_true, proba):
            writer.writerow([row["path"], row["sha256"], classes[truth], classes[p.argmax()],
                             *[f"{v:.6f}" for v in p]])
    fpr, tpr, _ = roc_curve(y_true, proba[:, 1], pos_label=1)
    with open(out_dir / "roc.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fpr", "tpr"])
        writer.writerows(zip(np.round(fpr, 5), np.round(tpr, 5)))

    with open(train_dir / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    plots.confusion_matrix_png(result["confusion_matrix"], classes, plots_dir / "confusion_matrix.png")
    plots.roc_png(y_true, proba[:, 1], classes[1], plots_dir / "roc.png")
    plots.curves_png(history, plots_dir / "training_curves.png")
    plots.mistakes_png(worst_mistakes(rows, y_true, proba, classes, int(params.get("evaluate", {}).get(
        "worst_mistakes", 16))), plots_dir / "worst_mistakes.png")

    tracking.configure()
    with mlflow.start_run(run_id=tracking.load_run_id(train_dir / "run.json")):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v)})
        mlflow.log_artifacts(str(plots_dir), "plots")
        mlflow.log_artifact(str(out_dir / "metrics.json"), "eval")
        mlflow.log_artifact(str(out_dir / "predictions.csv"), "eval")
    print("evaluate: " + " ".join(f"{k}={v}" for k, v in metrics.items()))
    failures = quality_gate(metrics, params.get("evaluate", {}))
    if failures:
        raise QualityGateError(f"quality gate failed on the test split ({metrics['n']} images): "
                               f"{'; '.join(failures)}. The model is not exported; see {out_dir}/plots, "
                               f"improve the data or training, or change the thresholds in params.yaml")
    return metrics
