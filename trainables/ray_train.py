"""The thin Ray layer: training phases as ``TorchTrainer`` jobs, embeddings and k-means as Ray tasks.

Phase code is unchanged: a Ray Train worker calls the same phase function with
a :class:`RayTrainRuntime`, whose rank and process group come from Ray Train,
whose checkpoints are ``ray.train`` checkpoints (one per epoch), and which
resumes from the last one when Ray Train restarts a failed worker group
(``FailureConfig.max_failures``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from trainables.executors import TRAINING_PHASES
from trainables.phases.clustering import run_clustering
from trainables.phases.embeddings import run_embeddings
from trainables.runtime import Runtime, save_checkpoint

logger = logging.getLogger(__name__)


class RayTrainRuntime(Runtime):
    """The runtime of a phase on a Ray Train worker."""

    def __init__(self):
        super().__init__(ray.train.torch.get_device())
        self._restored: Path | None = None

    def latest_checkpoint(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = Path(checkpoint.to_directory())
        return self._restored

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        super().report(metrics, state)
        if state is None:
            ray.train.report(metrics)  # every rank reports every epoch: report is a barrier
            return
        directory = Path(tempfile.mkdtemp(prefix="ser-study-ckpt-"))
        try:
            save_checkpoint(state, directory)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _train_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: one training phase, looked up by name."""
    TRAINING_PHASES[config["phase"]](out=Path(config["out"]), runtime=RayTrainRuntime(), **config["kwargs"])


@dataclass(frozen=True)
class RayResources:
    """Resources of each phase on the Ray cluster."""

    workers: int = 1  # Ray Train workers (DDP ranks) per training phase
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    embed_gpus: float = 0.0  # the embedding pass: one task
    kmeans_gpus: float = 0.0  # > 0 with the cuML backend
    max_failures: int = 2  # worker-group restarts per training phase, each resuming from the last epoch

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError(f"resources.workers must be at least 1, got {self.workers}")
        for name in ("gpus_per_worker", "cpus_per_worker", "embed_gpus", "kmeans_gpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"resources.{name} must not be negative")


@ray.remote
def _embed_task(out: Path, kwargs: dict[str, Any]) -> None:
    run_embeddings(out=out, runtime=Runtime(), **kwargs)


@ray.remote
def _cluster_task(out: Path, kwargs: dict[str, Any]) -> None:
    run_clustering(out=out, **kwargs)


class RayExecutor:
    """Runs training phases as ``TorchTrainer`` jobs and the others as Ray tasks.

    ``storage`` holds Ray Train's run state and checkpoints (a local path or
    ``s3://``); a run is named after the artifact it builds, so a rerun of an
    interrupted phase finds its checkpoints.
    """

    def __init__(self, resources: RayResources, storage: str | Path):
        resources.validate()
        self.resources = resources
        self.storage = str(storage)
        if not ray.is_initialized():
            ray.init()

    def train(self, phase: str, out: Path, **kwargs: Any) -> None:
        use_gpu = self.resources.gpus_per_worker > 0
        worker_resources = {"CPU": self.resources.cpus_per_worker}
        if use_gpu:
            worker_resources["GPU"] = self.resources.gpus_per_worker
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"phase": phase, "out": str(out), "kwargs": kwargs},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=self.resources.workers, use_gpu=use_gpu, resources_per_worker=worker_resources),
            run_config=RunConfig(
                name=f"{phase}-{out.name}",
                storage_path=self.storage,
                failure_config=FailureConfig(max_failures=self.resources.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
        )
        trainer.fit()

    def embed(self, out: Path, **kwargs: Any) -> None:
        ray.get(_embed_task.options(num_gpus=self.resources.embed_gpus).remote(out, kwargs))

    def cluster(self, out: Path, **kwargs: Any) -> None:
        ray.get(_cluster_task.options(num_gpus=self.resources.kmeans_gpus).remote(out, kwargs))
