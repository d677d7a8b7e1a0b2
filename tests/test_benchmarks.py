"""The benchmark scripts that the suite can afford run for real, at smoke size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_phases_runs_its_three_phases_on_a_cpu_at_tiny_size(tmp_path):
    """The GPU benchmark is plain PyTorch + transformers: its smoke run on CPU measures every phase and writes the table."""
    output = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, "bench/gpu_phases.py", "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0", "--utterances", "30",
         "--batch-seconds", "12", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in output.read_text().splitlines() if line.startswith("| ") and not line.startswith(("| phase", "| ---"))]
    assert [row.split("|")[1].strip() for row in rows] == ["finetune", "cpt", "embed"]
    assert all(float(row.split("|")[3]) > 0 for row in rows)  # audio seconds per second


def test_gpu_phases_counts_hubert_base_flops_from_the_architecture():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_phases
    finally:
        sys.path.remove(str(REPO / "bench"))
    from transformers import HubertConfig

    config = HubertConfig()
    assert gpu_phases.cnn_frames(config, 16000)[-1] == 49  # 20 ms frames
    cnn, rest = gpu_phases.forward_flops(config, 16000)
    # ~85M transformer parameters: about 2 x 85M x 49 frames of matrix products per second of audio, plus attention;
    # the CNN's seven 512-channel convolutions cost about 4.9 GFLOP per second on their own.
    assert 7e9 < rest < 1.0e10 and 4.5e9 < cnn < 5.5e9


def test_encoder_probe_reports_every_layer_of_a_frozen_encoder(small_manifest, tiny_encoder):
    """The probe (with the loudness level and spectral balance beside) and prosody decoding run on a real manifest and encoder and print one row per hidden state."""
    done = subprocess.run([sys.executable, "bench/encoder_probe.py", str(small_manifest), str(tiny_encoder), "--folds", "1", "2", "--loudness", "--spectral-balance"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    layers, extra = rows[:-3], rows[-3:]
    assert [int(row[0]) for row in layers] == [0, 1, 2, 3]  # the tiny encoder's CNN output and its 3 layers
    assert all(all(0 <= float(value) <= 100 for value in row[1:4]) and all(float(value) <= 1 for value in row[4:]) for row in layers)
    assert [row[0].strip() for row in extra] == ["loudness alone", "spectral balance alone", "loudness and spectral balance"]
    assert all(0 <= float(row[1]) <= 100 for row in extra)


def test_head_variants_fine_tunes_each_variant_on_the_folds(small_manifest, tiny_encoder):
    """Two classifier variants of the smoke preset, one epoch on one fold each: a row per variant with its UAs."""
    variants = ['{"layers": "last", "pooling": "average", "train": {"epochs": 1}}', '{"layers": "weighted", "pooling": "stats", "train": {"epochs": 1}}']
    done = subprocess.run([sys.executable, "bench/head_variants.py", str(small_manifest), str(tiny_encoder), "--folds", "1", *sum((["--variant", v] for v in variants), [])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| `")]
    assert [json.loads(row[0].strip(" `")) for row in rows] == [json.loads(v) for v in variants]
    assert all(0 <= float(row[1]) <= 100 and 0 <= float(row[3]) <= 100 for row in rows)


def test_inference_batches_finds_batched_frames_equal_to_frames_alone(small_manifest, tmp_path):
    """The benchmark's own check, through its entry point on a group-norm tiny encoder: every batch budget gives the one-at-a-time frames."""
    from trainables.config import TinyEncoderConfig
    from trainables.models.encoder import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "gn", TinyEncoderConfig(hidden_size=32, num_layers=2, intermediate_size=64, feat_extract_norm="group"))
    out = tmp_path / "batches.md"
    done = subprocess.run([sys.executable, "bench/inference_batches.py", "--manifest", str(small_manifest), "--encoder", str(encoder), "--utterances", "12",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| gn")]
    assert len(rows) == 7 and all("group norm" in row[0] for row in rows)  # one at a time, five budgets, the CPU's cap
    assert all(float(row[6]) < 1e-4 for row in rows[1:6])


def test_egemaps_groups_scores_each_group_alone_left_out_and_beside_the_encoders_probe(small_manifest, tiny_encoder, tmp_path):
    out = tmp_path / "groups.md"
    done = subprocess.run(
        [sys.executable, "bench/egemaps_groups.py", str(small_manifest), "--folds", "1", "2", "--encoder", str(tiny_encoder), "--layer", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and not line.startswith(("| features", "| ---"))]
    groups, beside = [row for row in rows if len(row) == 4], [row for row in rows if len(row) == 3]
    assert [row[0].strip() for row in groups] == ["all", "pitch", "loudness", "tempo", "spectral balance", "voice quality"]
    assert sum(int(row[1]) for row in groups[1:]) <= int(groups[0][1]) == 88  # the groups do not overlap
    assert all(0 <= float(row[2]) <= 100 for row in groups)
    # The probe: layer 1's mean and spread (2 x 32), the loudness level (2) and the spectral balance (8); then each group beside it.
    assert [row[0].strip() for row in beside] == ["the probe alone"] + [f"the probe + {row[0].strip()}" for row in groups[1:]]
    assert [int(row[1]) for row in beside] == [74] + [74 + int(row[1]) for row in groups[1:]]
    assert all(0 <= float(row[2]) <= 100 for row in beside)
