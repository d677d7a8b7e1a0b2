"""Where everything of a study lives: one function per artifact of the study directory.

    <study_dir>/study.yaml             the resolved study file (what `resume` reads)
    <study_dir>/tune/                  Ray Tune's experiment state
    <study_dir>/cache/<phase>/<key>/   phase artifacts shared by trials and later studies
    <study_dir>/trials/<trial_id>.json one record per trial (params, folds, metrics)
    <study_dir>/mlflow.db              the local MLflow store (SQLite); artifacts in mlartifacts/
    <study_dir>/report/                the report's tables and plots
"""

from __future__ import annotations

from pathlib import Path

TUNE_NAME = "tune"


def study_file(study_dir: str | Path) -> Path:
    return Path(study_dir) / "study.yaml"


def tune_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / TUNE_NAME


def cache_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / "cache"


def trials_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / "trials"


def trial_record(study_dir: str | Path, trial_id: str) -> Path:
    return trials_dir(study_dir) / f"{trial_id}.json"


def report_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / "report"


def ray_train_dir(study_dir: str | Path) -> Path:
    """Ray Train's run storage (checkpoints of training phases) for the Ray executor."""
    return Path(study_dir) / "ray_train"
