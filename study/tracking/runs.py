"""MLflow tracking of a study: one run per trial, a nested run per fold, one summary run.

Used from inside Ray Tune trial processes; every call opens its store through
:mod:`study.tracking.store` (a cached client, retries on SQLite locks), taking
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
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from study.audit.findings import AUDIT_FILE, PHASE_LABELS, TrialAudit
from study.config.study import StudyConfig, code_version
from study.tracking.store import (
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
from study.report.figures import confusion_figure, write_png
from study.report.model import finite, trial_metrics
from trainables.data.manifest import Utterance, fingerprint

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
#: The names of the candidate's own parameters among a run's params (the rest are the flattened fixed settings).
PARAMS_TAG = "ser_study.params"
#: MLflow allows 8000 characters in a tag.
_MAX_TAG_CHARS = 5000


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
    kind: str = "trial",
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
    all_tags = {**{str(k): v for k, v in (tags or {}).items()}, KIND_TAG: kind, TRIAL_ID_TAG: str(trial_id), STATUS_TAG: "running", PARAMS_TAG: ",".join(params)}
    existing = search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = {quote(kind)} AND tags.`{TRIAL_ID_TAG}` = {quote(trial_id)}", ["attributes.start_time DESC"])
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


def trial_tags(config: "StudyConfig", utterances: Sequence["Utterance"], record: Mapping[str, Any]) -> dict[str, str]:
    """The tags the run of ``record`` (a trial or a baseline of ``config``) carries: its method (and whether it is
    reconstructed from an abstract), the study, its protocol, data, code and encoder."""
    protocol = config.protocol()
    return {
        "method": record["method"],
        "reconstructed": str(bool(record.get("reconstructed"))).lower(),
        STUDY_TAG: config.name,
        STUDY_DIR_TAG: str(config.storage.study_dir),
        "strict": str(protocol.strict).lower(),
        "protocol": protocol.describe(),
        "data_fingerprint": fingerprint(u.utt_id for u in utterances),
        "code_version": code_version(),
        "encoder": config.encoder_ref(),
        "preset": config.phases.preset,
    }


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
    """The fold's steps it built, and those it found cached, in chain order."""
    built = [str(p) for p in fold.get("built") or []]
    return built, [step for step in fold.get("artifacts") or {} if step not in built]


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

    def log_audit(self, audit: TrialAudit) -> None:
        """Attach a trial's leakage audit (:class:`study.audit.findings.TrialAudit`) to its run."""
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

    def start(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None, kind: str = "trial") -> str | None:
        """Open the trial's (or a baseline's, ``kind="baseline"``) run (see :func:`start_trial`)."""
        self.run_id = self._guard("start", start_trial, self.uri, self.experiment, trial_id, params, tags, fixed=fixed, artifact_location=self.artifact_location, kind=kind)
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


def log_audit(run_id: str, audit: TrialAudit, *, uri: str | None = None) -> None:
    """Put a trial's audit on its MLflow run: tags ``audit`` (clean | shared | leak | unverified),
    ``audit_shared`` (what a looser protocol shared), ``audit_leaks`` (the leaks, if any),
    metric ``audit_leak_count`` and artifact ``audit.json``."""
    client = get_client(uri_of_run(run_id, uri))  # the URI the trial's run was started with
    tags = {"audit": audit.verdict(), "audit_strict": str(audit.strict).lower()}
    shared = audit.shared_statements()
    if shared:
        tags["audit_shared"] = "; ".join(shared)
    if audit.leaks:
        tags["audit_leaks"] = "; ".join(f"fold {fold.test_session} {PHASE_LABELS[f.phase]}: {f.message}" for fold in audit.folds for f in fold.leaks)
    for name, value in tags.items():
        with_retries(client.set_tag, run_id, name, value[:_MAX_TAG_CHARS])
    with_retries(client.log_metric, run_id, "audit_leak_count", float(len(audit.leaks)))
    with_retries(client.log_text, run_id, json.dumps(audit.to_dict(), indent=2, ensure_ascii=False), AUDIT_FILE)
