"""Metric functions on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from maskflow.evaluate import classification_metrics, confusion, expected_calibration_error


def test_perfect_binary():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3]])
    m = classification_metrics(y, probs, ["a", "b"])
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["roc_auc"] == 1.0
    assert m["recall_a"] == 1.0 and m["precision_b"] == 1.0


def test_three_classes_with_one_missing_counts_errors():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert "recall_c" not in m and m["recall_b"] == 0.5
    assert 0.0 <= m["roc_auc"] <= 1.0


def test_ece():
    probs = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 9 + [1])
    assert expected_calibration_error(probs, y, 10) == pytest.approx(0.0)
    y_bad = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, y_bad, 10) == pytest.approx(0.4)


def test_confusion():
    cm = confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
