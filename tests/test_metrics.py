"""Metrics checked against scikit-learn's own functions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from trainables.metrics import aggregate, classification_metrics, confusion_matrix


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
    result = classification_metrics(y_true, y_pred, 4)
    assert result["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert result["ua"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert result["wa"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert result["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()


def test_absent_class_is_left_out_of_ua():
    y_true = [0, 0, 1, 1]
    y_pred = [0, 1, 1, 1]
    result = classification_metrics(y_true, y_pred, 4)
    assert result["ua"] == pytest.approx(0.75)
    assert result["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))


def test_confusion_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 1], 2)


def test_aggregate_mean_and_sample_std():
    folds = [{"ua": 0.5, "wa": 0.6, "macro_f1": 0.4}, {"ua": 0.7, "wa": 0.8, "macro_f1": 0.6}]
    result = aggregate(folds)
    assert result["ua_mean"] == pytest.approx(0.6)
    assert result["ua_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert aggregate(folds[:1])["wa_std"] == 0.0
    with pytest.raises(ValueError):
        aggregate([])
