"""MLflow tracking into a temporary SQLite store, read back with MlflowClient."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from study.io import layout  # noqa: E402
from study.tracking import runs as tracking  # noqa: E402
from study.tracking import store as mlflow_store  # noqa: E402
from study.tracking import summary  # noqa: E402
from study.report.files import write_report  # noqa: E402
from study.report.model import build_report  # noqa: E402

CLASSES = ["neu", "hap", "ang", "sad"]
PROTOCOL = {"strict": True, "description": "strict (validation: stratified; the test session enters no phase but the test)"}


def make_fold(session: int, val_ua: float, test_ua: float) -> dict:
    return {
        "test_session": session,
        "seconds": 12.5,
        "strict": True,
        "val": {"ua": val_ua, "wa": val_ua, "macro_f1": val_ua, "confusion": [[5, 1, 0, 0], [0, 5, 1, 0], [1, 0, 5, 0], [0, 0, 1, 5]], "count": 24},
        "test": {"ua": test_ua, "wa": test_ua + 0.02, "macro_f1": test_ua - 0.01, "confusion": [[8, 1, 1, 0], [1, 7, 1, 1], [0, 2, 7, 1], [1, 0, 1, 8]], "count": 40},
        "fold": {"test_session": session, "train": {"count": 180, "fingerprint": "f1"}, "val": {"count": 24, "fingerprint": "f2"}, "unsupervised_audio": "train"},
        "artifacts": {"tapt": "k1", "embeddings": "k2", "clustering": "k3", "cpt": "k4", "finetune": "k5"},
        "built": ["cpt", "finetune"],
        "history": {
            "tapt": [{"epoch": 0, "train_loss": 1.3, "val_ua": 0.40}, {"epoch": 1, "train_loss": 1.1, "val_ua": 0.50}, {"epoch": 2, "train_loss": 0.9, "val_ua": 0.55}],
            "finetune": [{"epoch": 0, "train_loss": 1.2, "val_ua": 0.45}],
        },
    }


def make_record(trial_id: str, folds: list[dict], status: str = "complete") -> dict:
    report_metrics = {
        "val_ua_mean": sum(f["val"]["ua"] for f in folds) / len(folds),
        "val_ua_std": 0.01,
        "test_ua_mean": sum(f["test"]["ua"] for f in folds) / len(folds),
        "test_ua_std": 0.02,
        "test_wa_mean": sum(f["test"]["wa"] for f in folds) / len(folds),
        "test_wa_std": 0.02,
    }
    return {
        "trial_id": trial_id,
        "params": {"layer": 2, "clusters": 8, "mask_ratio": 0.2, "pooling": "attention"},
        "status": status,
        "error": None if status != "error" else "boom",
        "protocol": PROTOCOL,
        "classes": CLASSES,
        "folds": folds,
        "metrics": report_metrics,
        "folds_done": len(folds),
        "folds_total": 2,
        "started": 1700000000.0,
        "finished": 1700000100.0,
    }


STUDY = {
    "name": "smoke",
    "study_dir": "",
    "objective": {"metric": "val_ua_mean", "mode": "max"},
    "protocol": PROTOCOL,
    "data_fingerprint": "data123",
    "code_version": "abc1234",
}


def log_trial(uri: str, trial_id: str, scores: list[tuple[float, float]]) -> str:
    """Log one whole trial the way the trial function does; return its run id."""
    folds = [make_fold(i + 1, *score) for i, score in enumerate(scores)]
    run_id = tracking.start_trial(
        uri,
        "smoke",
        trial_id,
        {"layer": 2, "clusters": 8, "mask_ratio": 0.2, "pooling": "attention"},
        {"ser_study.study": "smoke"},
        fixed={"tapt": {"epochs": 3, "lr": 1e-4}, "encoder": "tiny"},
    )
    for fold in folds:
        tracking.log_fold(run_id, fold, CLASSES)
    tracking.finish_trial(run_id, make_record(trial_id, folds), data_fingerprint="data123", code_version="abc1234")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    study_dir = tmp_path_factory.mktemp("study")
    return layout.sqlite_uri(study_dir), study_dir


@pytest.fixture(scope="module")
def logged(store) -> str:
    uri, _ = store
    return log_trial(uri, "a1b2c3", [(0.60, 0.55), (0.64, 0.59)])


def test_a_local_store_is_sqlite_with_its_artifacts_beside_it(tmp_path):
    assert layout.sqlite_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert layout.sqlite_uri(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path.resolve()}/x.db"
    assert mlflow_store.sqlite_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db"
    assert mlflow_store.sqlite_path("sqlite:///:memory:") is None and mlflow_store.sqlite_path("http://127.0.0.1:5000") is None
    assert mlflow_store.artifact_location_for(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert mlflow_store.artifact_location_for("http://127.0.0.1:5000") is None


def test_trial_run_params_and_metrics(store, logged):
    uri, study_dir = store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.artifact_location == (study_dir.resolve() / "mlartifacts").as_uri()
    run = client.get_run(logged)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "trial-a1b2c3"
    params = run.data.params
    assert params["layer"] == "2" and params["clusters"] == "8" and params["mask_ratio"] == "0.2" and params["pooling"] == "attention"
    assert params["tapt.epochs"] == "3" and params["encoder"] == "tiny"
    assert params["protocol"].startswith("strict (validation")
    tags = run.data.tags
    assert tags["ser_study.kind"] == "trial" and tags["ser_study.trial_id"] == "a1b2c3" and tags["ser_study.study"] == "smoke"
    assert tags["strict"] == "true" and tags["data_fingerprint"] == "data123" and tags["code_version"] == "abc1234"
    assert tags["ser_study.status"] == "complete"
    metrics = run.data.metrics
    assert metrics["val_ua_mean"] == pytest.approx(0.62)
    assert metrics["test_ua_mean"] == pytest.approx(0.57)
    assert metrics["test_macro_f1_mean"] == pytest.approx(0.56)  # completed from the folds
    assert metrics["folds_done"] == 2
    running = client.get_metric_history(logged, "val_ua_running_mean")
    assert [(m.step, round(m.value, 4)) for m in sorted(running, key=lambda m: m.step)] == [(1, 0.60), (2, 0.62)]
    per_fold = client.get_metric_history(logged, "fold_test_ua")
    assert sorted((m.step, m.value) for m in per_fold) == [(1, 0.55), (2, 0.59)]
    assert {a.path for a in client.list_artifacts(logged, "confusion")} == {"confusion/fold-1_test.png", "confusion/fold-2_test.png"}


def test_nested_fold_runs(store, logged, tmp_path):
    uri, _ = store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{logged}'")
    assert sorted(run.info.run_name for run in children) == ["fold-1", "fold-2"]
    fold1 = next(run for run in children if run.info.run_name == "fold-1")
    assert fold1.info.status == "FINISHED"
    assert fold1.data.tags["built_phases"] == "cpt,finetune"
    assert fold1.data.tags["cached_phases"] == "tapt,embeddings,clustering"
    assert fold1.data.tags["ser_study.trial_id"] == "a1b2c3"
    assert fold1.data.params["test_session"] == "1" and fold1.data.params["train.count"] == "180"
    m = fold1.data.metrics
    assert m["val_ua"] == pytest.approx(0.60) and m["test_ua"] == pytest.approx(0.55)
    assert m["test_wa"] == pytest.approx(0.57) and m["test_macro_f1"] == pytest.approx(0.54)
    curve = client.get_metric_history(fold1.info.run_id, "tapt/val_ua")
    assert [(p.step, p.value) for p in sorted(curve, key=lambda p: p.step)] == [(0, 0.40), (1, 0.50), (2, 0.55)]
    assert len(client.get_metric_history(fold1.info.run_id, "finetune/train_loss")) == 1
    names = {a.path for a in client.list_artifacts(fold1.info.run_id)}
    assert {"confusion_test.png", "confusion_val.png", "fold.json"} <= names
    local = Path(client.download_artifacts(fold1.info.run_id, "confusion_test.png", str(tmp_path)))
    assert local.read_bytes()[:4] == b"\x89PNG"


def test_restarted_trial_reuses_its_runs(store, logged):
    uri, _ = store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    again = tracking.start_trial(uri, "smoke", "a1b2c3", {"layer": 2, "clusters": 8, "mask_ratio": 0.2, "pooling": "attention"})
    assert again == logged
    tracking.log_fold(again, make_fold(1, 0.60, 0.55), CLASSES)
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{logged}'")
    assert len(children) == 2
    tracking.finish_trial(again, make_record("a1b2c3", [make_fold(1, 0.60, 0.55), make_fold(2, 0.64, 0.59)]))
    assert client.get_run(logged).info.status == "FINISHED"


def test_failed_trial(store):
    uri, _ = store
    run_id = tracking.start_trial(uri, "smoke", "bad1", {"layer": 1, "clusters": 4, "mask_ratio": 0.3, "pooling": "average"})
    tracking.finish_trial(run_id, make_record("bad1", [make_fold(1, 0.5, 0.5)], status="error"))
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "boom"


def test_study_summary(store, logged, tmp_path):
    uri, study_dir = store
    record = make_record("a1b2c3", [make_fold(1, 0.60, 0.55), make_fold(2, 0.64, 0.59)])
    report = build_report([record], {**STUDY, "study_dir": str(study_dir)})
    files = write_report(report, tmp_path / "report")
    run_id = summary.log_study_summary(uri, "smoke", {**STUDY, "study_dir": str(study_dir)}, files, report=report)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "study-summary" and run.data.tags["ser_study.kind"] == "summary"
    assert run.data.metrics["best_val_ua_mean"] == pytest.approx(0.62)
    assert run.data.tags["best.trial_id"] == "a1b2c3" and run.data.tags["best.layer"] == "2"
    assert {"report/report.md", "report/table.csv", "report/confusion_best.png"} <= {a.path for a in client.list_artifacts(run_id, "report")}
    # a second call updates the same run; without a report, the best comes from the trial runs
    assert summary.log_study_summary(uri, "smoke", STUDY, files[:1]) == run_id
    run = client.get_run(run_id)
    assert run.data.tags["best.trial_id"] == "a1b2c3" and run.data.tags["best.run_id"] == logged
    assert run.data.metrics["best_test_ua_mean"] == pytest.approx(0.57)
    assert run.data.metrics["trials_complete"] >= 1
    experiment = client.get_experiment_by_name("smoke")
    assert len(client.search_runs([experiment.experiment_id], "tags.`ser_study.kind` = 'summary'")) == 1


def test_retries_on_locked_database():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert mlflow_store.with_retries(flaky, base_delay=0.001) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        mlflow_store.with_retries(lambda: (_ for _ in ()).throw(ValueError("other")), base_delay=0.001)


def test_tracker_swallows_errors_unless_asked(store):
    tracker = tracking.TrialTracker(store[0], "smoke")
    assert tracker.log_fold(make_fold(1, 0.5, 0.5), CLASSES) is None  # not started: nothing to do
    tracker.run_id = "does-not-exist"
    assert tracker.log_fold(make_fold(1, 0.5, 0.5), CLASSES) is None
    tracker.raise_errors = True
    with pytest.raises(Exception):
        tracker.log_fold(make_fold(1, 0.5, 0.5), CLASSES)


def _worker(uri: str, trial_id: str, seed: int) -> None:
    """One trial process: logs a 2-fold trial into the shared store."""
    log_trial(uri, trial_id, [(0.5 + 0.01 * seed, 0.4), (0.55, 0.45)])


def test_two_processes_log_concurrently(tmp_path):
    uri = layout.sqlite_uri(tmp_path / "study")  # a fresh store: the processes race to create it
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(uri, f"p{i}", i)) for i in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("ser_study.kind") == "trial"]
    folds = [r for r in runs if r.data.tags.get("ser_study.kind") == "fold"]
    assert sorted(r.data.tags["ser_study.trial_id"] for r in trials) == ["p0", "p1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(folds) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in folds} == {r.info.run_id for r in trials}


def test_a_trial_lost_with_an_interrupted_driver_leaves_the_records_and_mlflow(tmp_path):
    import json

    from study.io import layout
    from study.io.records import read_trial_records, set_aside_lost_records

    uri = layout.sqlite_uri(tmp_path)
    here, elsewhere = {tracking.STUDY_DIR_TAG: str(tmp_path)}, {tracking.STUDY_DIR_TAG: "/another/study"}
    kept = tracking.start_trial(uri, "smoke", "kept1", {"layer": 2}, here)
    lost = tracking.start_trial(uri, "smoke", "lost1", {"layer": 2}, here)  # opened its run, never wrote a record
    tracking.log_fold(lost, make_fold(1, 0.4, 0.3), CLASSES)
    other = tracking.start_trial(uri, "smoke", "other1", {"layer": 2}, elsewhere)  # another study of the same name
    (tmp_path / "trials").mkdir()
    for trial_id in ("kept1", "gone1"):
        (tmp_path / "trials" / f"{trial_id}.json").write_text(json.dumps(make_record(trial_id, [make_fold(1, 0.5, 0.5)], status="error")))

    moved = set_aside_lost_records(tmp_path, {"kept1", "another"})
    assert [r["trial_id"] for r in moved] == ["gone1"]
    assert [r["trial_id"] for r in read_trial_records(tmp_path)] == ["kept1"]
    assert json.loads(Path(layout.lost_trial_record(tmp_path, "gone1")).read_text())["trial_id"] == "gone1"

    assert summary.retire_lost_trials(uri, "smoke", str(tmp_path), {"kept1"}) == ["lost1"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    active = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert kept in active and other in active and lost not in active
    assert not [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mlflow.parentRunId") == lost]
    assert client.get_run(lost).info.lifecycle_stage == "deleted" and client.get_run(lost).data.tags["ser_study.status"] == "lost"
    assert summary.retire_lost_trials(uri, "smoke", str(tmp_path), {"kept1"}) == []
