"""The thin Ray layer: training phases as ``TorchTrainer`` jobs, embeddings and k-means as Ray tasks.

Phase code is unchanged: a Ray Train worker calls the same phase function with
a :class:`RayTrainRuntime`, whose rank and process group come from Ray Train
(gloo on CPU, NCCL on GPU), whose checkpoints are ``ray.train`` checkpoints
(one per epoch, reported by rank 0), and which resumes from the last one when
Ray Train restarts a failed worker group (``FailureConfig.max_failures``).

Written against Ray Train V2 (the default in Ray 2.60): ``TorchTrainer(...).fit()``
runs a controller actor that starts the worker group, polls it, and on a
worker's death tears the whole group down and starts a new one, whose workers
get the latest *registered* checkpoint from ``ray.train.get_checkpoint()``. A
report is registered when the controller polls it (every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: Ray's default is 2 s, :class:`RayExecutor`'s
0.5 s), so a worker that dies within that window of its last report resumes
from the report before.

A run is named after the artifact it builds and kept under ``storage`` while it
runs: a rerun of an interrupted phase (the driver died, or the restarts ran
out and ``fit`` raised) finds the run's checkpoint snapshot there and resumes
too. A run that completes is deleted, as
:class:`~trainables.executors.LocalExecutor` deletes its checkpoint: the
artifact is what stays.

Measured on a 2-core CPU (``bench/results/ray_overhead.md``): a ``TorchTrainer``
run costs about 16-18 s before its first step and 1 s after its last, more than
the same phase run locally, whatever the phase's size. It is meant for
GPU-sized phases; the tiny CPU phases of a smoke study run faster with
:class:`~trainables.executors.LocalExecutor` inside the trial's own Ray task.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

from trainables.executors import TRAINING_PHASES
from trainables.phases.clustering import run_clustering
from trainables.phases.embeddings import run_embeddings
from trainables.runtime import Runtime, save_checkpoint

logger = logging.getLogger(__name__)

#: How often Ray Train V2's controller polls the workers (reports, health); Ray's default is 2 s.
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


class StepTrace:
    """Wall-clock timestamps and per-epoch training shares of one rank (instrumentation only).

    :meth:`attach` hooks the model's forward: every forward in training mode is
    one training step, counted with its utterances and audio samples (the
    waveform batch is the forward's first argument, its attention mask the
    second). Evaluation runs in eval mode and is not counted. Timestamps are
    ``time.time()`` so that a driver can compare them with its own clock.
    """

    def __init__(self) -> None:
        self.started = time.time()
        self.first_step: float | None = None
        self.last_step: float | None = None
        self.last_report: float | None = None
        self.epochs: list[dict[str, Any]] = []
        self._current = {"steps": 0, "utterances": 0, "samples": 0}

    def attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        now = time.time()
        if self.first_step is None:
            self.first_step = now
        self.last_step = now
        tensors = list(args) + [kwargs[k] for k in ("waveforms", "attention_mask") if k in kwargs]
        self._current["steps"] += 1
        if tensors:
            self._current["utterances"] += int(tensors[0].shape[0])
        if len(tensors) > 1:
            self._current["samples"] += int(tensors[1].sum())

    def on_report(self, metrics: dict[str, Any]) -> None:
        self.last_report = time.time()
        self.epochs.append({"epoch": metrics.get("epoch"), **self._current})
        self._current = {"steps": 0, "utterances": 0, "samples": 0}

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "last_report": self.last_report,
            "epochs": self.epochs,
        }


@dataclass(frozen=True)
class FailOnce:
    """Fault injection, used by tests: kill a training worker once, right after a checkpoint.

    Rank ``rank`` calls ``os._exit(1)`` after reporting epoch ``after_epoch``
    (0-based), once that report has been handed to the Ray Train controller,
    unless the file ``marker`` exists; it creates the file first, so the
    restarted worker group runs through. ``marker`` must be on a filesystem
    every worker sees.
    """

    after_epoch: int
    marker: str
    rank: int = 0


def _wait_until_report_consumed(timeout_s: float = 30.0) -> None:
    """Block until the Ray Train controller has polled this worker's reports (private Ray API, tests only)."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        queue = get_train_context().get_result_queue()
    except Exception:  # another Ray version: wait out two poll intervals instead
        time.sleep(2 * float(os.environ.get(POLL_INTERVAL_ENV, 2.0)) + 1.0)
        return
    deadline = time.monotonic() + timeout_s
    while queue.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)


class RayTrainRuntime(Runtime):
    """The runtime of a phase on a Ray Train worker.

    ``fail_once`` is a fault-injection hook for tests (:class:`FailOnce`); leave it None.
    """

    def __init__(self, fail_once: FailOnce | None = None):
        super().__init__(ray.train.torch.get_device())
        self.fail_once = fail_once
        self.trace = StepTrace()
        self.resumed = False
        self._restored: Path | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        self.trace.attach(model)
        return super().wrap(model)

    def latest_checkpoint(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        # A private copy (to_directory() without a path leaves one in /tmp for good); removed at the next report.
        self._restored = Path(tempfile.mkdtemp(prefix="ser-study-restore-"))
        checkpoint.to_directory(str(self._restored))
        self.resumed = True
        return self._restored

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        super().report(metrics, state)
        self.trace.on_report(metrics)
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None
        metrics = dict(metrics)  # fit keeps the dict in its history
        if state is None:
            ray.train.report(metrics)  # every rank reports every epoch: report is a barrier
        else:
            directory = Path(tempfile.mkdtemp(prefix="ser-study-ckpt-"))
            try:
                save_checkpoint(state, directory)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        self._maybe_fail(metrics)

    def _maybe_fail(self, metrics: dict[str, Any]) -> None:
        fail = self.fail_once
        if fail is None or self.rank != fail.rank or metrics.get("epoch") != fail.after_epoch:
            return
        marker = Path(fail.marker)
        if marker.exists():
            return
        _wait_until_report_consumed()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {self.rank} exited after epoch {fail.after_epoch} at {time.time()}\n")
        logger.warning("fault injection: rank %d exits after epoch %d", self.rank, fail.after_epoch)
        os._exit(1)


def _train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each Ray Train worker runs: one training phase, looked up by name.

    Returns (rank 0's is ``Result.return_value``) the phase's return value and
    every rank's :class:`StepTrace`, with whether the rank resumed from a checkpoint.
    """
    runtime = RayTrainRuntime(fail_once=config.get("fail_once"))
    value = TRAINING_PHASES[config["phase"]](out=Path(config["out"]), runtime=runtime, **config["kwargs"])
    trace = {"rank": runtime.rank, "world_size": runtime.world_size, "resumed": runtime.resumed, **runtime.trace.as_dict()}
    return {"value": value, "ranks": runtime.all_gather(trace)}


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
def _embed_task(out: Path, kwargs: dict[str, Any]) -> dict:
    return run_embeddings(out=out, runtime=Runtime(), **kwargs)


@ray.remote
def _cluster_task(out: Path, kwargs: dict[str, Any]) -> dict:
    return run_clustering(out=out, **kwargs)


#: Phase arguments that name a local file or folder when given as a string (an encoder may also be a hub id).
PATH_ARGUMENTS = frozenset({"encoder", "init_encoder", "encoder_path", "embeddings", "clusterings"})


def _absolute(value: Any, strings: bool = False) -> Any:
    """``value`` with local paths made absolute: Ray Train workers run in a per-run working directory.

    Paths are resolved, in dicts too (``clusterings``); with ``strings``, so is
    a relative string that names an existing file or folder (an encoder given as
    a relative folder), while any other string (a hub id) is kept.
    """
    if isinstance(value, Path):
        return value.expanduser().resolve()
    if strings and isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).resolve())
    if isinstance(value, dict):
        return {k: _absolute(v, strings) for k, v in value.items()}
    return value


def _absolute_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: _absolute(value, key in PATH_ARGUMENTS) for key, value in kwargs.items()}


def _storage_path(storage: str | Path) -> str:
    """``storage`` as Ray Train wants it: a URI, or an absolute local path."""
    storage = str(storage)
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _delete_run(storage: str, name: str) -> None:
    """Remove a finished run's folder (its checkpoint and snapshot) from ``storage``."""
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
        filesystem.delete_dir(f"{root.rstrip('/')}/{name}")
    except (OSError, FileNotFoundError) as error:  # keep the artifact; a leftover run folder is only space
        logger.warning("could not delete the finished Ray Train run %s in %s: %s", name, storage, error)


class RayExecutor:
    """Runs training phases as ``TorchTrainer`` jobs and the others as Ray tasks.

    ``storage`` holds Ray Train's run state and checkpoints (a local path or
    ``s3://``) while a phase runs; a run is named after the artifact it builds,
    so a rerun of an interrupted phase finds its checkpoints. The artifact path
    ``out`` must be on a filesystem the rank-0 worker and the task nodes share
    with the driver (a single node, or a shared mount).

    ``poll_interval_s`` is how often Ray Train's controller polls the workers
    (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, read from this process's environment
    when a run starts; Ray's default of 2 s adds about 6 s to every run on a
    small machine, see ``bench/results/ray_overhead.md``). It is set only where
    the environment does not already set it.

    ``fail_once`` is a fault-injection hook for tests (:class:`FailOnce`).
    """

    def __init__(self, resources: RayResources, storage: str | Path, fail_once: FailOnce | None = None, poll_interval_s: float | None = 0.5):
        resources.validate()
        self.resources = resources
        self.storage = _storage_path(storage)
        self.fail_once = fail_once
        if poll_interval_s is not None:
            os.environ.setdefault(POLL_INTERVAL_ENV, str(poll_interval_s))
        if not ray.is_initialized():
            ray.init()

    def train(self, phase: str, out: Path, **kwargs: Any) -> ray.train.Result:
        """Run ``phase`` on ``resources.workers`` ranks; returns Ray Train's result.

        ``result.return_value`` is rank 0's: ``{"value": <the phase's return>,
        "ranks": [<each rank's StepTrace and whether it resumed>]}``.
        """
        if phase not in TRAINING_PHASES:
            raise ValueError(f"unknown training phase {phase!r}; expected one of {sorted(TRAINING_PHASES)}")
        use_gpu = self.resources.gpus_per_worker > 0
        worker_resources = {"CPU": self.resources.cpus_per_worker}
        if use_gpu:
            worker_resources["GPU"] = self.resources.gpus_per_worker
        out = _absolute(Path(out))
        name = f"{phase}-{out.name}"
        kwargs = _absolute_kwargs(kwargs)
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"phase": phase, "out": str(out), "kwargs": kwargs, "fail_once": self.fail_once},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=self.resources.workers, use_gpu=use_gpu, resources_per_worker=worker_resources),
            run_config=RunConfig(
                name=name,
                storage_path=self.storage,
                failure_config=FailureConfig(max_failures=self.resources.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
        )
        result = trainer.fit()  # raises TrainingFailedError once max_failures restarts are spent
        _delete_run(self.storage, name)
        return result

    def embed(self, out: Path, **kwargs: Any) -> dict:
        kwargs = _absolute_kwargs(kwargs)
        return ray.get(_embed_task.options(num_gpus=self.resources.embed_gpus).remote(_absolute(Path(out)), kwargs))

    def cluster(self, out: Path, **kwargs: Any) -> dict:
        kwargs = _absolute_kwargs(kwargs)
        return ray.get(_cluster_task.options(num_gpus=self.resources.kmeans_gpus).remote(_absolute(Path(out)), kwargs))
