"""Phase 1, TAPT: fine-tune the pretrained encoder on the fold's training utterances.

Its pooling (``tapt.pooling``) + linear head, class-weighted cross-entropy,
model selection by validation UA. The encoder it starts from is the
pretrained one, or (the paper's TAPT) the one its masked pretraining on the
fold's audio gave (:func:`trainables.recipes.steps.tapt`). The artifact is the whole classifier (loadable by
:func:`~trainables.phases.classifier.load_classifier`, so the TAPT baseline
can score it): its encoder (``encoder/``), whose hidden states are now
emotion-aware, feeds the next phases.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from trainables.atomic import atomic_directory
from trainables.data.manifest import Utterance
from trainables.phases.artifacts import encoder_fingerprint
from trainables.phases.artifacts import describe_utterances, write_record
from trainables.config import TaptConfig, UtteranceObjective
from trainables.phases.classifier import save_classifier, train_classifier
from trainables.runtime import Runtime, training_record

def run_tapt(
    encoder: str | Path,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    classes: Sequence[str],
    cfg: TaptConfig,
    out: Path,
    runtime: Runtime,
    objective: UtteranceObjective = UtteranceObjective(),
) -> dict:
    """Build the TAPT artifact at ``out``; returns the best validation metrics."""
    started = time.perf_counter()
    model, result = train_classifier(encoder, cfg.pooling, train, val, classes, cfg, runtime, objective)
    if runtime.is_main:
        with atomic_directory(out) as tmp:
            save_classifier(model, classes, tmp)  # the encoder lands in encoder_dir(tmp)
            write_record(
                tmp,
                training_record(
                    "tapt",
                    started,
                    runtime,
                    params={"config": cfg, "pooling": cfg.pooling, "classes": list(classes), "objective": objective},
                    upstream={"encoder": str(encoder), "encoder_fingerprint": encoder_fingerprint(encoder)},
                    used={"trained_on": describe_utterances(train), "selected_on": describe_utterances(val)},
                    results={"best": result.best_metrics, "history": result.history, "resumed_from_epoch": result.resumed_from_epoch},
                ),
            )
    runtime.barrier()
    return result.best_metrics
