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
from pathlib import Path
from typing import Any, Protocol, Sequence

import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

from trainables.config import RayResources
from trainables.phases.registry import TASK_PHASES, TRAINING_PHASES
from trainables.runtime import Runtime, save_checkpoint

logger = logging.getLogger(__name__)

#: How often Ray Train V2's controller polls the workers (reports, health); Ray's default is 2 s.
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


class EpochWork:
    """What one rank trained in each epoch: steps, utterances and audio samples (how DDP shared the data).

    Every forward in training mode is one step, counted with its utterances and
    samples (the waveform batch is the forward's first argument, its attention
    mask the second); evaluation runs in eval mode and is not counted.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self._current = {"steps": 0, "utterances": 0, "samples": 0}

    def attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        tensors = list(args) + [kwargs[k] for k in ("waveforms", "attention_mask") if k in kwargs]
        self._current["steps"] += 1
        if tensors:
            self._current["utterances"] += int(tensors[0].shape[0])
        if len(tensors) > 1:
            self._current["samples"] += int(tensors[1].sum())

    def on_report(self, metrics: dict[str, Any]) -> None:
        self.epochs.append({"epoch": metrics.get("epoch"), **self._current})
        self._current = {"steps": 0, "utterances": 0, "samples": 0}


class WorkerHook(Protocol):
    """Opt-in code run on every Ray Train worker (benchmark timing, test faults): picklable, importable by the workers."""

    def attach(self, model: nn.Module) -> None:
        """Called with the model before training starts."""

    def on_report(self, runtime: "RayTrainRuntime", metrics: dict[str, Any]) -> None:
        """Called after each epoch's report has been handed to Ray Train."""

    def summary(self) -> dict[str, Any]:
        """What the hook returns from the rank (merged into the rank's entry of the phase's return value)."""


class RayTrainRuntime(Runtime):
    """The runtime of a phase on a Ray Train worker; ``hooks`` are :class:`WorkerHook` objects."""

    def __init__(self, hooks: Sequence[WorkerHook] = ()):
        super().__init__(ray.train.torch.get_device())
        self.hooks = list(hooks)
        self.work = EpochWork()
        self.resumed = False
        self._restored: Path | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        self.work.attach(model)
        for hook in self.hooks:
            hook.attach(model)
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
        self.work.on_report(metrics)
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
        for hook in self.hooks:
            hook.on_report(self, metrics)


def _train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each Ray Train worker runs: one training phase, looked up by name.

    Returns (rank 0's is ``Result.return_value``) the phase's return value and
    every rank's :class:`EpochWork` and hook summaries, with whether the rank resumed from a checkpoint.
    """
    runtime = RayTrainRuntime(hooks=config["hooks"])
    value = TRAINING_PHASES[config["phase"]](out=Path(config["out"]), runtime=runtime, **config["kwargs"])
    rank = {"rank": runtime.rank, "world_size": runtime.world_size, "resumed": runtime.resumed, "epochs": runtime.work.epochs}
    for hook in runtime.hooks:
        rank.update(hook.summary())
    return {"value": value, "ranks": runtime.all_gather(rank)}


@ray.remote
def _phase_task(phase: str, out: Path, kwargs: dict[str, Any]) -> Any:
    """A task phase in a Ray task, on the device Ray gave it."""
    return TASK_PHASES[phase](out=out, runtime=Runtime(), **kwargs)


#: Phase arguments that name a local file or folder when given as a string (an encoder may also be a hub id).
PATH_ARGUMENTS = frozenset({"encoder", "init_encoder", "encoder_path", "embeddings", "clusterings", "classifier"})


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
    """``storage`` as Ray Train wants it: a local ``Path`` made absolute; a string (a URI, or an absolute path) as given."""
    return str(storage.expanduser().resolve()) if isinstance(storage, Path) else storage


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

    ``hooks`` (:class:`WorkerHook`) run on every training worker: benchmarks
    and tests use them; a study runs none.
    """

    def __init__(self, resources: RayResources, storage: str | Path, hooks: Sequence[WorkerHook] = (), poll_interval_s: float | None = 0.5):
        self.resources = resources
        self.storage = _storage_path(storage)
        self.hooks = tuple(hooks)
        if poll_interval_s is not None:
            os.environ.setdefault(POLL_INTERVAL_ENV, str(poll_interval_s))
        if not ray.is_initialized():
            ray.init()

    def train(self, phase: str, out: Path, **kwargs: Any) -> ray.train.Result:
        """Run ``phase`` on ``resources.workers`` ranks; returns Ray Train's result.

        ``result.return_value`` is rank 0's: ``{"value": <the phase's return>,
        "ranks": [<each rank's epochs of work, hook summaries and whether it resumed>]}``.
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
            train_loop_config={"phase": phase, "out": str(out), "kwargs": kwargs, "hooks": self.hooks},
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

    def task(self, phase: str, out: Path, **kwargs: Any) -> Any:
        """Run a task phase as a Ray task with the GPUs :meth:`RayResources.task_gpus` gives it."""
        if phase not in TASK_PHASES:
            raise ValueError(f"unknown task phase {phase!r}; expected one of {sorted(TASK_PHASES)}")
        task = _phase_task.options(num_gpus=self.resources.task_gpus(phase))
        return ray.get(task.remote(phase, _absolute(Path(out)), _absolute_kwargs(kwargs)))
