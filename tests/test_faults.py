"""Faults during a study: a phase that raises, a worker that dies, an artifact damaged on disk, a driver killed (SIGKILL) and resumed.

Each study is ``smoke.yaml`` on the small corpus with the tiny encoder (one
epoch per phase, two folds). The SIGKILL study is compared with an
uninterrupted run of the same study file and seed, the ``reference_study``
fixture (see also ``tests/test_determinism.py``, which shares that run). The
other studies start from a copy of the reference study's phase cache, so they
build only the phase their fault is about.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fault_injection import INJECTED_MESSAGE, fault_runtime_env
from study.io import layout
from study.io.records import read_trial_records
from study_runs import KILL_STUDY, PROVENANCE_COLUMNS, TIME_COLUMNS, built_phases, cache_events, cli, normalized_report, run_cli, study_args

pytestmark = pytest.mark.slow


def reference_cache_copy(reference_study: Path, tmp_path: Path) -> Path:
    """A private copy of the reference study's phase artifacts (not its event log, so a test's events are its own).

    A test's study finds every phase it shares with the reference study cached.
    """
    cache = tmp_path / "cache"
    shutil.copytree(layout.cache_dir(reference_study), cache, ignore=shutil.ignore_patterns("events"))
    return cache


def test_a_phase_that_raises_fails_its_trial_with_the_cause_and_the_others_go_on(reference_study, small_manifest, tiny_encoder, tmp_path, capsys):
    import ray

    from study.cli import main

    study_dir, cache = tmp_path / "study", reference_cache_copy(reference_study, tmp_path)
    # Every Ray worker of this study runs the hook first: fine-tuning with average pooling runs out of memory.
    # `ser-study run` joins the Ray instance already started in this process.
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env=fault_runtime_env("oom_in_finetune", pooling="average"))
    try:  # the reference study left every phase of the attention trial cached; the average trial fine-tunes
        code = main(study_args(small_manifest, tiny_encoder, study_dir, "search.space.clusters={choice: [4]}", "search.algorithm=grid",
                               "search.num_trials=2", "search.max_concurrent=1", f"storage.cache_dir={cache}"))
    finally:
        ray.shutdown()

    printed = capsys.readouterr()
    assert code == 1 and "Study report" in printed.out
    assert "1 trial(s) failed" in printed.err and "OutOfMemoryError" in printed.err and "storage.cache_dir=" in printed.err
    records = read_trial_records(study_dir)
    by_pooling = {r["params"]["pooling"]: r for r in records}
    assert by_pooling["attention"]["status"] == "complete" and by_pooling["attention"]["folds_done"] == 2
    failed = by_pooling["average"]
    assert failed["status"] == "error" and "OutOfMemoryError" in failed["error"] and INJECTED_MESSAGE in failed["error"]
    assert records[0] is failed, "the failing trial ran first, so the other one went on after it"

    # The failed trial is in the report and in MLflow with its cause; no average fine-tuning artifact was left.
    report = (layout.report_dir(study_dir) / "report.md").read_text()
    assert "OutOfMemoryError" in report and "1 complete" in report and "1 error" in report
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(f"e2e-{study_dir.name}")
    trial_runs = {r.data.params["pooling"]: r for r in client.search_runs([experiment.experiment_id], "tags.`ser_study.kind` = 'trial'")}
    assert trial_runs["average"].info.status == "FAILED" and "OutOfMemoryError" in trial_runs["average"].data.tags["error"]
    assert trial_runs["attention"].info.status == "FINISHED"
    assert built_phases(study_dir) == {}
    finetunes = [json.loads(p.read_text()) for p in (cache / "finetune").glob("*/record.json")]
    assert finetunes and all(r["params"]["pooling"] == "attention" for r in finetunes)


def test_a_ray_train_worker_killed_mid_phase_resumes_from_its_checkpoint_and_the_trial_completes(reference_study, small_manifest, tiny_encoder, tmp_path, capsys):
    import ray

    from study.cli import main

    study_dir, marker, cache = tmp_path / "study", tmp_path / "killed", reference_cache_copy(reference_study, tmp_path)
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env=fault_runtime_env("kill_a_ray_train_worker_once", phase="finetune", marker=str(marker)))
    try:  # phases on Ray Train (TorchTrainer, one worker, one restart allowed), one fold; fine-tuning, two epochs, is the one not cached
        code = main(study_args(small_manifest, tiny_encoder, study_dir, "folds=[1]", "phases.finetune.train.epochs=2", "resources.executor=ray",
                               "resources.train.workers=1", "resources.train.max_failures=1", "search.space.clusters={choice: [4]}",
                               "search.space.pooling={choice: [attention]}", "search.algorithm=grid", "search.num_trials=1",
                               f"storage.cache_dir={cache}"))
    finally:
        ray.shutdown()

    assert code == 0, capsys.readouterr().err[-3000:]
    assert marker.is_file(), "the fine-tuning worker was never killed"
    (record,) = read_trial_records(study_dir)
    assert record["status"] == "complete" and record["folds_done"] == 1 and record["folds"][0]["built"] == ["finetune"]
    finetune = json.loads((cache / "finetune" / record["folds"][0]["artifacts"]["finetune"] / "record.json").read_text())
    # Resumed from epoch 0's checkpoint; under heavy load Ray Train V2 may not have registered it before the
    # worker died, and the restarted group then starts over (tests/test_ray_train.py pins the resume itself).
    assert finetune["results"]["resumed_from_epoch"] in (0, None) and len(finetune["results"]["history"]) == 2


def test_a_fold_whose_worker_process_dies_is_retried_and_takes_its_lease_back(reference_study, small_manifest, tiny_encoder, tmp_path, capsys):
    import ray

    from study.io import layout as study_paths
    from study.cli import main
    from study.cache.leases import get_coordinator

    study_dir, marker, cache = tmp_path / "study", tmp_path / "killed", reference_cache_copy(reference_study, tmp_path)
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env=fault_runtime_env("kill_a_fold_worker_once", marker=str(marker)))
    try:  # the fold's process dies while it holds the lease on its fine-tuning artifact (the rest is cached)
        code = main(study_args(small_manifest, tiny_encoder, study_dir, "folds=[1]", "search.space.clusters={choice: [4]}",
                               "search.space.pooling={choice: [average]}", "search.algorithm=grid", "search.num_trials=1",
                               f"storage.cache_dir={cache}"))
        stats = ray.get(get_coordinator(str(study_paths.cache_dir(study_dir))).get_stats.remote())
    finally:
        ray.shutdown()

    assert code == 0, capsys.readouterr().err[-3000:]
    assert marker.is_file(), "the fold's worker was never killed"
    (record,) = read_trial_records(study_dir)
    assert record["status"] == "complete" and record["folds"][0]["built"] == ["finetune"]  # the retry found the rest cached
    assert built_phases(study_dir) == {"finetune": 1}
    assert stats["expired"] == 0 and stats["waited"] == 0  # the retry did not wait out its dead attempt's lease


def test_an_artifact_damaged_on_disk_is_not_reused_but_rebuilt(reference_study, small_manifest, tiny_encoder, tmp_path):
    # A copy of the reference study's cache, where one fold's pseudo labels lose their tail; the record still parses.
    cache = reference_cache_copy(reference_study, tmp_path)
    (before,) = [r for r in read_trial_records(reference_study) if r["params"]["clusters"] == 4]
    key = before["folds"][0]["artifacts"]["clustering"]
    labels = cache / "clustering" / key / "labels.npy"
    original = labels.read_bytes()
    labels.write_bytes(original[:-64])

    study_dir = tmp_path / "study"
    done = run_cli(*study_args(small_manifest, tiny_encoder, study_dir, *KILL_STUDY, "search.space.clusters={choice: [4]}",
                               "search.num_trials=1", f"storage.cache_dir={cache}"))
    assert done.returncode == 0, done.stderr[-3000:]
    (after,) = read_trial_records(study_dir)
    events = [e for e in cache_events(study_dir) if e["key"] == key]
    assert [e["event"] for e in events] == ["corrupt", "built"]
    assert "labels.npy has" in events[0]["problem"] and Path(events[0]["moved_to"]).is_dir()
    # Only the damaged artifact was rebuilt, to the same pseudo labels; what depends on it was intact and reused.
    assert [f["built"] for f in after["folds"]] == [["clustering"], []]
    assert labels.read_bytes() == original and after["metrics"] == before["metrics"]


def test_a_driver_killed_at_three_points_resumes_to_the_report_of_an_uninterrupted_run(reference_study, small_manifest, tiny_encoder, tmp_path):
    study_dir = tmp_path / "killed"
    args = study_args(small_manifest, tiny_encoder, study_dir, *KILL_STUDY)

    def trial_done(n):
        return lambda: sum(r["status"] == "complete" for r in read_trial_records(study_dir)) >= n

    def built(phase, n):
        return lambda: sum(e["event"] == "built" and e["phase"] == phase for e in cache_events(study_dir)) >= n

    points = [
        ("during the first trial's phases", built("embeddings", 1)),
        ("after the first trial finished", trial_done(1)),
        ("during the second trial's phases", built("cpt", 3)),
    ]
    finished_before: dict[str, dict] = {}
    for number, (where, reached) in enumerate(points):
        command = cli(*args) if number == 0 else cli("resume", str(study_dir))
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 600
        while not reached():
            assert driver.poll() is None, f"the study ended before it could be killed {where}"
            assert time.monotonic() < deadline, f"never reached the point {where}"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started, at once
        driver.wait()
        finished_before.update({r["trial_id"]: r for r in read_trial_records(study_dir) if r["status"] == "complete"})

    done = run_cli("resume", str(study_dir))
    assert done.returncode == 0, done.stderr[-3000:]

    records = read_trial_records(study_dir)
    assert [r["status"] for r in records] == ["complete", "complete"]
    for record in records:  # a trial that had finished before a kill was not run again
        if record["trial_id"] in finished_before:
            assert record == finished_before[record["trial_id"]]
    # A trial Tune had not yet saved when its driver died is rerun under a new id; its record is set aside.
    lost = {p.stem for p in (study_dir / "trials" / "lost").glob("*.json")}
    assert set(finished_before) <= {r["trial_id"] for r in records} | lost
    # The search's Optuna study kept every trial across the four drivers: two COMPLETE with the records' scores, and
    # none left RUNNING (a trial asked before a kill is run by the next driver's first new trial, with its grid point).
    optuna_trials = optuna.load_study(study_name="faults", storage=f"sqlite:///{study_dir / 'optuna.db'}").trials
    assert sorted(t.value for t in optuna_trials if t.state == TrialState.COMPLETE) == pytest.approx(sorted(r["metrics"]["val_ua_mean"] for r in records))
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in optuna_trials)
    # No cached phase ran twice across the four drivers; every phase of the study was built exactly once.
    assert built_phases(study_dir) == built_phases(reference_study)
    # The same report, but for wall-clock times and which chain built a phase (a restarted chain found some cached).
    assert normalized_report(study_dir, TIME_COLUMNS + PROVENANCE_COLUMNS) == normalized_report(reference_study, TIME_COLUMNS + PROVENANCE_COLUMNS)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("faults")
    kinds = collections.Counter(r.data.tags.get("ser_study.kind") for r in client.search_runs([experiment.experiment_id]))
    assert kinds == {"trial": 2, "fold": 4, "summary": 1}  # restarted trials reopened their runs

