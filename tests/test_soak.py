"""A soak of 100 cheap trials through bench/soak.py: no leaked Ray resources, bounded driver and Ray worker memory, no hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
TRIALS = 100


def test_a_hundred_cheap_trials_leak_nothing_and_keep_memory_bounded(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, str(SOAK), "--trials", str(TRIALS), "--no-write", "--json", str(out), "--workdir", str(tmp_path / "work"),
                           "--timeout-s", "900"], capture_output=True, text=True, timeout=1200)
    assert out.is_file(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert not failed, f"{failed}: {json.dumps({k: v for k, v in result.items() if k != 'samples'}, indent=2)}"
    assert done.returncode == 0, done.stderr[-3000:]
    assert result["complete"] == TRIALS and len(result["samples"]) == TRIALS
    assert result["leaks"] == {"resources_held": {}, "placement_groups_left": 0, "live_actors": ["CacheCoordinator"]}
