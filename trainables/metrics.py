"""Classification metrics of SER (scikit-learn's) and their aggregation over folds.

UA (unweighted accuracy) is the mean of per-class recalls over the classes
present in the reference; WA (weighted accuracy) is plain accuracy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]``: row = true class, column = predicted class (scikit-learn's)."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds a class outside 0..{num_classes - 1}")
    from sklearn import metrics as skm  # here, not at the top: the report and the CLI import this module, sklearn takes a second

    return skm.confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).astype(np.int64)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, object]:
    """UA, WA, macro-F1 and the confusion matrix (as nested lists) of one evaluation, from ``sklearn.metrics``.

    UA is the macro recall over the classes present in the reference
    (``balanced_accuracy_score``), WA the accuracy, macro-F1 the mean F1 over
    the classes in the reference or the predictions (0 where undefined). NaN
    for an empty evaluation.
    """
    from sklearn import metrics as skm

    matrix = confusion_matrix(y_true, y_pred, num_classes)
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if not y_true.size:
        return {"ua": math.nan, "wa": math.nan, "macro_f1": math.nan, "confusion": matrix.tolist(), "count": 0}
    present = sorted(set(y_true.tolist()))
    used = sorted(set(present) | set(y_pred.tolist()))
    return {
        "ua": float(skm.recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "wa": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=used, average="macro", zero_division=0)),
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
