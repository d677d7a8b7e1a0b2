"""Phase 1, TAPT: fine-tune the pretrained encoder on the fold's training utterances.

Mean pooling + linear head, class-weighted cross-entropy, model selection by
validation UA. The artifact keeps the encoder (``encoder/``), whose hidden
states are now emotion-aware.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from trainables.atomic import atomic_directory
from trainables.data.manifest import Utterance
from trainables.models.encoder import encoder_fingerprint
from trainables.phases.artifacts import describe_utterances, encoder_dir, write_record
from trainables.phases.classifier import ClassifierConfig, train_classifier
from trainables.runtime import Runtime, training_record

TAPT_POOLING = "average"  # the method's TAPT uses mean pooling


def run_tapt(
    encoder: str | Path,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    classes: Sequence[str],
    cfg: ClassifierConfig,
    out: Path,
    runtime: Runtime,
) -> dict:
    """Build the TAPT artifact at ``out``; returns the best validation metrics."""
    started = time.perf_counter()
    model, result = train_classifier(encoder, TAPT_POOLING, train, val, classes, cfg, runtime)
    if runtime.is_main:
        with atomic_directory(out) as tmp:
            model.encoder.save(encoder_dir(tmp))
            write_record(
                tmp,
                training_record(
                    "tapt",
                    started,
                    runtime,
                    params={"config": cfg, "pooling": TAPT_POOLING, "classes": list(classes)},
                    upstream={"encoder": str(encoder), "encoder_fingerprint": encoder_fingerprint(encoder)},
                    used={"trained_on": describe_utterances(train), "selected_on": describe_utterances(val)},
                    results={"best": result.best_metrics, "history": result.history, "resumed_from_epoch": result.resumed_from_epoch},
                ),
            )
    runtime.barrier()
    return result.best_metrics
