"""MLflow tracking of a study: one run per trial, a nested run per fold, one summary run.

Used from inside Ray Tune trial processes, so every call is self-contained:
it takes the tracking URI (or finds it from the run id it was given by
:func:`start_trial` in the same process), opens its own client and retries
when SQLite answers "database is locked" (several trial processes log into
one local store at once).

Layout in MLflow::

    experiment <study name>   (artifact location <study_dir>/mlartifacts for a local store)
      trial run   tags ser_study.kind=trial, ser_study.trial_id; params layer, clusters,
                  mask_ratio, pooling, the flattened fixed settings, protocol;
                  metrics val_ua_running_mean (step = folds done), fold_* (step = test session),
                  the aggregate metrics at the end; tag strict
        fold run  "fold-<session>", tag mlflow.parentRunId; metrics val_ua, test_ua, test_wa,
                  test_macro_f1, the phases' curves ("tapt/val_ua" at step = epoch);
                  artifacts confusion_test.png, fold.json; tags built_phases, cached_phases
      summary run "study-summary", tag ser_study.kind=summary; the report files, best metrics

A local study directory gets a SQLite store ``<study_dir>/mlflow.db`` (MLflow
3 refuses the old ``./mlruns`` file store); a study directory on object
storage needs an explicit URI (the head node's MLflow server).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import unquote, urlparse

from study.errors import UserError
from study.report import Report, confusion_figure, trial_metrics, write_png

logger = logging.getLogger(__name__)

T = TypeVar("T")

KIND_TAG = "ser_study.kind"
TRIAL_ID_TAG = "ser_study.trial_id"
STUDY_TAG = "ser_study.study"
STATUS_TAG = "ser_study.status"
#: The study directory a trial run belongs to (experiments are named after studies, and names can repeat).
STUDY_DIR_TAG = "ser_study.study_dir"
SESSION_TAG = "ser_study.test_session"
PARENT_TAG = "mlflow.parentRunId"
SUMMARY_RUN_NAME = "study-summary"
DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
SEARCHED = ("layer", "clusters", "mask_ratio", "pooling")
PHASE_ORDER = ("tapt", "embeddings", "clustering", "cpt", "finetune")

# MLflow's own limits (mlflow.utils.validation).
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000
_MAX_TAG_LENGTH = 8000
_LOCK_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_run_uris: dict[str, str] = {}


# ----------------------------------------------------------------------------
# URIs and stores
# ----------------------------------------------------------------------------


def _has_scheme(text: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text)) and not re.match(r"^[A-Za-z]:[\\/]", text)


def _sqlite_uri_for_dir(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve() / DB_FILE}"


def tracking_uri_for(study_dir: str, explicit: str | None = None) -> str:
    """The MLflow tracking URI of a study.

    ``explicit`` wins: a server or database URI (``http://``, ``sqlite:///``,
    ``postgresql://``, ...) is returned as given; a local directory (plain path
    or ``file://``) becomes ``sqlite:///<abs dir>/mlflow.db`` and a local
    ``*.db`` file ``sqlite:///<abs file>``. Without ``explicit``, a local study
    directory gets ``sqlite:///<abs study_dir>/mlflow.db``; a study directory on
    object storage (``s3://`` ...) has no local store and raises
    :class:`~study.errors.UserError`.
    """
    if explicit:
        if explicit.startswith("file:"):
            explicit = unquote(urlparse(explicit).path)
        elif _has_scheme(explicit):
            return explicit
        path = Path(explicit).expanduser()
        if path.suffix == ".db":
            return f"sqlite:///{path.resolve()}"
        return _sqlite_uri_for_dir(path)
    if study_dir.startswith("file:"):
        study_dir = unquote(urlparse(study_dir).path)
    elif _has_scheme(study_dir):
        raise UserError(
            f"the study directory {study_dir} is not local, so it holds no MLflow store: "
            "give a tracking URI (for a cluster, the head node's MLflow server, e.g. http://127.0.0.1:5000)"
        )
    return _sqlite_uri_for_dir(study_dir)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(path)


def artifact_location_for(uri: str) -> str | None:
    """The fixed artifact location of a local store: ``<dir of mlflow.db>/mlartifacts`` (None for servers)."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / ARTIFACT_DIR).as_uri()


def _is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(message in text for message in _LOCK_MESSAGES)


def with_retries(fn: Callable[..., T], *args: Any, attempts: int = 8, base_delay: float = 0.2, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered exponential backoff while SQLite reports a lock.

    SQLite already waits up to its busy timeout (5 s) for a lock; this covers
    the cases where that is not enough (several trial processes committing at
    once). Other errors are raised at once.
    """
    attempt = 1
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException or SQLAlchemy OperationalError, depending on the path
            if not _is_locked_error(exc) or attempt >= attempts:
                raise
            delay = min(5.0, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            logger.info("MLflow store is locked (%s); retry %d/%d in %.2f s", getattr(fn, "__name__", "call"), attempt, attempts - 1, delay)
            time.sleep(delay)
            attempt += 1


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive inter-process lock beside a local SQLite store (a no-op for other stores)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def get_client(uri: str):
    """A cached :class:`mlflow.MlflowClient` for ``uri``.

    Opening a fresh SQLite store creates its tables; that happens under a file
    lock, so two trial processes opening a new store at once do not race.
    """
    with _clients_lock:
        client = _clients.get(uri)
        if client is not None:
            return client
        from mlflow import MlflowClient

        with _store_lock(uri):
            client = with_retries(MlflowClient, tracking_uri=uri)
            with_retries(client.search_experiments, max_results=1)
        _clients[uri] = client
        return client


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (race-safe across processes).

    ``artifact_location`` defaults to :func:`artifact_location_for` (``<study_dir>/mlartifacts``
    for a local store). A deleted experiment of that name is restored.
    """
    from mlflow.exceptions import MlflowException

    client = get_client(uri)
    location = artifact_location or artifact_location_for(uri)
    with _store_lock(uri):
        experiment = with_retries(client.get_experiment_by_name, name)
        if experiment is None:
            try:
                return with_retries(client.create_experiment, name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                logger.debug("experiment %s was created by another process", name)
                experiment = with_retries(client.get_experiment_by_name, name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            logger.warning("experiment %s was deleted; restoring it", name)
            with_retries(client.restore_experiment, experiment.experiment_id)
        return experiment.experiment_id


def _uri_of(run_id: str, uri: str | None) -> str:
    if uri:
        return uri
    if run_id in _run_uris:
        return _run_uris[run_id]
    import mlflow

    return mlflow.get_tracking_uri()


# ----------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"tapt": {"epochs": 3}}`` -> ``{"tapt.epochs": 3}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _key(name: str) -> str:
    """A valid MLflow param/metric/tag key."""
    return re.sub(r"[^A-Za-z0-9_\-./ :]", "_", str(name))[:250] or "_"


def _text(value: Any, limit: int) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _log_batch(client: Any, run_id: str, metrics: Sequence[Any] = (), params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> None:
    from mlflow.entities import Param, RunTag

    param_list = [Param(_key(k), _text(v, _MAX_PARAM_LENGTH)) for k, v in (params or {}).items()]
    tag_list = [RunTag(_key(k), _text(v, _MAX_TAG_LENGTH)) for k, v in (tags or {}).items()]
    for chunk in _chunks(param_list, _MAX_PARAMS_TAGS_PER_BATCH):
        with_retries(client.log_batch, run_id, params=list(chunk), synchronous=True)
    for chunk in _chunks(tag_list, _MAX_PARAMS_TAGS_PER_BATCH):
        with_retries(client.log_batch, run_id, tags=list(chunk), synchronous=True)
    for chunk in _chunks(list(metrics), _MAX_METRICS_PER_BATCH):
        with_retries(client.log_batch, run_id, metrics=list(chunk), synchronous=True)


def _log_params_once(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params not yet on the run; a param already there with another value is kept (and warned about)."""
    existing = with_retries(client.get_run, run_id).data.params
    new: dict[str, Any] = {}
    for key, value in params.items():
        name, text = _key(key), _text(value, _MAX_PARAM_LENGTH)
        if name not in existing:
            new[name] = text
        elif existing[name] != text:
            logger.warning("run %s already has param %s=%r; not replacing it with %r", run_id, name, existing[name], text)
    _log_batch(client, run_id, params=new)


def _metric(key: str, value: float, step: int = 0, timestamp: int | None = None):
    from mlflow.entities import Metric

    return Metric(_key(key), float(value), timestamp if timestamp is not None else int(time.time() * 1000), int(step))


def _search(client: Any, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    return list(with_retries(client.search_runs, [experiment_id], filter_string=filter_string, max_results=1000, order_by=order_by))


def _quote(value: Any) -> str:
    text = str(value)
    if "'" in text:
        raise ValueError(f"a quote in an MLflow search value: {text!r}")
    return f"'{text}'"


# ----------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------


def start_trial(
    uri: str,
    experiment: str,
    trial_id: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    *,
    fixed: Mapping[str, Any] | None = None,
    artifact_location: str | None = None,
) -> str:
    """Open (or reopen) the MLflow run of trial ``trial_id``; return its run id.

    Params are the searched ``params`` (layer, clusters, mask_ratio, pooling)
    plus the flattened ``fixed`` settings (``tapt.epochs`` ...). Tags are
    ``ser_study.kind=trial``, ``ser_study.trial_id`` and ``tags``. A trial that
    Tune restarts (same trial id) reuses its run instead of adding another.
    """
    client = get_client(uri)
    experiment_id = ensure_experiment(uri, experiment, artifact_location)
    all_params = flatten(dict(fixed or {}))
    all_params.update(flatten(dict(params)))
    all_tags = {**{str(k): v for k, v in (tags or {}).items()}, KIND_TAG: "trial", TRIAL_ID_TAG: str(trial_id), STATUS_TAG: "running"}
    existing = _search(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial' AND tags.`{TRIAL_ID_TAG}` = {_quote(trial_id)}", ["attributes.start_time DESC"])
    if existing:
        run_id = existing[0].info.run_id
        logger.info("trial %s: reopening MLflow run %s", trial_id, run_id)
        with_retries(client.update_run, run_id, status="RUNNING")
    else:
        name = f"trial-{trial_id}"
        run_id = with_retries(client.create_run, experiment_id, run_name=name, tags={k: _text(v, _MAX_TAG_LENGTH) for k, v in all_tags.items()}).info.run_id
        logger.info("trial %s: MLflow run %s in experiment %s", trial_id, run_id, experiment)
    _run_uris[run_id] = uri
    _log_params_once(client, run_id, all_params)
    _log_batch(client, run_id, tags=all_tags)
    return run_id


def _history_metrics(history: Mapping[str, Any], timestamp: int) -> list[Any]:
    """Each phase's per-epoch values as step metrics ``<phase>/<name>`` at ``step = epoch``."""
    metrics = []
    for phase, entries in (history or {}).items():
        for index, entry in enumerate(entries or []):
            if not isinstance(entry, Mapping):
                continue
            step = entry.get("epoch", index)
            step = int(step) if _finite(step) else index
            for name, value in entry.items():
                if name != "epoch" and _finite(value):
                    metrics.append(_metric(f"{phase}/{name}", value, step, timestamp))
    return metrics


def _phases(fold: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    built = [str(p) for p in fold.get("built") or []]
    known = list(fold.get("artifacts") or {})
    ordered = [p for p in PHASE_ORDER if p in known] + [p for p in known if p not in PHASE_ORDER]
    return built, [p for p in ordered if p not in built]


def _fold_artifacts(directory: Path, fold: Mapping[str, Any], classes: Sequence[str]) -> list[Path]:
    written = []
    for split in ("test", "val"):
        matrix = (fold.get(split) or {}).get("confusion")
        if matrix:
            title = f"session {fold.get('test_session', '?')}: {split} ({(fold.get(split) or {}).get('count', '?')} utterances)"
            written.append(write_png(confusion_figure(matrix, classes, title), directory / f"confusion_{split}.png"))
    (directory / "fold.json").write_text(json.dumps(fold, indent=2, sort_keys=True, default=str), encoding="utf-8")
    written.append(directory / "fold.json")
    return written


def _update_running(client: Any, run_id: str, experiment_id: str) -> int:
    """Log the running means over the parent's finished fold runs at ``step = folds done``."""
    children = _search(client, experiment_id, f"tags.`{PARENT_TAG}` = {_quote(run_id)} AND tags.`{KIND_TAG}` = 'fold' AND attributes.status = 'FINISHED'")
    done = len(children)
    if not done:
        return 0
    timestamp = int(time.time() * 1000)
    metrics = [_metric("folds_done", done, done, timestamp)]
    for name in ("val_ua", "test_ua", "test_wa"):
        values = [child.data.metrics[name] for child in children if name in child.data.metrics]
        if values:
            metrics.append(_metric(f"{name}_running_mean", sum(values) / len(values), done, timestamp))
    _log_batch(client, run_id, metrics)
    return done


def log_fold(run_id: str, fold_record: Mapping[str, Any], classes: Sequence[str], *, uri: str | None = None) -> str:
    """Log one finished fold of trial run ``run_id`` as a nested run; return the fold run's id.

    The fold run (``fold-<session>``, tag ``mlflow.parentRunId``) gets metrics
    val/test UA, WA, macro-F1 and counts, the phases' curves from ``history``
    as step metrics, ``confusion_test.png``/``confusion_val.png`` and
    ``fold.json`` as artifacts, tags ``built_phases``/``cached_phases`` and
    the phase artifact keys. The parent gets ``fold_<metric>`` at
    ``step = test session`` and ``<metric>_running_mean`` at ``step = folds done``.
    A fold already logged as finished (a restarted trial) is not logged twice.
    """
    uri = _uri_of(run_id, uri)
    client = get_client(uri)
    parent = with_retries(client.get_run, run_id)
    experiment_id = parent.info.experiment_id
    session = fold_record.get("test_session", "?")
    timestamp = int(time.time() * 1000)

    existing = _search(client, experiment_id, f"tags.`{PARENT_TAG}` = {_quote(run_id)} AND tags.`{KIND_TAG}` = 'fold' AND tags.`{SESSION_TAG}` = {_quote(session)}")
    finished = [run for run in existing if run.info.status == "FINISHED"]
    if finished:
        fold_run_id = finished[0].info.run_id
        logger.info("fold %s of run %s is already logged (%s)", session, run_id, fold_run_id)
    else:
        built, cached = _phases(fold_record)
        tags = {
            PARENT_TAG: run_id,
            KIND_TAG: "fold",
            TRIAL_ID_TAG: parent.data.tags.get(TRIAL_ID_TAG, ""),
            SESSION_TAG: str(session),
            "built_phases": ",".join(built),
            "cached_phases": ",".join(cached),
            "strict": str(bool(fold_record.get("strict", True))).lower(),
        }
        tags.update({f"artifact.{phase}": key for phase, key in (fold_record.get("artifacts") or {}).items()})
        if existing:
            fold_run_id = existing[0].info.run_id
            with_retries(client.update_run, fold_run_id, status="RUNNING")
        else:
            fold_run_id = with_retries(client.create_run, experiment_id, run_name=f"fold-{session}", tags={k: _text(v, _MAX_TAG_LENGTH) for k, v in tags.items()}).info.run_id
        _log_batch(client, fold_run_id, tags=tags)
        split_info = {k: v for k, v in flatten(dict(fold_record.get("fold") or {})).items() if not isinstance(v, (list, tuple, dict))}
        _log_params_once(client, fold_run_id, {"test_session": session, **split_info})
        metrics = []
        for split in ("val", "test"):
            values = fold_record.get(split) or {}
            for name in ("ua", "wa", "macro_f1", "count"):
                if _finite(values.get(name)):
                    metrics.append(_metric(f"{split}_{name}", values[name], 0, timestamp))
        if _finite(fold_record.get("seconds")):
            metrics.append(_metric("seconds", fold_record["seconds"], 0, timestamp))
        metrics += _history_metrics(fold_record.get("history") or {}, timestamp)
        _log_batch(client, fold_run_id, metrics)
        with tempfile.TemporaryDirectory(prefix="ser-fold-") as tmp:
            files = _fold_artifacts(Path(tmp), fold_record, classes)
            with_retries(client.log_artifacts, fold_run_id, tmp)
            confusion = Path(tmp) / "confusion_test.png"
            if confusion in files:
                renamed = Path(tmp) / f"fold-{session}_test.png"
                os.replace(confusion, renamed)
                with_retries(client.log_artifact, run_id, str(renamed), "confusion")
        with_retries(client.set_terminated, fold_run_id, "FINISHED")

    step = int(session) if _finite(session) else 0
    parent_metrics = [
        _metric(f"fold_{split}_{name}", (fold_record.get(split) or {})[name], step, timestamp)
        for split, name in (("val", "ua"), ("test", "ua"), ("test", "wa"), ("test", "macro_f1"))
        if _finite((fold_record.get(split) or {}).get(name))
    ]
    _log_batch(client, run_id, parent_metrics)
    _update_running(client, run_id, experiment_id)
    return fold_run_id


def finish_trial(
    run_id: str,
    record: Mapping[str, Any],
    *,
    uri: str | None = None,
    data_fingerprint: str | None = None,
    code_version: str | None = None,
) -> None:
    """Close trial run ``run_id`` with the trial record's outcome.

    Logs the aggregate metrics (``val_ua_mean`` ...; completed from the folds
    where the record lacks them), ``folds_done``/``folds_total``, param
    ``protocol`` (its description), tags ``strict``, ``data_fingerprint``,
    ``code_version`` (from the record or the arguments), ``ser_study.status``
    and ``error``. The run ends FINISHED for a complete or partial trial (one a
    scheduler stopped early) and FAILED for a trial that errored.
    """
    uri = _uri_of(run_id, uri)
    client = get_client(uri)
    status = str(record.get("status", "error"))
    folds = record.get("folds") or []
    timestamp = int(time.time() * 1000)
    step = len(folds)
    metrics = [_metric(name, value, step, timestamp) for name, value in sorted(trial_metrics(record).items()) if _finite(value)]
    for name in ("folds_done", "folds_total"):
        if _finite(record.get(name)):
            metrics.append(_metric(name, record[name], step, timestamp))
    if _finite(record.get("started")) and _finite(record.get("finished")):
        metrics.append(_metric("trial_seconds", record["finished"] - record["started"], step, timestamp))
    _log_batch(client, run_id, metrics)

    protocol = record.get("protocol") or {}
    strict = bool(protocol.get("strict", True)) and not any(f.get("strict") is False for f in folds)
    _log_params_once(client, run_id, {"protocol": protocol.get("description", "strict" if strict else "NOT strict")})
    tags: dict[str, Any] = {"strict": str(strict).lower(), STATUS_TAG: status}
    fingerprint = record.get("data_fingerprint") or data_fingerprint
    version = record.get("code_version") or code_version
    if fingerprint:
        tags["data_fingerprint"] = fingerprint
    if version:
        tags["code_version"] = version
    if record.get("classes"):
        tags["classes"] = ",".join(str(c) for c in record["classes"])
    if record.get("error"):
        tags["error"] = str(record["error"])
    _log_batch(client, run_id, tags=tags)
    end = int(record["finished"] * 1000) if _finite(record.get("finished")) else None
    with_retries(client.set_terminated, run_id, "FAILED" if status == "error" else "FINISHED", end)
    logger.info("trial run %s closed (%s)", run_id, status)


# ----------------------------------------------------------------------------
# The study summary
# ----------------------------------------------------------------------------


def log_study_summary(
    uri: str,
    experiment: str,
    study: Mapping[str, Any],
    report_files: Sequence[str | Path],
    *,
    report: Report | None = None,
    artifact_location: str | None = None,
) -> str:
    """Create or update the experiment's one ``study-summary`` run; return its id.

    Logs ``report_files`` under the artifact folder ``report/``, the study's
    objective and protocol, and with ``report`` the best configuration (tags
    ``best.<param>``, ``best.trial_id``) and its metrics (``best_<metric>``)
    plus trial counts, at ``step = number of trials`` so that successive
    updates keep a history.
    """
    client = get_client(uri)
    experiment_id = ensure_experiment(uri, experiment, artifact_location)
    name = str(study.get("name", experiment))
    existing = _search(client, experiment_id, f"tags.`{KIND_TAG}` = 'summary'", ["attributes.start_time DESC"])
    if existing:
        run_id = existing[0].info.run_id
        with_retries(client.update_run, run_id, status="RUNNING")
    else:
        run_id = with_retries(client.create_run, experiment_id, run_name=SUMMARY_RUN_NAME, tags={KIND_TAG: "summary", STUDY_TAG: name}).info.run_id
    _run_uris[run_id] = uri

    objective = dict(study.get("objective") or {})
    protocol = dict(study.get("protocol") or {})
    _log_params_once(
        client,
        run_id,
        {
            "study": name,
            "objective.metric": objective.get("metric", "val_ua_mean"),
            "objective.mode": objective.get("mode", "max"),
            "protocol": protocol.get("description", "strict" if protocol.get("strict", True) else "NOT strict"),
        },
    )
    tags: dict[str, Any] = {KIND_TAG: "summary", STUDY_TAG: name, "strict": str(bool(protocol.get("strict", True))).lower()}
    for key in ("study_dir", "data_fingerprint", "code_version"):
        if study.get(key):
            tags[key] = study[key]
    metrics = []
    if report is None:
        metrics, best_tags = _summary_from_runs(client, experiment_id, str(objective.get("metric", "val_ua_mean")), str(objective.get("mode", "max")))
        tags.update(best_tags)
    else:
        timestamp = int(time.time() * 1000)
        step = len(report.trials)
        counts = report.counts()
        metrics.append(_metric("trials", len(report.trials), step, timestamp))
        metrics += [_metric(f"trials_{status}", count, step, timestamp) for status, count in counts.items()]
        tags["strict"] = str(report.strict).lower()
        if report.best is not None:
            best = report.best
            tags["best.trial_id"] = best.trial_id
            tags.update({f"best.{k}": v for k, v in flatten(best.params).items()})
            metrics += [_metric(f"best_{k}", v, step, timestamp) for k, v in sorted(best.metrics.items()) if _finite(v)]
            if _finite(best.objective):
                metrics.append(_metric("best_objective", best.objective, step, timestamp))
    _log_batch(client, run_id, metrics, tags=tags)
    for path in map(Path, report_files):
        if path.is_dir():
            with_retries(client.log_artifacts, run_id, str(path), f"report/{path.name}")
        elif path.is_file():
            with_retries(client.log_artifact, run_id, str(path), "report")
        else:
            logger.warning("study summary: report file %s does not exist; skipped", path)
    with_retries(client.set_terminated, run_id, "FINISHED")
    logger.info("study summary of %s logged to MLflow run %s", name, run_id)
    return run_id


def _summary_from_runs(client: Any, experiment_id: str, metric: str, mode: str) -> tuple[list[Any], dict[str, Any]]:
    """Trial counts and the best complete trial's metrics, read from the experiment's trial runs.

    Used when no :class:`~study.report.Report` is given; the same choice as the
    report (complete trials only, by the objective).
    """
    runs = _search(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial'")
    timestamp = int(time.time() * 1000)
    step = len(runs)
    counts: dict[str, int] = {}
    for run in runs:
        status = run.data.tags.get(STATUS_TAG, "unknown")
        counts[status] = counts.get(status, 0) + 1
    metrics = [_metric("trials", len(runs), step, timestamp)]
    metrics += [_metric(f"trials_{status}", count, step, timestamp) for status, count in counts.items()]
    tags: dict[str, Any] = {}
    complete = [r for r in runs if r.data.tags.get(STATUS_TAG) == "complete" and _finite(r.data.metrics.get(metric))]
    if complete:
        complete.sort(key=lambda r: (r.info.end_time or 0))
        pick = max if mode == "max" else min
        best = pick(complete, key=lambda r: r.data.metrics[metric])
        tags["best.trial_id"] = best.data.tags.get(TRIAL_ID_TAG, "")
        tags["best.run_id"] = best.info.run_id
        tags.update({f"best.{name}": best.data.params[name] for name in SEARCHED if name in best.data.params})
        aggregate = re.compile(r"^(val|test)_(ua|wa|macro_f1)_(mean|std)$")
        metrics += [_metric(f"best_{k}", v, step, timestamp) for k, v in sorted(best.data.metrics.items()) if aggregate.match(k) and _finite(v)]
        metrics.append(_metric("best_objective", best.data.metrics[metric], step, timestamp))
    if any(r.data.tags.get("strict") == "false" for r in runs):
        tags["strict"] = "false"
    return metrics, tags


# ----------------------------------------------------------------------------
# A convenience wrapper for the trial function
# ----------------------------------------------------------------------------


def retire_lost_trials(uri: str, experiment: str, study_dir: str, known_trial_ids: set[str]) -> list[str]:
    """Delete (MLflow's soft delete) the runs of ``study_dir``'s trials that Tune does not know, with their fold runs.

    A trial lost with an interrupted driver may have opened its run without
    ever writing a record, so the runs are found in MLflow itself: trial runs
    tagged with this study directory whose trial id is not in
    ``known_trial_ids``. They are tagged ``ser_study.status=lost`` first
    (the UI's "deleted" filter still shows them). Returns the lost trial ids.
    """
    client = get_client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    trials = _search(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial' AND tags.`{STUDY_DIR_TAG}` = {_quote(study_dir)}")
    lost = [t for t in trials if t.data.tags.get(TRIAL_ID_TAG) not in known_trial_ids]
    for trial in lost:
        for run in [trial, *_search(client, experiment_id, f"tags.`{PARENT_TAG}` = {_quote(trial.info.run_id)}")]:
            with_retries(client.set_tag, run.info.run_id, STATUS_TAG, "lost")
            with_retries(client.delete_run, run.info.run_id)
    ids = sorted(t.data.tags.get(TRIAL_ID_TAG, "") for t in lost)
    if ids:
        logger.warning("deleted the MLflow runs of %d trial(s) lost with an interrupted driver: %s", len(ids), ids)
    return ids


class TrialTracker:
    """The MLflow run of one trial, as the trial function uses it.

    With ``raise_errors=False`` (the default) a tracking failure is logged and
    swallowed, so an MLflow hiccup never kills hours of training: the trial's
    own record (reported to Tune) stays the source of truth for the report.
    """

    def __init__(self, uri: str, experiment: str, *, artifact_location: str | None = None, raise_errors: bool = False):
        self.uri = uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.raise_errors = raise_errors
        self.run_id: str | None = None

    def log_audit(self, audit: Any) -> None:
        """Attach a trial's leakage audit (:class:`study.audit.TrialAudit`) to its run."""
        from study.audit import log_audit  # the audit module uses this one

        if self.run_id is not None:
            self._guard("audit", log_audit, self.run_id, audit, uri=self.uri)

    def _guard(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return fn(*args, **kwargs)
        except Exception:
            if self.raise_errors:
                raise
            logger.exception("MLflow tracking failed (%s); the trial goes on", what)
            return None

    def start(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None) -> str | None:
        """Open the trial's run (see :func:`start_trial`)."""
        self.run_id = self._guard("start", start_trial, self.uri, self.experiment, trial_id, params, tags, fixed=fixed, artifact_location=self.artifact_location)
        return self.run_id

    def log_fold(self, fold_record: Mapping[str, Any], classes: Sequence[str]) -> str | None:
        """Log one finished fold (see :func:`log_fold`)."""
        if self.run_id is None:
            return None
        return self._guard("fold", log_fold, self.run_id, fold_record, classes, uri=self.uri)

    def finish(self, record: Mapping[str, Any], data_fingerprint: str | None = None, code_version: str | None = None) -> None:
        """Close the run (see :func:`finish_trial`)."""
        if self.run_id is None:
            return
        self._guard("finish", finish_trial, self.run_id, record, uri=self.uri, data_fingerprint=data_fingerprint, code_version=code_version)
