"""Classification metrics of SER and their aggregation over folds.

UA (unweighted accuracy) is the mean of per-class recalls over the classes
present in the reference; WA (weighted accuracy) is plain accuracy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]``: row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds a class outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def unweighted_accuracy(matrix: np.ndarray) -> float:
    """Mean per-class recall over the classes that occur in the reference."""
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.nan
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def weighted_accuracy(matrix: np.ndarray) -> float:
    """Plain accuracy."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the reference or the predictions (0 where undefined)."""
    tp = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    used = (predicted + actual) > 0
    if not used.any():
        return math.nan
    f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0)
    return float(f1[used].mean())


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, object]:
    """UA, WA, macro-F1 and the confusion matrix (as nested lists) of one evaluation."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    return {
        "ua": unweighted_accuracy(matrix),
        "wa": weighted_accuracy(matrix),
        "macro_f1": macro_f1(matrix),
        "confusion": matrix.tolist(),
        "count": int(matrix.sum()),
    }


def aggregate(per_fold: Sequence[Mapping[str, float]], keys: Sequence[str] = ("ua", "wa", "macro_f1")) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one fold) of ``keys`` over folds.

    Returns ``{"<key>_mean": ..., "<key>_std": ...}``.
    """
    if not per_fold:
        raise ValueError("aggregate needs at least one fold")
    result = {}
    for key in keys:
        values = np.array([fold[key] for fold in per_fold], dtype=float)
        result[f"{key}_mean"] = float(values.mean())
        result[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return result
