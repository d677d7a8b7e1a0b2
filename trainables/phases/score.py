"""Scoring: a classifier saved by an earlier phase, evaluated on the fold's test session.

The TAPT baseline is the TAPT model itself scored on the test session: this
phase loads the TAPT artifact's classifier, keeps the validation metrics its
training selected the checkpoint on, and writes ``metrics.json`` and
``predictions.csv`` like fine-tuning does. One evaluation pass, no training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from trainables.atomic import atomic_directory
from trainables.config import ClassifierConfig
from trainables.data.audio import Crop
from trainables.data.batching import UtteranceDataset
from trainables.data.manifest import Utterance
from trainables.phases.artifacts import PhaseRecord, describe_utterances, write_record
from trainables.phases.classifier import evaluate_classifier, load_classifier
from trainables.phases.evaluation import write_evaluation
from trainables.runtime import Runtime, device_name


def run_score(
    classifier: Path,
    val_metrics: Mapping[str, Any],
    test: Sequence[Utterance],
    classes: Sequence[str],
    out: Path,
    runtime: Runtime,
    eval_max_batch_seconds: float = ClassifierConfig().eval_max_batch_seconds,
) -> dict:
    """Score the classifier saved in ``classifier`` on ``test``; ``val_metrics`` are the ones it was selected with."""
    started = time.perf_counter()
    model, saved_classes = load_classifier(classifier)
    if list(saved_classes) != list(classes):
        raise ValueError(f"the classifier in {classifier} predicts {saved_classes}, the fold's classes are {list(classes)}")
    model = model.to(runtime.device).eval()
    cfg = ClassifierConfig(eval_max_batch_seconds=eval_max_batch_seconds)
    test_set = UtteranceDataset(test, {c: i for i, c in enumerate(classes)}, model.encoder.info.sample_rate, None, Crop.NONE)
    test_metrics, indices, logits = evaluate_classifier(model, test_set, classes, cfg, runtime)
    metrics = {"val": dict(val_metrics), "test": test_metrics, "classes": list(classes)}
    with atomic_directory(out) as tmp:
        write_evaluation(tmp, metrics, [test_set.utterances[i] for i in indices], torch.softmax(logits, dim=1).numpy(), classes)
        write_record(
            tmp,
            PhaseRecord(
                phase="score",
                params={"classes": list(classes)},
                upstream={"classifier": str(classifier)},
                used={"tested_on": describe_utterances(test)},
                results={"metrics": metrics},
                wall_seconds=time.perf_counter() - started,
                device=device_name(runtime.device),
            ),
        )
    return metrics
