"""The study report built from synthetic trial records: table, best configuration, files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from study.report.files import write_report
from study.report.model import Report, best_trial, build_report
from study.report.text import format_report

CLASSES = ["neu", "hap", "ang", "sad"]
STRICT = {"strict": True, "description": "strict (validation: stratified; the test session enters no phase but the test)"}
LOOSE = {"strict": False, "description": "NOT strict: test-session audio (no labels) in embeddings, k-means and CPT"}


def make_fold(session: int, val_ua: float, test_ua: float, test_wa: float, f1: float | None = None) -> dict:
    """A fold record with a plausible 4x4 confusion matrix."""
    confusion = [[8, 1, 1, 0], [1, 7, 1, 1], [0, 2, 7, 1], [1, 0, 1, 8]]
    return {
        "test_session": session,
        "seconds": 10.0 + session,
        "strict": True,
        "val": {"ua": val_ua, "wa": val_ua + 0.01, "macro_f1": val_ua - 0.01, "confusion": confusion, "count": 40},
        "test": {"ua": test_ua, "wa": test_wa, "macro_f1": f1 if f1 is not None else test_ua - 0.01, "confusion": confusion, "count": 40},
        "fold": {"test_session": session, "train": {"count": 180, "fingerprint": "abc"}, "unsupervised_audio": "train"},
        "artifacts": {"tapt": "k1", "embeddings": "k2", "clustering": "k3", "cpt": "k4", "finetune": "k5"},
        "built": ["cpt", "finetune"],
        "history": {"tapt": [{"epoch": 0, "train_loss": 1.3, "val_ua": 0.4}, {"epoch": 1, "train_loss": 1.1, "val_ua": 0.5}]},
    }


def make_trial(
    trial_id: str,
    layer: int,
    clusters: int,
    pooling: str,
    scores: list[tuple[float, float, float]],
    mask_ratio: float = 0.2,
    status: str = "complete",
    protocol: dict | None = None,
    finished: float = 1.0,
    folds_total: int | None = None,
) -> dict:
    """A trial record whose folds have (val UA, test UA, test WA) = ``scores``."""
    folds = [make_fold(i + 1, *score) for i, score in enumerate(scores)]
    record = {
        "trial_id": trial_id,
        "params": {"layer": layer, "clusters": clusters, "mask_ratio": mask_ratio, "pooling": pooling},
        "status": status,
        "error": "CUDA out of memory" if status == "error" else None,
        "protocol": protocol or STRICT,
        "classes": CLASSES,
        "folds": folds,
        "folds_done": len(folds),
        "folds_total": folds_total if folds_total is not None else len(folds),
        "started": 1700000000.0,
        "finished": 1700000000.0 + finished,
    }
    if folds:
        vals = [s[0] for s in scores]
        tests = [s[1] for s in scores]
        was = [s[2] for s in scores]
        record["metrics"] = {
            "val_ua_mean": sum(vals) / len(vals),
            "val_ua_std": _std(vals),
            "test_ua_mean": sum(tests) / len(tests),
            "test_ua_std": _std(tests),
            "test_wa_mean": sum(was) / len(was),
            "test_wa_std": _std(was),
        }
    else:
        record["metrics"] = {}
    return record


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def study_meta(mode: str = "max", metric: str = "val_ua_mean", protocol: dict | None = None) -> dict:
    return {
        "name": "smoke",
        "study_dir": "/tmp/smoke",
        "objective": {"metric": metric, "mode": mode},
        "protocol": protocol or STRICT,
        "data_fingerprint": "data123",
        "code_version": "abc1234",
    }


@pytest.fixture
def trials() -> list[dict]:
    return [
        make_trial("t1", 9, 50, "attention", [(0.70, 0.60, 0.62), (0.72, 0.64, 0.66)], finished=10),
        make_trial("t2", 9, 50, "average", [(0.65, 0.58, 0.60), (0.67, 0.60, 0.61)], finished=20),
        make_trial("t3", 6, 100, "attention", [(0.60, 0.70, 0.71), (0.62, 0.72, 0.73)], finished=30),
        make_trial("t4", 6, 50, "attention", [(0.80, 0.50, 0.52)], status="partial", folds_total=2, finished=40),
        make_trial("t5", 11, 50, "average", [], status="error", folds_total=2, finished=50),
    ]


def test_table_rows_columns_and_cells(trials):
    report = build_report(trials, study_meta())
    assert report.row_fields == ("layer", "clusters")
    assert report.poolings == ["attention", "average"]
    assert [row.key for row in report.table] == [(6, 50), (6, 100), (9, 50)]
    cell = report.table[2].cells["attention"]
    # test UA 60/64 -> 62.0 ± 2.8; test WA 62/66 -> 64.0 ± 2.8
    assert cell.text() == "62.0 ± 2.8 / 64.0 ± 2.8"
    assert report.table[2].cells["average"].text() == "59.0 ± 1.4 / 60.5 ± 0.7"
    # the partial trial shows, marked; the errored trial has no folds and no cell
    assert report.table[0].cells["attention"].text() == "50.0 ± 0.0 / 52.0 ± 0.0 *"
    text = format_report(report)
    assert "| layer | K | attention | average |" in text
    assert "| 9 | 50 | 62.0 ± 2.8 / 64.0 ± 2.8 | 59.0 ± 1.4 / 60.5 ± 0.7 |" in text
    assert "| 6 | 100 | 71.0 ± 1.4 / 72.0 ± 1.4 | - |" in text


def test_best_by_objective_only_complete(trials):
    report = build_report(trials, study_meta())
    # t4 (partial) has the highest val UA but is excluded; t1 has the best complete val UA
    assert report.best is not None and report.best.trial_id == "t1"
    text = format_report(report)
    assert "trial `t1`" in text
    assert "layer 9, K 50, mask 0.2, attention pooling" in text
    assert "| 1 | 70.0 | 60.0 | 62.0 | 59.0 | 40 |" in text
    assert "| 2 | 72.0 | 64.0 | 66.0 | 63.0 | 40 |" in text
    assert "Protocol: strict (validation: stratified" in text
    assert "NOT strict" not in text
    # partial and error trials are listed
    assert "`t4` | partial" in text and "`t5` | error" in text and "CUDA out of memory" in text


def test_best_mode_min_and_other_metric(trials):
    assert build_report(trials, study_meta(mode="min")).best.trial_id == "t3"
    assert build_report(trials, study_meta(metric="test_ua_mean")).best.trial_id == "t3"
    assert build_report(trials, study_meta(metric="test_ua_mean", mode="min")).best.trial_id == "t2"


def test_objective_computed_from_folds_when_not_recorded(trials):
    for trial in trials:
        trial["metrics"] = {}
    report = build_report(trials, study_meta(metric="test_macro_f1_mean"))
    assert report.best.trial_id == "t3"
    assert report.best.metrics["val_ua_mean"] == pytest.approx(0.61)


def test_mask_ratio_column_only_when_it_varies(trials):
    assert "mask_ratio" not in build_report(trials, study_meta()).row_fields
    trials.append(make_trial("t6", 9, 50, "attention", [(0.50, 0.40, 0.41), (0.52, 0.42, 0.43)], mask_ratio=0.4, finished=60))
    report = build_report(trials, study_meta())
    assert report.row_fields == ("layer", "clusters", "mask_ratio")
    assert [row.key for row in report.table] == [(6, 50, 0.2), (6, 100, 0.2), (9, 50, 0.2), (9, 50, 0.4)]
    text = format_report(report)
    assert "| layer | K | mask ratio | attention | average |" in text
    assert "| 9 | 50 | 0.4 | 41.0 ± 1.4 / 42.0 ± 1.4 | - |" in text


def test_duplicate_cell_prefers_best_complete(trials):
    trials.append(make_trial("t1b", 9, 50, "attention", [(0.90, 0.10, 0.10), (0.90, 0.10, 0.10)], finished=60))
    report = build_report(trials, study_meta())
    cell = report.table[2].cells["attention"]
    assert cell.trial_id == "t1b" and cell.candidates == 2
    assert "several trials share a cell" in format_report(report)


def test_single_fold_has_zero_std():
    report = build_report([make_trial("a", 9, 50, "attention", [(0.7, 0.6, 0.65)])], study_meta())
    assert report.table[0].cells["attention"].text() == "60.0 ± 0.0 / 65.0 ± 0.0"
    assert report.best.trial_id == "a"


def test_not_strict_flag():
    trials = [
        make_trial("a", 9, 50, "attention", [(0.7, 0.6, 0.65)]),
        make_trial("b", 9, 50, "average", [(0.7, 0.6, 0.65)], protocol=LOOSE),
    ]
    report = build_report(trials, study_meta())
    assert not report.strict and report.not_strict_trials == ["b"]
    text = format_report(report)
    assert "WARNING: NOT strict protocol" in text.splitlines()[2]
    assert "test-session audio" in text
    assert build_report(trials[:1], study_meta()).strict


def test_no_complete_trials(tmp_path):
    trials = [
        make_trial("p", 9, 50, "attention", [(0.7, 0.6, 0.65)], status="partial", folds_total=5),
        make_trial("e", 6, 50, "attention", [], status="error"),
    ]
    report = build_report(trials, study_meta())
    assert report.best is None
    assert any("No complete trials" in m for m in report.messages)
    text = format_report(report)
    assert "No complete trials yet" in text and "None: no complete trial" in text
    written = {p.name for p in write_report(report, tmp_path)}
    assert {"report.md", "table.csv", "folds.csv", "heatmap_attention.png", "history.png"} <= written
    assert "folds_best.png" not in written and "confusion_best.png" not in written


def test_empty_study(tmp_path):
    report = build_report([], study_meta())
    written = {p.name for p in write_report(report, tmp_path)}
    assert written == {"report.md", "table.csv", "folds.csv"}
    assert "No trials were recorded" in (tmp_path / "report.md").read_text()


def test_files_written(trials, tmp_path):
    report = build_report(trials, study_meta())
    paths = write_report(report, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {
        "report.md",
        "table.csv",
        "folds.csv",
        "heatmap_attention.png",
        "heatmap_average.png",
        "folds_best.png",
        "confusion_best.png",
        "history.png",
    }
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
    assert (tmp_path / "out" / "report.md").read_text(encoding="utf-8") == format_report(report)

    table = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [row["trial_id"] for row in table] == ["t1", "t2", "t3", "t4", "t5"]
    assert table[0]["layer"] == "9" and table[0]["pooling"] == "attention" and table[0]["mask_ratio"] == "0.2"
    assert float(table[0]["test_ua_mean"]) == pytest.approx(0.62)
    assert table[4]["status"] == "error" and table[4]["test_ua_mean"] == ""

    folds = list(csv.DictReader((tmp_path / "out" / "folds.csv").open()))
    assert len(folds) == 7
    assert folds[0]["trial_id"] == "t1" and folds[0]["test_session"] == "1"
    assert float(folds[0]["test_ua"]) == pytest.approx(0.60)
    assert folds[0]["built"] == "cpt;finetune" and folds[0]["cached"] == "tapt;embeddings;clustering"


def test_report_is_a_dataclass(trials):
    report = build_report(trials, study_meta())
    assert isinstance(report, Report)
    assert report.counts() == {"complete": 3, "partial": 1, "error": 1}


def test_bad_mode_is_rejected(trials):
    with pytest.raises(ValueError, match="mode"):
        build_report(trials, study_meta(mode="maximize"))


def test_write_report_returns_paths_in_dir(trials, tmp_path):
    paths = write_report(build_report(trials, study_meta()), tmp_path)
    assert all(isinstance(p, Path) and p.parent == tmp_path for p in paths)


def test_best_trial_helper(trials):
    assert best_trial(trials)["trial_id"] == "t1"
    assert best_trial(trials, "val_ua_mean", "min")["trial_id"] == "t3"
    assert best_trial(trials[3:]) is None  # partial and error only
