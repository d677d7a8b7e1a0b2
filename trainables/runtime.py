"""Where a phase runs: its rank, device, collectives, checkpoints and reports.

Phase code talks only to a :class:`Runtime`, so the same loop runs as a plain
single process (:class:`LocalRuntime`), under ``torch.distributed`` launched by
hand, or on Ray Train workers (``trainables.ray_train.RayTrainRuntime``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainables.phases.artifacts import PhaseRecord

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
#: Beside a local checkpoint: ``{"epoch": e, "epochs": n}`` of the phase building it (what a study's progress view reads).
PROGRESS_FILE = "progress.json"


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPU; fp32 (no autocast) on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def training_record(phase: str, started: float, runtime: "Runtime", **fields: Any) -> PhaseRecord:
    """The record of a training phase run on ``runtime`` since ``started`` (``time.perf_counter()``)."""
    return PhaseRecord(
        phase=phase,
        wall_seconds=time.perf_counter() - started,
        device=device_name(runtime.device),
        world_size=runtime.world_size,
        **fields,
    )


def save_checkpoint(state: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / CHECKPOINT_FILE)


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain values only: ``weights_only``)."""
    return torch.load(directory / CHECKPOINT_FILE, map_location=device, weights_only=True)


class Runtime:
    """A single-process or ``torch.distributed`` runtime; subclasses change checkpoint storage."""

    def __init__(self, device: torch.device | None = None):
        self.device = device or default_device()

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.distributed else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if self.distributed else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device; wrap it in DDP when there are several ranks."""
        model = model.to(self.device)
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # Some parameters take part only in some batches (HF's mask embedding when SpecAugment
            # draws no span in a short batch, an auxiliary head without targets), so DDP must look.
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
        return model

    def no_sync(self, model: nn.Module, last: bool):
        """DDP's ``no_sync`` for every part of an accumulated batch but the ``last``; nothing without DDP."""
        if isinstance(model, nn.parallel.DistributedDataParallel) and not last:
            return model.no_sync()
        return contextlib.nullcontext()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a list of one without distribution)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def latest_checkpoint(self) -> Path | None:
        """A directory holding the last reported checkpoint, or None to start fresh."""
        return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        """Report an epoch's metrics, with the state to resume from after it (saved by rank 0)."""
        logger.info("epoch report: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


class LocalRuntime(Runtime):
    """Checkpoints in a local folder; a rerun of the same phase resumes from the last one."""

    def __init__(self, checkpoint_dir: Path | None = None, device: torch.device | None = None):
        super().__init__(device)
        self.checkpoint_dir = checkpoint_dir

    def latest_checkpoint(self) -> Path | None:
        if self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT_FILE).is_file():
            return self.checkpoint_dir
        return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        super().report(metrics, state)
        if state is None or self.checkpoint_dir is None or not self.is_main:
            return
        self.checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ckpt.", dir=self.checkpoint_dir.parent))
        save_checkpoint(state, tmp)
        (tmp / PROGRESS_FILE).write_text(json.dumps({"epoch": state.get("epoch"), "epochs": state.get("epochs")}))
        old = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".old")
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)
