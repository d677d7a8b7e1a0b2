"""The phases by name: what an executor, or a Ray worker, looks up (no code travels as strings).

Training phases (:data:`TRAINING_PHASES`) run an epoch loop with checkpoints
and may run on several ranks; task phases (:data:`TASK_PHASES`) run once, in
one process. Every phase function takes ``out`` (the artifact to write) and
``runtime`` besides its own arguments.
"""

from __future__ import annotations

from typing import Any, Callable

from trainables.phases.clustering import run_clustering
from trainables.phases.cpt import run_cpt
from trainables.phases.egemaps import run_egemaps, run_egemaps_features
from trainables.phases.embeddings import run_embeddings
from trainables.phases.finetune import run_finetune
from trainables.phases.multitask import run_stage1, run_stage2
from trainables.phases.score import run_score
from trainables.phases.tapt import run_tapt

TRAINING_PHASES: dict[str, Callable[..., Any]] = {
    "tapt": run_tapt, "cpt": run_cpt, "finetune": run_finetune, "mtl_stage1": run_stage1, "mtl_stage2": run_stage2,
}
TASK_PHASES: dict[str, Callable[..., Any]] = {
    "embeddings": run_embeddings, "clustering": run_clustering, "score": run_score,
    "egemaps_features": run_egemaps_features, "egemaps": run_egemaps,
}
