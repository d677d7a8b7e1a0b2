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
from trainables.phases.clustering import run_clustering
from trainables.phases.embeddings import run_embeddings
from trainables.phases.registry import TRAINING_PHASES
from trainables.runtime import LocalRuntime, Runtime


class PhaseExecutor(Protocol):
    def train(self, phase: str, out: Path, **kwargs: Any) -> None:
        """Run a training phase (``tapt``, ``cpt`` or ``finetune``) that writes ``out``."""

    def embed(self, out: Path, **kwargs: Any) -> None:
        """Run :func:`run_embeddings` writing ``out``."""

    def cluster(self, out: Path, **kwargs: Any) -> None:
        """Run :func:`run_clustering` writing ``out``."""


class LocalExecutor:
    """Runs every phase in this process, on the default device; checkpoints beside the artifact."""

    def __init__(self, runtime_factory: Callable[[Path], Runtime] = lambda ckpt: LocalRuntime(ckpt)):
        self.runtime_factory = runtime_factory

    def train(self, phase: str, out: Path, **kwargs: Any) -> None:
        checkpoint = checkpoint_dir_for(out)
        TRAINING_PHASES[phase](out=out, runtime=self.runtime_factory(checkpoint), **kwargs)
        shutil.rmtree(checkpoint, ignore_errors=True)

    def embed(self, out: Path, **kwargs: Any) -> None:
        run_embeddings(out=out, runtime=self.runtime_factory(checkpoint_dir_for(out)), **kwargs)

    def cluster(self, out: Path, **kwargs: Any) -> None:
        run_clustering(out=out, **kwargs)


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
