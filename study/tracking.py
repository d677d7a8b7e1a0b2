"""MLflow tracking of a study: one run per trial, a nested run per fold, one summary run.

Used from inside Ray Tune trial processes; every call opens its store through
:mod:`study.mlflow_store` (a cached client, retries on SQLite locks), taking
the tracking URI or finding it from the run id :func:`start_trial` returned in
the same process.

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
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from study.audit import PHASES, log_audit
from study.mlflow_store import (
    ensure_experiment,
    flatten,
    get_client,
    log_batch,
    log_params_once,
    make_metric,
    quote,
    remember_run_uri,
    search_runs,
    tag_text,
    uri_of_run,
    with_retries,
)
from study.report import Report, confusion_figure, trial_metrics, write_png
from study.report.model import SEARCHED, finite

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
    existing = search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial' AND tags.`{TRIAL_ID_TAG}` = {quote(trial_id)}", ["attributes.start_time DESC"])
    if existing:
        run_id = existing[0].info.run_id
        logger.info("trial %s: reopening MLflow run %s", trial_id, run_id)
        with_retries(client.update_run, run_id, status="RUNNING")
    else:
        name = f"trial-{trial_id}"
        run_id = with_retries(client.create_run, experiment_id, run_name=name, tags={k: tag_text(v) for k, v in all_tags.items()}).info.run_id
        logger.info("trial %s: MLflow run %s in experiment %s", trial_id, run_id, experiment)
    remember_run_uri(run_id, uri)
    log_params_once(client, run_id, all_params)
    log_batch(client, run_id, tags=all_tags)
    return run_id


def _history_metrics(history: Mapping[str, Any], timestamp: int) -> list[Any]:
    """Each phase's per-epoch values as step metrics ``<phase>/<name>`` at ``step = epoch``."""
    metrics = []
    for phase, entries in (history or {}).items():
        for index, entry in enumerate(entries or []):
            if not isinstance(entry, Mapping):
                continue
            step = entry.get("epoch", index)
            step = int(step) if finite(step) else index
            for name, value in entry.items():
                if name != "epoch" and finite(value):
                    metrics.append(make_metric(f"{phase}/{name}", value, step, timestamp))
    return metrics


def _phases(fold: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    built = [str(p) for p in fold.get("built") or []]
    known = list(fold.get("artifacts") or {})
    ordered = [p for p in PHASES if p in known] + [p for p in known if p not in PHASES]
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
    children = search_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = {quote(run_id)} AND tags.`{KIND_TAG}` = 'fold' AND attributes.status = 'FINISHED'")
    done = len(children)
    if not done:
        return 0
    timestamp = int(time.time() * 1000)
    metrics = [make_metric("folds_done", done, done, timestamp)]
    for name in ("val_ua", "test_ua", "test_wa"):
        values = [child.data.metrics[name] for child in children if name in child.data.metrics]
        if values:
            metrics.append(make_metric(f"{name}_running_mean", sum(values) / len(values), done, timestamp))
    log_batch(client, run_id, metrics)
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
    uri = uri_of_run(run_id, uri)
    client = get_client(uri)
    parent = with_retries(client.get_run, run_id)
    experiment_id = parent.info.experiment_id
    session = fold_record.get("test_session", "?")
    timestamp = int(time.time() * 1000)

    existing = search_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = {quote(run_id)} AND tags.`{KIND_TAG}` = 'fold' AND tags.`{SESSION_TAG}` = {quote(session)}")
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
            fold_run_id = with_retries(client.create_run, experiment_id, run_name=f"fold-{session}", tags={k: tag_text(v) for k, v in tags.items()}).info.run_id
        log_batch(client, fold_run_id, tags=tags)
        split_info = {k: v for k, v in flatten(dict(fold_record.get("fold") or {})).items() if not isinstance(v, (list, tuple, dict))}
        log_params_once(client, fold_run_id, {"test_session": session, **split_info})
        metrics = []
        for split in ("val", "test"):
            values = fold_record.get(split) or {}
            for name in ("ua", "wa", "macro_f1", "count"):
                if finite(values.get(name)):
                    metrics.append(make_metric(f"{split}_{name}", values[name], 0, timestamp))
        if finite(fold_record.get("seconds")):
            metrics.append(make_metric("seconds", fold_record["seconds"], 0, timestamp))
        metrics += _history_metrics(fold_record.get("history") or {}, timestamp)
        log_batch(client, fold_run_id, metrics)
        with tempfile.TemporaryDirectory(prefix="ser-fold-") as tmp:
            files = _fold_artifacts(Path(tmp), fold_record, classes)
            with_retries(client.log_artifacts, fold_run_id, tmp)
            confusion = Path(tmp) / "confusion_test.png"
            if confusion in files:
                renamed = Path(tmp) / f"fold-{session}_test.png"
                os.replace(confusion, renamed)
                with_retries(client.log_artifact, run_id, str(renamed), "confusion")
        with_retries(client.set_terminated, fold_run_id, "FINISHED")

    step = int(session) if finite(session) else 0
    parent_metrics = [
        make_metric(f"fold_{split}_{name}", (fold_record.get(split) or {})[name], step, timestamp)
        for split, name in (("val", "ua"), ("test", "ua"), ("test", "wa"), ("test", "macro_f1"))
        if finite((fold_record.get(split) or {}).get(name))
    ]
    log_batch(client, run_id, parent_metrics)
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
    uri = uri_of_run(run_id, uri)
    client = get_client(uri)
    status = str(record.get("status", "error"))
    folds = record.get("folds") or []
    timestamp = int(time.time() * 1000)
    step = len(folds)
    metrics = [make_metric(name, value, step, timestamp) for name, value in sorted(trial_metrics(record).items()) if finite(value)]
    for name in ("folds_done", "folds_total"):
        if finite(record.get(name)):
            metrics.append(make_metric(name, record[name], step, timestamp))
    if finite(record.get("started")) and finite(record.get("finished")):
        metrics.append(make_metric("trial_seconds", record["finished"] - record["started"], step, timestamp))
    log_batch(client, run_id, metrics)

    protocol = record.get("protocol") or {}
    strict = bool(protocol.get("strict", True)) and not any(f.get("strict") is False for f in folds)
    log_params_once(client, run_id, {"protocol": protocol.get("description", "strict" if strict else "NOT strict")})
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
    log_batch(client, run_id, tags=tags)
    end = int(record["finished"] * 1000) if finite(record.get("finished")) else None
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
    existing = search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = 'summary'", ["attributes.start_time DESC"])
    if existing:
        run_id = existing[0].info.run_id
        with_retries(client.update_run, run_id, status="RUNNING")
    else:
        run_id = with_retries(client.create_run, experiment_id, run_name=SUMMARY_RUN_NAME, tags={KIND_TAG: "summary", STUDY_TAG: name}).info.run_id
    remember_run_uri(run_id, uri)

    objective = dict(study.get("objective") or {})
    protocol = dict(study.get("protocol") or {})
    log_params_once(
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
        metrics.append(make_metric("trials", len(report.trials), step, timestamp))
        metrics += [make_metric(f"trials_{status}", count, step, timestamp) for status, count in counts.items()]
        tags["strict"] = str(report.strict).lower()
        if report.best is not None:
            best = report.best
            tags["best.trial_id"] = best.trial_id
            tags.update({f"best.{k}": v for k, v in flatten(best.params).items()})
            metrics += [make_metric(f"best_{k}", v, step, timestamp) for k, v in sorted(best.metrics.items()) if finite(v)]
            if finite(best.objective):
                metrics.append(make_metric("best_objective", best.objective, step, timestamp))
    log_batch(client, run_id, metrics, tags=tags)
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
    runs = search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial'")
    timestamp = int(time.time() * 1000)
    step = len(runs)
    counts: dict[str, int] = {}
    for run in runs:
        status = run.data.tags.get(STATUS_TAG, "unknown")
        counts[status] = counts.get(status, 0) + 1
    metrics = [make_metric("trials", len(runs), step, timestamp)]
    metrics += [make_metric(f"trials_{status}", count, step, timestamp) for status, count in counts.items()]
    tags: dict[str, Any] = {}
    complete = [r for r in runs if r.data.tags.get(STATUS_TAG) == "complete" and finite(r.data.metrics.get(metric))]
    if complete:
        complete.sort(key=lambda r: (r.info.end_time or 0))
        pick = max if mode == "max" else min
        best = pick(complete, key=lambda r: r.data.metrics[metric])
        tags["best.trial_id"] = best.data.tags.get(TRIAL_ID_TAG, "")
        tags["best.run_id"] = best.info.run_id
        tags.update({f"best.{name}": best.data.params[name] for name in SEARCHED if name in best.data.params})
        aggregate = re.compile(r"^(val|test)_(ua|wa|macro_f1)_(mean|std)$")
        metrics += [make_metric(f"best_{k}", v, step, timestamp) for k, v in sorted(best.data.metrics.items()) if aggregate.match(k) and finite(v)]
        metrics.append(make_metric("best_objective", best.data.metrics[metric], step, timestamp))
    if any(r.data.tags.get("strict") == "false" for r in runs):
        tags["strict"] = "false"
    return metrics, tags


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
    trials = search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial' AND tags.`{STUDY_DIR_TAG}` = {quote(study_dir)}")
    lost = [t for t in trials if t.data.tags.get(TRIAL_ID_TAG) not in known_trial_ids]
    for trial in lost:
        for run in [trial, *search_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = {quote(trial.info.run_id)}")]:
            with_retries(client.set_tag, run.info.run_id, STATUS_TAG, "lost")
            with_retries(client.delete_run, run.info.run_id)
    ids = sorted(t.data.tags.get(TRIAL_ID_TAG, "") for t in lost)
    if ids:
        logger.warning("deleted the MLflow runs of %d trial(s) lost with an interrupted driver: %s", len(ids), ids)
    return ids


# ----------------------------------------------------------------------------
# A convenience wrapper for the trial function
# ----------------------------------------------------------------------------


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
