import numpy as np
import pytest

from training.metrics import classification_metrics, expected_calibration_error

CLASSES = ["cat", "dog"]


def test_perfect_predictions():
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    m = classification_metrics(y, proba, CLASSES)
    assert m["accuracy"] == m["precision"] == m["recall"] == m["f1"] == m["roc_auc"] == 1.0
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]


def test_known_mistake_counts():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.6, 0.4], [0.3, 0.7], [0.4, 0.6], [0.8, 0.2]])
    m = classification_metrics(y, proba, CLASSES)
    assert m["accuracy"] == 0.5
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.6, 0.3, 0.6, 0.2])))


def test_ece_by_hand():
    # two confidence bins: 0.9 (both right -> gap 0.1) and 0.6 (one right of two -> gap 0.1)
    y = np.array([0, 0, 0, 1])
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(y, proba) == pytest.approx(0.1)
