"""Faults injected into Ray's worker processes through Ray's own ``worker_process_setup_hook`` (tests only).

A test starts Ray with::

    ray.init(runtime_env=fault_runtime_env("oom_in_finetune", pooling="average"))

and every worker Ray starts for it (trials, fold tasks, Ray Train workers)
first runs the named hook below, which wraps one real phase so that it fails
the way a real fault would. The hook's settings travel as environment
variables ``SER_STUDY_FAULT_<NAME>``. Nothing in ``study/`` or ``trainables/``
knows about this module.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

SETTING_PREFIX = "SER_STUDY_FAULT_"
INJECTED_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB (injected by tests/fault_injection.py)"


def fault_runtime_env(hook: str, **settings: str) -> dict[str, Any]:
    """A Ray ``runtime_env`` whose workers import this module and run ``hook`` (with ``settings``) before any task."""
    here = str(Path(__file__).resolve().parent)
    python_path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = {f"{SETTING_PREFIX}{name.upper()}": str(value) for name, value in settings.items()}
    return {"worker_process_setup_hook": f"fault_injection.{hook}", "env_vars": {"PYTHONPATH": python_path, **env}}


def _setting(name: str) -> str:
    return os.environ[f"{SETTING_PREFIX}{name.upper()}"]


def _before_finetune(fault: Callable[[dict[str, Any]], None]) -> None:
    """Run ``fault(kwargs)`` at the start of every fine-tuning this process runs (it may raise or exit)."""
    from trainables import executors

    real = executors.TRAINING_PHASES["finetune"]

    def finetune(**kwargs: Any) -> Any:
        fault(kwargs)
        return real(**kwargs)

    executors.TRAINING_PHASES["finetune"] = finetune


def oom_in_finetune() -> None:
    """Setup hook: fine-tuning with the pooling given as ``pooling`` runs out of memory."""
    import torch

    pooling = _setting("pooling")

    def fault(kwargs: dict[str, Any]) -> None:
        if kwargs.get("pooling") == pooling:
            raise torch.OutOfMemoryError(INJECTED_MESSAGE)

    _before_finetune(fault)


def _wait_until_report_consumed(timeout_s: float = 30.0) -> None:
    """Block until the Ray Train controller has polled this worker's reports (a private Ray 2.60 API)."""
    from trainables.ray_train import POLL_INTERVAL_ENV

    try:
        from ray.train.v2._internal.execution.context import get_train_context

        queue = get_train_context().get_result_queue()
    except Exception:  # another Ray version: wait out two poll intervals instead
        time.sleep(2 * float(os.environ.get(POLL_INTERVAL_ENV, 2.0)) + 1.0)
        return
    deadline = time.monotonic() + timeout_s
    while queue.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass(frozen=True)
class FailOnce:
    """A :class:`trainables.ray_train.WorkerHook`: kill a training worker once, right after a checkpoint.

    Rank ``rank`` calls ``os._exit(1)`` after reporting epoch ``after_epoch``
    (0-based), once that report has been handed to the Ray Train controller,
    unless the file ``marker`` exists; it creates the file first, so the
    restarted worker group runs through. ``marker`` must be on a filesystem
    every worker sees.
    """

    after_epoch: int
    marker: str
    rank: int = 0

    def attach(self, model: Any) -> None:
        pass

    def on_report(self, runtime: Any, metrics: dict[str, Any]) -> None:
        if runtime.rank != self.rank or metrics.get("epoch") != self.after_epoch:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        _wait_until_report_consumed()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {runtime.rank} exited after epoch {self.after_epoch} at {time.time()}\n")
        logger.warning("fault injection: rank %d exits after epoch %d", runtime.rank, self.after_epoch)
        os._exit(1)

    def summary(self) -> dict[str, Any]:
        return {}


def kill_a_ray_train_worker_once() -> None:
    """Setup hook: the first Ray Train worker group running the phase ``phase`` loses rank 0 (``os._exit``) after epoch 0's checkpoint.

    Uses :class:`FailOnce`; ``marker`` (a file every worker sees) records that
    the kill happened, so the restarted group runs through.
    """
    from trainables import ray_train

    phase, marker = _setting("phase"), _setting("marker")
    real = ray_train.RayExecutor.train

    def train(self, name: str, out: Path, **kwargs: Any):
        if name == phase:
            self.hooks = (FailOnce(after_epoch=0, marker=marker),)
        return real(self, name, out, **kwargs)

    ray_train.RayExecutor.train = train


def kill_a_fold_worker_once() -> None:
    """Setup hook: the worker process running the first fine-tuning dies (``os._exit``), as under the OOM killer.

    ``marker`` (a file) records that it happened, so the retried fold runs through.
    """
    marker = Path(_setting("marker"))

    def fault(kwargs: dict[str, Any]) -> None:
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    _before_finetune(fault)
