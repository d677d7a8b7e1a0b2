"""What a scored phase leaves: ``metrics.json`` (validation and test metrics) and ``predictions.csv`` (per test utterance).

Fine-tuning, scoring a saved classifier and the eGeMAPS baseline all write
these two files, so a fold's result is read the same way whichever recipe built it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from trainables.data.manifest import Utterance

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"


def read_metrics(artifact: Path) -> dict[str, Any]:
    """``{"val": {...}, "test": {...}, "classes": [...], ...}`` of a scored artifact."""
    return json.loads((artifact / METRICS_FILE).read_text())


def write_evaluation(directory: Path, metrics: Mapping[str, Any], test: Sequence[Utterance], probabilities: np.ndarray, classes: Sequence[str]) -> None:
    """Write ``metrics.json`` and ``predictions.csv`` (``probabilities`` ``[len(test), classes]``, rows in ``test`` order)."""
    (directory / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2))
    with open(directory / PREDICTIONS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["utt_id", "label", "predicted", *[f"p_{c}" for c in classes]])
        for utt, row in zip(test, np.asarray(probabilities)):
            writer.writerow([utt.utt_id, utt.label, classes[int(np.argmax(row))], *[f"{p:.4f}" for p in row.tolist()]])
