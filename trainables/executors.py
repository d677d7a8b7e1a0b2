"""How a phase is executed: in this process (:class:`LocalExecutor`) or on Ray (``trainables.ray_train``).

An executor builds one artifact at a given path; it neither decides whether the
artifact is needed (the cache does) nor where it lives.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Protocol

from trainables.config import RayResources
from trainables.phases.artifacts import checkpoint_dir_for
from trainables.phases.registry import TASK_PHASES, TRAINING_PHASES
from trainables.runtime import LocalRuntime, Runtime


class PhaseExecutor(Protocol):
    def train(self, phase: str, out: Path, **kwargs: Any) -> Any:
        """Run a training phase (:data:`~trainables.phases.registry.TRAINING_PHASES`) that writes ``out``."""

    def task(self, phase: str, out: Path, **kwargs: Any) -> Any:
        """Run a task phase (:data:`~trainables.phases.registry.TASK_PHASES`) that writes ``out``."""


class LocalExecutor:
    """Runs every phase in this process, on the default device; checkpoints beside the artifact."""

    def __init__(self, runtime_factory: Callable[[Path], Runtime] = lambda ckpt: LocalRuntime(ckpt)):
        self.runtime_factory = runtime_factory

    def train(self, phase: str, out: Path, **kwargs: Any) -> Any:
        checkpoint = checkpoint_dir_for(out)
        value = TRAINING_PHASES[phase](out=out, runtime=self.runtime_factory(checkpoint), **kwargs)
        shutil.rmtree(checkpoint, ignore_errors=True)
        return value

    def task(self, phase: str, out: Path, **kwargs: Any) -> Any:
        return TASK_PHASES[phase](out=out, runtime=self.runtime_factory(checkpoint_dir_for(out)), **kwargs)


def make_executor(kind: str, resources: RayResources | None = None, storage: str | Path | None = None) -> PhaseExecutor:
    """The executor called ``kind``: ``local`` (this process) or ``ray`` (Ray Train jobs and Ray tasks, state under ``storage``)."""
    if kind == "ray":
        from trainables.ray_train import RayExecutor  # Ray only when asked for

        if storage is None:
            raise ValueError("the ray executor needs a storage location for Ray Train's run state")
        return RayExecutor(resources or RayResources(), storage=storage)
    if kind != "local":
        raise ValueError(f"unknown executor {kind!r}; choose local or ray")
    return LocalExecutor()
