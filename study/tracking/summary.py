"""The study's summary run in MLflow, and the runs of trials lost with an interrupted driver."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from study.report.model import AGG_METRIC, Report, best_of, finite
from study.tracking.runs import KIND_TAG, PARAMS_TAG, PARENT_TAG, STATUS_TAG, STUDY_DIR_TAG, STUDY_TAG, SUMMARY_RUN_NAME, TRIAL_ID_TAG
from study.tracking.store import ensure_experiment, flatten, get_client, log_batch, log_params_once, make_metric, quote, remember_run_uri, search_runs, with_retries
from study.tracking.view import VIEW_TAG, view_tag_value

logger = logging.getLogger(__name__)

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
    complete = sorted((r for r in runs if r.data.tags.get(STATUS_TAG) == "complete"), key=lambda r: r.info.end_time or 0)
    best = best_of(complete, lambda r: r.data.metrics.get(metric, math.nan), mode)
    if best is not None:
        tags["best.trial_id"] = best.data.tags.get(TRIAL_ID_TAG, "")
        tags["best.run_id"] = best.info.run_id
        own = [name for name in best.data.tags.get(PARAMS_TAG, "").split(",") if name]
        tags.update({f"best.{name}": best.data.params[name] for name in own if name in best.data.params})
        metrics += [make_metric(f"best_{k}", v, step, timestamp) for k, v in sorted(best.data.metrics.items()) if AGG_METRIC.match(k) and finite(v)]
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


def log_comparisons(uri: str, experiment: str, report: Report) -> int:
    """Log every trial's paired comparison with each baseline on its run: ``delta_test_<ua|wa>_vs_<baseline>`` (and ``_low``, ``_high``).

    Baselines may finish after a trial, so the deltas are logged when the
    report is written (again at each report: the latest values win). Returns
    the number of runs updated.
    """
    client = get_client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    # The saved view of the runs table shows the deltas to this study's baselines.
    with_retries(client.set_experiment_tag, experiment_id, VIEW_TAG, view_tag_value([b.method for b in report.baselines]))
    if not report.comparisons:
        return 0
    runs = {run.data.tags.get(TRIAL_ID_TAG): run for run in search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial'")}
    timestamp = int(time.time() * 1000)
    updated = 0
    for trial_id, by_baseline in report.comparisons.items():
        run = runs.get(trial_id)
        if run is None:
            continue
        metrics = []
        for baseline, by_metric in by_baseline.items():
            for metric, comparison in by_metric.items():
                name = f"delta_test_{metric}_vs_{baseline}"
                for suffix, value in (("", comparison.mean), ("_low", comparison.low), ("_high", comparison.high)):
                    if finite(value):
                        metrics.append(make_metric(name + suffix, value, 0, timestamp))
        if metrics:
            log_batch(client, run.info.run_id, metrics)
            updated += 1
    return updated
