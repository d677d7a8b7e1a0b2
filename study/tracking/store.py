"""The MLflow store of a study: its URI, a shared client, retries on SQLite locks, batched logging.

Used from inside Ray Tune trial processes, so every call is self-contained: it
takes the tracking URI (or finds it from a run id registered in the same
process with :func:`remember_run_uri`), opens a cached client and retries when
SQLite answers "database is locked" (several trial processes log into one
local store at once). What a study logs, and where, is :mod:`study.tracking.runs`.

A local study directory gets a SQLite store ``<study_dir>/mlflow.db`` (MLflow
3 refuses the old ``./mlruns`` file store) with its artifacts in
``<study_dir>/mlartifacts``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import unquote

from study.io.layout import ARTIFACT_DIR
from study.tracking.view import VIEW_TAG, view_query, view_tag_value

logger = logging.getLogger(__name__)

T = TypeVar("T")


# MLflow's own limits (mlflow.utils.validation).
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000
_MAX_TAG_LENGTH = 8000
#: MLflow 3's UI opens an experiment of this kind on its runs table (untagged, it lands on the GenAI overview).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_LOCK_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_run_uris: dict[str, str] = {}


# ----------------------------------------------------------------------------
# URIs and stores
# ----------------------------------------------------------------------------


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
    for a local store). A deleted experiment of that name is restored. The experiment is tagged
    as model training (:data:`EXPERIMENT_KIND`), so that the MLflow UI opens it on its runs.
    """
    from mlflow.exceptions import MlflowException

    client = get_client(uri)
    location = artifact_location or artifact_location_for(uri)
    with _store_lock(uri):
        experiment = with_retries(client.get_experiment_by_name, name)
        if experiment is None:
            try:
                return with_retries(client.create_experiment, name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: view_tag_value()})
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
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            with_retries(client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if VIEW_TAG not in experiment.tags:
            with_retries(client.set_experiment_tag, experiment.experiment_id, VIEW_TAG, view_tag_value())
        return experiment.experiment_id


def runs_view_url(server: str, uri: str, name: str) -> str:
    """The MLflow UI page of ``server`` listing the runs of experiment ``name`` (in the store at ``uri``), opened on the
    study's saved view (UA and WA columns shown) when the experiment has it; the server's home page before the study
    logged anything."""
    base = server.rstrip("/")
    experiment = with_retries(get_client(uri).get_experiment_by_name, name)
    if experiment is None:
        return base
    return f"{base}/#/experiments/{experiment.experiment_id}/runs" + (view_query() if VIEW_TAG in experiment.tags else "")


def remember_run_uri(run_id: str, uri: str) -> None:
    """Note the store of a run opened in this process, for the calls that get only its id."""
    _run_uris[run_id] = uri


def uri_of_run(run_id: str, uri: str | None = None) -> str:
    """``uri`` if given, else the store ``run_id`` was opened in by this process, else MLflow's current URI."""
    if uri:
        return uri
    if run_id in _run_uris:
        return _run_uris[run_id]
    import mlflow

    return mlflow.get_tracking_uri()


# ----------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------


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


def tag_text(value: Any) -> str:
    """``value`` as a tag value MLflow accepts (JSON for structures, cut to MLflow's limit)."""
    return _text(value, _MAX_TAG_LENGTH)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_batch(client: Any, run_id: str, metrics: Sequence[Any] = (), params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> None:
    """Log ``metrics``, ``params`` and ``tags`` in batches within MLflow's limits (keys made valid, long values cut)."""
    from mlflow.entities import Param, RunTag

    param_list = [Param(_key(k), _text(v, _MAX_PARAM_LENGTH)) for k, v in (params or {}).items()]
    tag_list = [RunTag(_key(k), _text(v, _MAX_TAG_LENGTH)) for k, v in (tags or {}).items()]
    for chunk in _chunks(param_list, _MAX_PARAMS_TAGS_PER_BATCH):
        with_retries(client.log_batch, run_id, params=list(chunk), synchronous=True)
    for chunk in _chunks(tag_list, _MAX_PARAMS_TAGS_PER_BATCH):
        with_retries(client.log_batch, run_id, tags=list(chunk), synchronous=True)
    for chunk in _chunks(list(metrics), _MAX_METRICS_PER_BATCH):
        with_retries(client.log_batch, run_id, metrics=list(chunk), synchronous=True)


def log_params_once(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params not yet on the run; a param already there with another value is kept (and warned about)."""
    existing = with_retries(client.get_run, run_id).data.params
    new: dict[str, Any] = {}
    for key, value in params.items():
        name, text = _key(key), _text(value, _MAX_PARAM_LENGTH)
        if name not in existing:
            new[name] = text
        elif existing[name] != text:
            logger.warning("run %s already has param %s=%r; not replacing it with %r", run_id, name, existing[name], text)
    log_batch(client, run_id, params=new)


def make_metric(key: str, value: float, step: int = 0, timestamp: int | None = None):
    """An MLflow ``Metric`` with a valid key (timestamp: now, in ms, unless given)."""
    from mlflow.entities import Metric

    return Metric(_key(key), float(value), timestamp if timestamp is not None else int(time.time() * 1000), int(step))


def search_runs(client: Any, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    """The runs of ``experiment_id`` matching ``filter_string`` (at most 1000)."""
    return list(with_retries(client.search_runs, [experiment_id], filter_string=filter_string, max_results=1000, order_by=order_by))


def quote(value: Any) -> str:
    """``value`` as a quoted string for an MLflow search filter (a value holding a quote is refused)."""
    text = str(value)
    if "'" in text:
        raise ValueError(f"a quote in an MLflow search value: {text!r}")
    return f"'{text}'"
