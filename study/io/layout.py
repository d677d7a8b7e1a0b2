"""Where everything of a study lives: one function per artifact of the study directory.

    <study_dir>/study.yaml             the resolved study file (what `resume` reads)
    <study_dir>/tune/                  Ray Tune's experiment state
    <study_dir>/cache/<phase>/<key>/   phase artifacts shared by trials (and by other studies, with
                                       storage.cache_dir: then <study_dir>/cache.location names it)
    <study_dir>/cache/events/          one small file per cache hit or build (accounting)
    <study_dir>/trials/<trial_id>.json one record per trial (params, folds, metrics)
    <study_dir>/baselines/<name>.json  one record per baseline, as a trial's
    <study_dir>/mlflow.db              the local MLflow store (SQLite); artifacts in mlartifacts/
    <study_dir>/optuna.db              the search's Optuna study (SQLite; a local study directory only)
    <study_dir>/report/                the report's tables and plots

A study directory is a local path or a URI (``s3://bucket/prefix``, ``gs://``,
``file:///abs/path``; see :mod:`study.io.storage`). For a local directory every
function returns a :class:`~pathlib.Path`; for a URI, a ``str`` URI joined with
``/`` (before any ``?query``). Read and write what they name through
:mod:`study.io.storage`, which takes either. A URI that went through ``Path()``
(``s3:/bucket/x``) is repaired, not taken for a local folder named ``s3:``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from study.io import storage
from study.errors import UserError

TUNE_NAME = "tune"
STUDY_FILE = "study.yaml"
#: The local MLflow store (SQLite) and its artifact folder.
DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
#: The Optuna study of the search (RDB storage on SQLite).
OPTUNA_FILE = "optuna.db"

#: A local path or a URI string.
StudyPath = Union[Path, str]


def _join(study_dir: str | Path, *parts: str) -> StudyPath:
    location = storage.normalize(study_dir)
    return storage.join(location, *parts) if storage.is_uri(location) else Path(location).joinpath(*parts)


def location(study_dir: str | Path) -> StudyPath:
    """The study directory itself: a ``Path`` if local, the (repaired) URI string if remote."""
    return _join(study_dir)


def is_remote(study_dir: str | Path) -> bool:
    """True for a study directory on object storage (any URI with a scheme, ``file://`` included)."""
    return storage.is_uri(study_dir)


def study_file(study_dir: str | Path) -> StudyPath:
    """The resolved study file (what ``resume`` and the trials read)."""
    return _join(study_dir, STUDY_FILE)


def sqlite_uri(location: str | Path) -> str:
    """The SQLite MLflow store of a local directory (``<dir>/mlflow.db``) or ``*.db`` file, as an absolute ``sqlite:///`` URI."""
    path = Path(os.path.abspath(os.path.expanduser(str(location))))
    return f"sqlite:///{path if path.suffix == '.db' else path / DB_FILE}"


def optuna_storage_url(study_dir: str | Path) -> str | None:
    """The Optuna storage of a local study directory (``sqlite:///<study_dir>/optuna.db``); None for a remote one,
    where SQLite cannot live (its searcher state then travels in Tune's checkpoint only)."""
    if is_remote(study_dir):
        return None
    return f"sqlite:///{Path(os.path.abspath(os.path.expanduser(str(study_dir)))) / OPTUNA_FILE}"


def tune_dir(study_dir: str | Path) -> StudyPath:
    return _join(study_dir, TUNE_NAME)


def cache_pointer(study_dir: str | Path) -> StudyPath:
    """The file naming a phase cache shared with other studies (``storage.cache_dir``), if the study has one."""
    return _join(study_dir, "cache.location")


def own_cache_dir(study_dir: str | Path) -> StudyPath:
    """The phase cache inside the study directory (no I/O): the default of :func:`cache_dir`."""
    return _join(study_dir, "cache")


def cache_dir(study_dir: str | Path) -> StudyPath:
    """The study's phase cache: the shared cache its pointer file names, else :func:`own_cache_dir` (reads storage)."""
    pointer = cache_pointer(study_dir)
    if storage.is_file(pointer):
        shared = storage.read_text(pointer).strip()
        return storage.normalize(shared) if storage.is_uri(shared) else Path(shared)
    return own_cache_dir(study_dir)


def artifact_location(cache_root: str | Path, phase: str, key: str) -> StudyPath:
    """Where a phase cache keeps an artifact for good: ``<cache_root>/<phase>/<key>`` (a URI for a remote cache)."""
    return _join(cache_root, phase, key)


def baselines_dir(study_dir: str | Path) -> StudyPath:
    return _join(study_dir, "baselines")


def baseline_record(study_dir: str | Path, name: str) -> StudyPath:
    """The record of the baseline ``name`` (``finetune``, ``tapt``, ``egemaps``): like a trial's, outside the search."""
    return _join(study_dir, "baselines", f"{name}.json")


def trials_dir(study_dir: str | Path) -> StudyPath:
    return _join(study_dir, "trials")


def trial_record(study_dir: str | Path, trial_id: str) -> StudyPath:
    return _join(study_dir, "trials", f"{trial_id}.json")


def lost_trial_record(study_dir: str | Path, trial_id: str) -> StudyPath:
    """Where the record of a trial that Tune's saved state does not know is set aside (see ``study.tune.trial``)."""
    return _join(study_dir, "trials", "lost", f"{trial_id}.json")


def report_dir(study_dir: str | Path) -> StudyPath:
    return _join(study_dir, "report")


def ray_train_dir(study_dir: str | Path) -> StudyPath:
    """Ray Train's run storage (checkpoints of training phases) for the Ray executor."""
    return _join(study_dir, "ray_train")


def require_study_dir(study_dir: str | Path) -> StudyPath:
    """``study_dir`` as a location if it holds a study (its ``study.yaml``); else a :class:`UserError` saying what to do."""
    study_dir = location(study_dir)  # a URI stays a URI (even one that went through Path())
    try:
        present = storage.is_file(study_file(study_dir))
    except (OSError, ValueError) as err:  # object storage: no credentials, no bucket, a malformed URI
        raise UserError(f"cannot read the study directory {study_dir} ({err})") from None
    if not present:
        raise UserError(f"{study_dir} is not a study directory ({storage.name(study_file(study_dir))} is missing); start one with `ser-study run STUDY.yaml`")
    return study_dir
