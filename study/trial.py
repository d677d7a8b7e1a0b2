"""The Tune trial: one candidate, its folds fanned out in parallel as Ray tasks.

:func:`run_trial` is an ordinary Tune function trainable. Its ``config`` holds
the study directory (where the resolved study file lives) and the four searched
hyperparameters, so it runs the same under ``tune.Tuner`` (what ``ser-study
run`` does) and under ``tune.run`` in a user's own script::

    tune.run(run_trial, config={"study_dir": "studies/smoke", "layer": 2, "clusters": 8,
                                "mask_ratio": 0.2, "pooling": "attention"})

Each fold is a Ray task running :func:`study.chain.run_fold_chain` through the
shared artifact cache. Results are reported in fold order as folds finish
(``val_ua_running_mean`` after each), then the aggregate; every report carries
``folds_done`` and ``folds_total`` so a searcher can tell a partial score from a
complete one. The trial's record lands in ``<study_dir>/trials/<trial_id>.json``
and in MLflow.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from study import paths, storage
from study.audit import audit_trial
from study.cache import ArtifactCache
from study.chain import FoldResult, run_fold_chain
from study.config import SEARCHED_PARAMS, StudyConfig, load_resolved_study
from study.coordinator import LeaseClient, get_coordinator
from study.tracking import STUDY_DIR_TAG, TrialTracker
from trainables.data.folds import build_fold
from trainables.data.manifest import read_manifest
from trainables.metrics import aggregate
from trainables.phases.artifacts import to_plain
from trainables.phases.settings import Candidate

logger = logging.getLogger(__name__)

#: Attempts after the first for a fold whose worker process or node died (a preempted node, the OOM killer).
#: A phase that raises is not retried (Ray's retry_exceptions is off): the trial fails with its cause.
#: A retry finds the phases already built in the cache and resumes the interrupted one from its checkpoint.
FOLD_TASK_RETRIES = 2


def candidate_of(config: dict[str, Any]) -> Candidate:
    """The searched hyperparameters of a trial's config."""
    missing = [name for name in SEARCHED_PARAMS if name not in config]
    if missing:
        raise ValueError(f"trial config lacks {missing}; it needs study_dir and {list(SEARCHED_PARAMS)}")
    return Candidate(layer=int(config["layer"]), clusters=int(config["clusters"]), mask_ratio=float(config["mask_ratio"]), pooling=str(config["pooling"]))


def _run_fold(study_dir: str, test_session: int, candidate: Candidate) -> dict[str, Any]:
    """One fold's chain (runs as a Ray task). Returns :meth:`FoldResult.to_dict`."""
    study = load_resolved_study(study_dir)
    utterances = read_manifest(study.data.manifest)
    cache_root = str(paths.cache_dir(study_dir))  # a URI for a remote study: artifacts are copied to this node's local cache
    # The task id is the same in every attempt of this task: a retry holds the lease its dead attempt held.
    owner = f"fold-task-{ray.get_runtime_context().get_task_id()}"
    cache = ArtifactCache(cache_root, leases=LeaseClient(get_coordinator(cache_root), owner=owner))
    if study.resources.executor == "ray":
        from trainables.ray_train import RayExecutor

        executor = RayExecutor(study.ray_resources(), storage=paths.ray_train_dir(study_dir))
    else:
        from trainables.executors import LocalExecutor

        executor = LocalExecutor()
    result: FoldResult = run_fold_chain(
        utterances,
        test_session,
        study.protocol(),
        candidate,
        study.phase_settings(),
        study.encoder,
        study.classes(utterances),
        cache,
        executor,
        embed_layers=study.embedding_layers(),
    )
    return result.to_dict()


#: The fold task, made once: each ``ray.remote(fn)`` is a new function that Ray exports and its workers load again.
_RUN_FOLD = ray.remote(max_retries=FOLD_TASK_RETRIES)(_run_fold)


def _fold_task(study: StudyConfig):
    """The fold task with the resources the study gives a fold, outside the trial's placement group."""
    if study.resources.executor == "ray":
        # The fold only drives Ray Train jobs and tasks, which reserve their own resources.
        resources = {"num_cpus": 0.01, "num_gpus": 0}
    else:
        resources = {"num_cpus": study.resources.cpus_per_fold, "num_gpus": study.resources.gpus_per_fold}
    return _RUN_FOLD.options(**resources, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))


def fold_metrics(folds: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and std over folds of validation UA/WA and test UA/WA/macro-F1."""
    metrics = {f"val_{k}": v for k, v in aggregate([f["val"] for f in folds], ("ua", "wa")).items()}
    metrics.update({f"test_{k}": v for k, v in aggregate([f["test"] for f in folds]).items()})
    return metrics


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: score one candidate over the study's folds."""
    study_dir = str(config["study_dir"])
    study = load_resolved_study(study_dir)
    candidate = candidate_of(config)
    candidate.validate()
    context = tune.get_context()
    trial_id = context.get_trial_id() or f"manual-{int(time.time())}"
    finished = _load_record(study_dir, trial_id)
    if finished is not None and finished["status"] == "complete":
        # Finished before a driver crash but after Tune's last snapshot: resume reports it again, runs nothing.
        logger.info("trial %s finished before the study was interrupted; reporting its record", trial_id)
        tune.report(_final_report(finished))
        return
    utterances = read_manifest(study.data.manifest)
    sessions = study.fold_sessions(utterances)
    classes = list(study.classes(utterances))
    protocol = study.protocol()
    record: dict[str, Any] = {
        "trial_id": trial_id,
        "params": {name: getattr(candidate, name) for name in SEARCHED_PARAMS},
        "status": "partial",
        "error": None,
        "protocol": {"strict": protocol.strict, "description": protocol.describe()},
        "classes": classes,
        "folds": [],
        "metrics": {},
        "folds_done": 0,
        "folds_total": len(sessions),
        "started": time.time(),
        "finished": None,
    }
    metadata = study.report_metadata(utterances)
    tracker = TrialTracker(study.tracking_uri(), study.name)  # MLflow trouble is logged, never fails the trial
    tracker.start(trial_id, record["params"], tags={STUDY_DIR_TAG: str(study.storage.study_dir)},
                  fixed={"phases": to_plain(study.phase_settings()), "folds": sessions, "encoder": study.encoder})
    task = _fold_task(study)
    pending = {session: task.remote(study_dir, session, candidate) for session in sessions}
    running: dict[str, float] = {}
    try:
        for session in sessions:  # report in fold order: a running mean over folds 1..k
            fold = ray.get(pending.pop(session))
            record["folds"].append(fold)
            record["folds_done"] = len(record["folds"])
            tracker.log_fold(fold, classes)
            _save_record(study_dir, record)  # a trial stopped early still leaves its finished folds
            running = fold_metrics(record["folds"])
            if record["folds_done"] < record["folds_total"]:
                # Means so far under their final names: the searcher tells Optuna a result with
                # folds_done < folds_total as PRUNED, never as a complete score (study.search).
                tune.report(_tune_result(record, running))
        record["metrics"] = running  # after the last fold: the means over all folds
        # Proof that no test-session utterance entered a phase (or, under a looser protocol, what was shared).
        audit = audit_trial(record, paths.cache_dir(study_dir), {s: build_fold(utterances, protocol.fold_spec(s)) for s in sessions})
        record["audit"] = audit.summary()
        record["status"] = "complete"
    except BaseException as err:  # a failed fold fails the trial, with its cause in the record and in MLflow
        for ref in pending.values():
            ray.cancel(ref, force=True)
        record["status"] = "error"
        record["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()
        raise
    finally:
        record["finished"] = time.time()
        _save_record(study_dir, record)
        tracker.finish(record, data_fingerprint=metadata["data_fingerprint"], code_version=metadata["code_version"])
    tracker.log_audit(audit)
    tune.report(_final_report(record))


def _tune_result(record: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """What a trial reports to Tune: fold progress, the running means, and ``metrics`` under their own names."""
    return {
        "folds_done": record["folds_done"],
        "folds_total": record["folds_total"],
        "val_ua_running_mean": metrics["val_ua_mean"],
        "test_ua_running_mean": metrics["test_ua_mean"],
        **metrics,
    }


def _final_report(record: dict[str, Any]) -> dict[str, Any]:
    return _tune_result(record, record["metrics"])


def _load_record(study_dir: str, trial_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(paths.trial_record(study_dir, trial_id)))
    except FileNotFoundError:
        return None


def _save_record(study_dir: str, record: dict[str, Any]) -> None:
    """Write a trial's record (local: temporary file renamed into place; object store: one PUT)."""
    storage.write_text(paths.trial_record(study_dir, record["trial_id"]), json.dumps(record, indent=2))


def read_trial_records(study_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial record of a study (local or remote), in start order."""
    texts = storage.read_texts(storage.list_files(paths.trials_dir(study_dir), suffix=".json"))
    records = [json.loads(text) for text in texts if text is not None]
    return sorted(records, key=lambda r: r.get("started") or 0.0)


def set_aside_lost_records(study_dir: str | Path, known_trial_ids: set[str]) -> list[dict[str, Any]]:
    """Move the records of trials that Tune does not know to ``trials/lost/``; return them.

    A driver killed between Tune's saving its state and its next save leaves
    behind a trial that Tune, resuming from the saved state, never heard of: it
    suggests that configuration again under a new trial id. The forgotten
    trial's record (usually an error: its cluster went away under it) is not
    part of the study, so it leaves the report; it is kept for the curious.
    """
    lost = [r for r in read_trial_records(study_dir) if r["trial_id"] not in known_trial_ids]
    for record in lost:
        storage.write_text(paths.lost_trial_record(study_dir, record["trial_id"]), json.dumps(record, indent=2))
        storage.delete(paths.trial_record(study_dir, record["trial_id"]))
        logger.warning("trial %s (%s, %s) was lost with an interrupted driver and rerun under a new id; its record is now in %s",
                       record["trial_id"], record.get("params"), record.get("status"), paths.lost_trial_record(study_dir, record["trial_id"]))
    return lost
