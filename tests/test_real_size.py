"""The real-size path: HuBERT-base's exact architecture (random init, nothing downloaded) through TAPT with the hubert preset on a CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "real_size.py"


def test_hubert_base_runs_the_paper_tapt_within_the_memory_goal(tmp_path):
    measured = tmp_path / "real_size.json"
    args = ["--keep-per-session", "4", "--epochs", "1", "--recipes", "tapt", "--tapt-clusters", "20",
            "--workdir", str(tmp_path / "work"), "--output", str(tmp_path / "real_size.md"), "--json", str(measured)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(measured.read_text())
    assert result["peak_gib"] < 12.0
    phases = result["outcomes"]["tapt"]["phases"]
    # TAPT as the paper does it: masked prediction of k-means targets of the pretrained encoder's layer, then the labels.
    assert [p["phase"] for p in phases] == ["embeddings", "clustering", "cpt", "tapt", "score"]
    record = json.loads((Path(phases[3]["artifact"]) / "record.json").read_text())
    config = json.loads((Path(phases[3]["artifact"]) / "encoder" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (768, 12)  # HuBERT-base's architecture
    assert all(math.isfinite(epoch["train_loss"]) for epoch in record["results"]["history"])
    assert phases[3]["losses"] == [epoch["train_loss"] for epoch in record["results"]["history"]] and phases[3]["updates"] >= 1
    assert phases[0]["losses"] == [] and phases[0]["updates"] is None  # a task phase trains nothing
    assert "| tapt | tapt |" in (tmp_path / "real_size.md").read_text()
