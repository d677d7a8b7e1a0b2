"""Phase 5: fine-tune the CPT encoder for SER with attention or average pooling, then test.

Model selection by validation UA; the selected model is scored once on the
test split: UA, WA, macro-F1, confusion matrix and per-utterance predictions.
Artifact: ``classifier/`` (loadable by :func:`load_classifier`),
``metrics.json``, ``predictions.csv`` and the record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from trainables.atomic import atomic_directory
from trainables.data.audio import Crop
from trainables.data.batching import UtteranceDataset
from trainables.data.manifest import Utterance
from trainables.phases.artifacts import classifier_dir, describe_utterances, write_record
from trainables.phases.evaluation import write_evaluation
from trainables.config import ClassifierConfig, UtteranceObjective
from trainables.phases.classifier import evaluate_classifier, save_classifier, train_classifier
from trainables.runtime import Runtime, training_record


def run_finetune(
    encoder: Path,
    pooling: str,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    test: Sequence[Utterance],
    classes: Sequence[str],
    cfg: ClassifierConfig,
    out: Path,
    runtime: Runtime,
    objective: UtteranceObjective = UtteranceObjective(),
) -> dict:
    """Fine-tune, select on ``val``, score on ``test``; returns ``{"val": ..., "test": ...}`` metrics."""
    started = time.perf_counter()
    model, result = train_classifier(encoder, pooling, train, val, classes, cfg, runtime, objective)
    model = model.to(runtime.device).eval()
    label_index = {c: i for i, c in enumerate(classes)}
    test_set = UtteranceDataset(test, label_index, model.encoder.info.sample_rate, None, Crop.NONE)
    test_metrics, indices, logits = evaluate_classifier(model, test_set, classes, cfg, runtime)
    val_metrics = {k.removeprefix("val_"): v for k, v in result.best_metrics.items() if k.startswith("val_")}
    metrics = {"val": val_metrics, "test": test_metrics, "best_epoch": result.best_metrics.get("epoch"), "classes": list(classes)}
    if runtime.is_main:
        probabilities = torch.softmax(logits, dim=1).numpy()
        with atomic_directory(out) as tmp:
            directory = classifier_dir(tmp)
            directory.mkdir()
            save_classifier(model, classes, directory)
            write_evaluation(tmp, metrics, [test_set.utterances[i] for i in indices], probabilities, classes)
            write_record(
                tmp,
                training_record(
                    "finetune",
                    started,
                    runtime,
                    params={"config": cfg, "pooling": pooling, "classes": list(classes), "objective": objective},
                    upstream={"encoder": str(encoder)},
                    used={"trained_on": describe_utterances(train), "selected_on": describe_utterances(val), "tested_on": describe_utterances(test)},
                    results={"metrics": metrics, "history": result.history, "resumed_from_epoch": result.resumed_from_epoch},
                ),
            )
    runtime.barrier()
    return metrics
