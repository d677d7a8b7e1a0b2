"""The training phases by name: what an executor, or a Ray Train worker, looks up (no code travels as strings)."""

from __future__ import annotations

from typing import Any, Callable

from trainables.phases.cpt import run_cpt
from trainables.phases.finetune import run_finetune
from trainables.phases.tapt import run_tapt

TRAINING_PHASES: dict[str, Callable[..., Any]] = {"tapt": run_tapt, "cpt": run_cpt, "finetune": run_finetune}
