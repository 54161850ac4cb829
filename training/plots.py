"""PNG plots for people: confusion matrix, ROC curve, training curves, worst mistakes."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def confusion_matrix_png(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=classes).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roc_png(y_true: np.ndarray, scores: np.ndarray, positive: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(y_true, scores, ax=ax, name=f"{positive} vs rest")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_title("ROC curve (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_png(history: list[dict], path: Path) -> None:
    epochs = [int(r["epoch"]) for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split, style in (("train", "-"), ("val", "--")):
        loss_ax.plot(epochs, [float(r[f"{split}_loss"]) for r in history], style, label=split)
        acc_ax.plot(epochs, [float(r[f"{split}_acc"]) for r in history], style, label=split)
    loss_ax.set(title="Loss", xlabel="epoch")
    acc_ax.set(title="Accuracy", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mistakes_png(items: list[tuple[str, str, str, float]], path: Path, columns: int = 4) -> None:
    """items: (image path, true label, predicted label, confidence of the wrong prediction)."""
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.4, rows * 2.6))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (image_path, true, predicted, confidence) in zip(np.atleast_1d(axes).ravel(), items):
        with Image.open(image_path) as img:
            ax.imshow(img.convert("RGB"))
        ax.set_title(f"true {true}\npred {predicted} {confidence:.2f}", fontsize=8, color="crimson")
    fig.suptitle("Most confident mistakes (test split)" if items else "No mistakes on the test split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
