"""The machine line every benchmark's results file starts with (imported by the scripts in bench/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        return f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        return ""


def _gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def describe_machine() -> str:
    """CPU cores and model, memory, GPU, and the versions of Python, Ray and torch."""
    import ray
    import torch

    return (f"{os.cpu_count()} CPU cores ({_cpu_model()}){_memory()}, {_gpu()}; "
            f"Python {platform.python_version()}, Ray {ray.__version__}, torch {torch.__version__}")
