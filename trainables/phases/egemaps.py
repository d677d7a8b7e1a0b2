"""The eGeMAPS baseline: openSMILE's eGeMAPSv02 functionals, standardised, and a class-balanced logistic regression.

The field's standard hand-crafted baseline, seconds on a CPU. Two phases:

* ``egemaps_features``: the 88 functionals of every utterance of a fold (a
  fixed function of each utterance's audio: nothing is learnt, so the test
  session's features may be computed with the rest and shared by every fold);
  ``features.npy`` ``[N, 88]`` float32 and ``index.json`` (utterance ids, feature names);
* ``egemaps``: standardisation and logistic regression fitted on the fold's
  training utterances, the inverse regularisation ``C`` chosen on validation
  UA from ``c_grid``, scored on the test session. The model is kept as JSON
  (``model.json``: means, scales, coefficients), never as a pickle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainables.atomic import atomic_directory
from trainables.data.audio import load_waveform
from trainables.data.manifest import Utterance
from trainables.metrics import classification_metrics
from trainables.phases.artifacts import PhaseRecord, describe_utterances, write_record
from trainables.phases.evaluation import write_evaluation
from trainables.runtime import Runtime

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"
MODEL_FILE = "model.json"
SAMPLE_RATE = 16000
#: Inverse regularisation strengths tried on the validation set.
C_GRID = (0.01, 0.1, 1.0, 10.0)


def run_egemaps_features(utterances: Sequence[Utterance], out: Path, runtime: Runtime | None = None) -> dict:
    """eGeMAPSv02 functionals of every utterance in ``utterances``; returns the feature count."""
    import opensmile  # its binary loads only when the baseline runs

    started = time.perf_counter()
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)
    rows = [smile.process_signal(load_waveform(u.path, SAMPLE_RATE).numpy(), SAMPLE_RATE).to_numpy()[0] for u in utterances]
    features = np.asarray(rows, dtype=np.float32)
    with atomic_directory(out) as tmp:
        np.save(tmp / FEATURES_FILE, features)
        (tmp / INDEX_FILE).write_text(json.dumps({"utt_ids": [u.utt_id for u in utterances], "features": list(smile.feature_names)}))
        write_record(
            tmp,
            PhaseRecord(
                phase="egemaps_features",
                params={"feature_set": "eGeMAPSv02", "level": "functionals", "sample_rate": SAMPLE_RATE},
                upstream={},
                used={"featurized": describe_utterances(utterances)},
                results={"features": int(features.shape[1])},
                wall_seconds=time.perf_counter() - started,
                device="cpu:opensmile",
            ),
        )
    return {"features": int(features.shape[1])}


def _load_features(artifact: Path, utterances: Sequence[Utterance]) -> np.ndarray:
    index = json.loads((artifact / INDEX_FILE).read_text())
    rows = {utt: i for i, utt in enumerate(index["utt_ids"])}
    missing = [u.utt_id for u in utterances if u.utt_id not in rows]
    if missing:
        raise ValueError(f"{artifact} has no eGeMAPS features for {len(missing)} utterances, e.g. {missing[:3]}")
    return np.load(artifact / FEATURES_FILE)[[rows[u.utt_id] for u in utterances]]


def run_egemaps(
    features: Path,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    test: Sequence[Utterance],
    classes: Sequence[str],
    out: Path,
    runtime: Runtime | None = None,
    c_grid: Sequence[float] = C_GRID,
) -> dict:
    """Fit on ``train``, choose ``C`` on ``val``, score on ``test``; returns ``{"val": ..., "test": ...}`` metrics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    label_index = {c: i for i, c in enumerate(classes)}
    (x_train, x_val, x_test) = (_load_features(features, part) for part in (train, val, test))
    y_train, y_val, y_test = ([label_index[u.label] for u in part] for part in (train, val, test))
    scaler = StandardScaler().fit(x_train)
    best: tuple[float, Any, dict[str, Any]] | None = None
    for c in c_grid:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(scaler.transform(x_train), y_train)
        val_metrics = classification_metrics(y_val, model.predict(scaler.transform(x_val)).tolist(), len(classes))
        if best is None or val_metrics["ua"] > best[2]["ua"]:
            best = (c, model, val_metrics)
    c, model, val_metrics = best  # type: ignore[misc]
    probabilities = model.predict_proba(scaler.transform(x_test))
    test_metrics = classification_metrics(y_test, probabilities.argmax(axis=1).tolist(), len(classes))
    metrics = {"val": val_metrics, "test": test_metrics, "classes": list(classes), "c": c}
    saved = {"classes": list(classes), "c": c, "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist()}
    with atomic_directory(out) as tmp:
        (tmp / MODEL_FILE).write_text(json.dumps(saved))
        write_evaluation(tmp, metrics, test, probabilities, classes)
        write_record(
            tmp,
            PhaseRecord(
                phase="egemaps",
                params={"c_grid": list(c_grid), "classes": list(classes)},
                upstream={"features": str(features)},
                used={"trained_on": describe_utterances(train), "selected_on": describe_utterances(val), "tested_on": describe_utterances(test)},
                results={"metrics": metrics},
                wall_seconds=time.perf_counter() - started,
                device="cpu:sklearn",
            ),
        )
    return metrics
