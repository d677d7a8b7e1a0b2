"""Whole studies through the real command line: Ray Tune + Optuna, the shared cache, MLflow, report, predict, audit.

Kills and resumes are in tests/test_faults.py, runs repeated for equality in tests/test_determinism.py.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from study.io import layout
from study.cli import main
from study.io.records import read_baseline_records, read_trial_records
from trainables.data.audio import chunk, load_waveform
from trainables.models.encoder import read_encoder_info
from study_runs import built_phases, cli, first_wav, study_args


def test_a_study_shares_phases_between_trials_and_lands_in_mlflow(small_manifest, tiny_encoder, tmp_path, capsys):
    study_dir = tmp_path / "study"
    # Two trials differing only in pooling, run at the same time: they share TAPT, embeddings, k-means and CPT.
    shared_cache = tmp_path / "shared-cache"  # also used by a later study, below
    args = study_args(small_manifest, tiny_encoder, study_dir, "search.space.clusters={choice: [4]}", "search.algorithm=grid",
                      "search.num_trials=2", "search.max_concurrent=2", f"storage.cache_dir={shared_cache}", "baselines=[finetune, tapt, egemaps]")
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Study report" in done.stdout and "ser-study ui" in done.stdout

    records = read_trial_records(study_dir)
    assert [r["status"] for r in records] == ["complete", "complete"]
    assert sorted(r["params"]["pooling"] for r in records) == ["attention", "average"]
    # One TAPT per fold for both trials and the tapt baseline (counted from the cache's build log), one fine-tuning
    # per trial and fold plus the vanilla fine-tuning baseline's, one set of eGeMAPS features for both folds.
    built = {"tapt": 2, "embeddings": 2, "clustering": 2, "cpt": 2, "finetune": 6, "score": 2, "egemaps_features": 1, "egemaps": 2}
    assert built_phases(study_dir) == built
    baselines = {r["method"]: r for r in read_baseline_records(study_dir)}
    assert set(baselines) == {"finetune", "tapt", "egemaps"} and all(r["status"] == "complete" and r["audit"]["clean"] for r in baselines.values())
    tapt_keys = {f["test_session"]: f["artifacts"]["tapt"] for f in baselines["tapt"]["folds"]}
    assert all(f["artifacts"]["tapt"] == tapt_keys[f["test_session"]] for r in records for f in r["folds"])  # the very TAPT models

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(f"e2e-{study_dir.name}")
    runs = client.search_runs([experiment.experiment_id])
    kinds = collections.Counter(r.data.tags.get("ser_study.kind", "fold") for r in runs)
    assert kinds == {"trial": 2, "baseline": 3, "fold": 4 + 6, "summary": 1}
    trials = {r.info.run_id: r for r in runs if r.data.tags.get("ser_study.kind") == "trial"}
    for run in trials.values():
        assert {"val_ua_mean", "test_ua_mean", "test_wa_mean", "test_ua_std"} <= set(run.data.metrics)
        assert {"delta_test_ua_vs_tapt", "delta_test_ua_vs_tapt_low", "delta_test_ua_vs_egemaps"} <= set(run.data.metrics)  # paired, logged with the report
        assert run.data.params["layer"] == "2" and run.data.params["clusters"] == "4"
    folds = [r for r in runs if r.data.tags.get("ser_study.kind") == "fold"]
    baseline_runs = {r.info.run_id for r in runs if r.data.tags.get("ser_study.kind") == "baseline"}
    assert sum(r.data.tags["mlflow.parentRunId"] in trials for r in folds) == 4  # each trial's two folds nested in it
    assert sum(r.data.tags["mlflow.parentRunId"] in baseline_runs for r in folds) == 6  # and each baseline's
    assert {"test_ua", "val_ua"} <= set(folds[0].data.metrics)
    for name in ("report.md", "table.csv", "folds.csv", "heatmap_attention.png", "confusion_best.png", "paired_folds.png"):
        assert (layout.report_dir(study_dir) / name).stat().st_size > 0
    text = (layout.report_dir(study_dir) / "report.md").read_text()
    assert "## Baselines" in text and "| `egemaps` | complete | 2/2 |" in text and "Δ UA vs tapt" in text and "t-interval" in text

    # The best configuration's fold models as an ensemble, on a folder of new audio with something that is not audio
    # in it (skipped and named, exit 1), in each format; then the report and the audit. In-process commands.
    wav = first_wav(small_manifest)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(wav, inbox / "a.wav")
    (inbox / "notes.wav").write_text("not audio")
    assert main(["predict", str(study_dir), str(inbox)]) == 1
    captured = capsys.readouterr()
    line = captured.out.strip().splitlines()[-1]
    probabilities = [float(part.split()[1]) for part in line.split("(")[1].rstrip(")").split("  ")]
    assert line.startswith(str(inbox / "a.wav")) and sum(probabilities) == pytest.approx(1.0, abs=0.01)
    assert "skipped" in captured.err and "notes.wav" in captured.err and "Traceback" not in captured.err
    assert main(["predict", str(study_dir), str(inbox / "a.wav"), "--format", "json", "--chunk-seconds", "0.5"]) == 0
    answer = json.loads(capsys.readouterr().out)
    info = read_encoder_info(tiny_encoder)
    expected_chunks = len(chunk(load_waveform(wav, info.sample_rate), info.sample_rate // 2, min_samples=info.receptive_field))
    assert answer["label"] in answer["probabilities"] and answer["chunks"] == expected_chunks > 1
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=0.01)
    assert main(["predict", str(study_dir), str(inbox / "*.wav"), "--format", "csv", "--fold", "1"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [Path(r["path"]).name for r in rows] == ["a.wav"] and set(rows[0]) >= {"path", "label", "neu", "hap", "ang", "sad", "seconds", "chunks"}

    assert main(["report", str(study_dir)]) == 0
    reported = capsys.readouterr().out
    assert "Best configuration" in reported and "Leakage audit: 2 clean" in reported and all(r["audit"]["clean"] for r in records)
    assert main(["audit", str(study_dir)]) == 0, capsys.readouterr().out[-2000:]
    assert any(r.data.tags.get("audit") == "clean" for r in trials.values())

    # A later study on the same storage reuses every phase the first one built: it builds nothing.
    later_dir = tmp_path / "later"
    later = study_args(small_manifest, tiny_encoder, later_dir, "search.space.clusters={choice: [4]}", "search.space.pooling={choice: [attention]}",
                       "search.algorithm=grid", "search.num_trials=1", f"storage.cache_dir={shared_cache}", "baselines=[finetune, tapt, egemaps]")
    done = subprocess.run(cli(*later), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert layout.cache_dir(later_dir) == shared_cache
    assert built_phases(later_dir) == built
    (later_record,) = read_trial_records(later_dir)
    assert all(fold["built"] == [] for fold in later_record["folds"])
    assert all(fold["built"] == [] for record in read_baseline_records(later_dir) for fold in record["folds"])  # the baselines too


def test_a_bad_study_file_fails_through_the_console_script_before_ray_starts(small_manifest, tiny_encoder, tmp_path):
    # The installed `ser-study` script (tests/test_bad_input.py runs every kind of bad input in-process).
    study_dir = tmp_path / "study"
    done = subprocess.run(cli(*study_args(small_manifest, tiny_encoder, study_dir, "search.space.pooling={choice: [max]}")),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "search.space.pooling" in done.stderr and "Traceback" not in done.stderr
    assert "Ray" not in done.stderr and not study_dir.exists()
