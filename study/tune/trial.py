"""The Tune trial: one candidate, its folds fanned out in parallel as Ray tasks.

:func:`run_trial` is an ordinary Tune function trainable. Its ``config`` holds
the study directory (where the resolved study file lives) and the four searched
hyperparameters, so it runs the same under ``tune.Tuner`` (what ``ser-study
run`` does) and under ``tune.run`` in a user's own script::

    tune.run(run_trial, config={"study_dir": "studies/smoke", "layer": 2, "clusters": 8,
                                "mask_ratio": 0.2, "pooling": "attention"})

Each fold is a Ray task running :func:`study.cache.chain.run_fold_chain` through the
shared artifact cache. Results are reported in fold order as folds finish
(``val_ua_running_mean`` after each), then the aggregate; every report carries
``folds_done`` and ``folds_total`` so a searcher can tell a partial score from a
complete one. The trial's record lands in ``<study_dir>/trials/<trial_id>.json``
and in MLflow.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from study.audit.checks import audit_trial
from study.config.loading import load_resolved_study
from study.config.space import SEARCHED_PARAMS
from study.io import layout
from study.io.records import load_record, save_record
from study.report.model import fold_metrics
from study.tracking.runs import TrialTracker, trial_tags
from study.tune.folds import fold_task
from trainables.config import Candidate
from trainables.data.folds import build_fold
from trainables.data.manifest import read_manifest
from trainables.phases.artifacts import to_plain

logger = logging.getLogger(__name__)

def candidate_of(config: dict[str, Any]) -> Candidate:
    """The searched hyperparameters of a trial's config."""
    missing = [name for name in SEARCHED_PARAMS if name not in config]
    if missing:
        raise ValueError(f"trial config lacks {missing}; it needs study_dir and {list(SEARCHED_PARAMS)}")
    return Candidate(layer=int(config["layer"]), clusters=int(config["clusters"]), mask_ratio=float(config["mask_ratio"]), pooling=str(config["pooling"]))


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: score one candidate over the study's folds."""
    import ray
    from ray import tune

    study_dir = str(config["study_dir"])
    study = load_resolved_study(study_dir)
    candidate = candidate_of(config)
    candidate.validate()
    context = tune.get_context()
    trial_id = context.get_trial_id() or f"manual-{int(time.time())}"
    finished = load_record(study_dir, trial_id)
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
    tracker.start(trial_id, record["params"], tags=trial_tags(study, utterances),
                  fixed={"phases": to_plain(study.phase_settings()), "folds": sessions, "encoder": study.encoder})
    task = fold_task(study)
    pending = {session: task.remote(study_dir, session, candidate) for session in sessions}
    running: dict[str, float] = {}
    try:
        for session in sessions:  # report in fold order: a running mean over folds 1..k
            fold = ray.get(pending.pop(session))
            record["folds"].append(fold)
            record["folds_done"] = len(record["folds"])
            tracker.log_fold(fold, classes)
            save_record(study_dir, record)  # a trial stopped early still leaves its finished folds
            running = fold_metrics(record["folds"])
            if record["folds_done"] < record["folds_total"]:
                # Means so far under their final names: the searcher tells Optuna a result with
                # folds_done < folds_total as PRUNED, never as a complete score (study.tune.search).
                tune.report(_tune_result(record, running))
        record["metrics"] = running  # after the last fold: the means over all folds
        # Proof that no test-session utterance entered a phase (or, under a looser protocol, what was shared).
        audit = audit_trial(record, layout.cache_dir(study_dir), {s: build_fold(utterances, protocol.fold_spec(s)) for s in sessions})
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
        save_record(study_dir, record)
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
