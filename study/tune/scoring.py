"""Scoring one candidate (a method and its parameters) over the study's folds and seeds: what a trial and a baseline share.

Every (seed, test session) is a Ray fold task running the method's recipe
through the shared artifact cache; they run in parallel and are collected in
order, seed by seed, so that after *k* folds the record holds the first *k*.
Each finished fold lands in the record (saved at once: an interrupted run
keeps its finished folds) and in MLflow. At the end the record gets the means
over every fold and seed and its leakage audit.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Mapping

from study.audit.checks import audit_trial
from study.audit.findings import TrialAudit
from study.config.study import StudyConfig
from study.io import layout
from study.io.records import save_record
from study.report.model import fold_metrics
from study.tracking.runs import TrialTracker
from study.tune.folds import fold_task
from trainables.data.folds import build_fold
from trainables.data.manifest import Utterance
from trainables.recipes.registry import get_recipe


def new_record(record_id: str, kind: str, method: str, params: Mapping[str, Any], study: StudyConfig, utterances: list[Utterance]) -> dict[str, Any]:
    """The record of a trial or a baseline that has not run yet: its candidate with every parameter of its method resolved."""
    recipe = get_recipe(method)
    protocol = study.protocol()
    sessions = study.fold_sessions(utterances)
    return {
        "trial_id": record_id,
        "kind": kind,
        "method": method,
        "params": {"method": method, **recipe.resolve(params)},
        "reconstructed": recipe.reconstructed,
        "status": "partial",
        "error": None,
        "protocol": {"strict": protocol.strict, "description": protocol.describe()},
        "classes": list(study.classes(utterances)),
        "seeds": list(study.study.seeds),
        "folds": [],
        "metrics": {},
        "folds_done": 0,
        "folds_total": len(sessions) * len(study.study.seeds),
        "started": time.time(),
        "finished": None,
    }


def score(
    study_dir: str,
    study: StudyConfig,
    utterances: list[Utterance],
    record: dict[str, Any],
    tracker: TrialTracker,
    after_fold: Callable[[dict[str, Any], dict[str, float]], None] = lambda record, running: None,
) -> TrialAudit:
    """Run ``record``'s candidate on every fold and seed; fill and save the record; return its audit.

    ``after_fold(record, running means)`` is called after each fold but the
    last (a trial reports to Tune there). A failed fold fails the whole
    candidate: the others are cancelled, the record says why, and the error is raised.
    """
    import ray

    sessions = study.fold_sessions(utterances)
    protocol = study.protocol()
    params = {k: v for k, v in record["params"].items() if k != "method"}
    task = fold_task(study)
    order = [(seed, session) for seed in study.study.seeds for session in sessions]
    pending = {(seed, session): task.remote(study_dir, session, record["method"], params, seed) for seed, session in order}
    try:
        for item in order:
            fold = ray.get(pending.pop(item))
            record["folds"].append(fold)
            record["folds_done"] = len(record["folds"])
            tracker.log_fold(fold, record["classes"])
            save_record(study_dir, record)
            running = fold_metrics(record["folds"])
            if record["folds_done"] < record["folds_total"]:
                after_fold(record, running)
        record["metrics"] = running  # after the last fold: the means over all folds and seeds
        # Proof that no test-session utterance entered a phase (or, under a looser protocol, what was shared).
        audit = audit_trial(record, layout.cache_dir(study_dir), {s: build_fold(utterances, protocol.fold_spec(s)) for s in sessions}, utterances)
        record["audit"] = audit.summary()
        record["status"] = "complete"
    except BaseException as err:
        for ref in pending.values():
            ray.cancel(ref, force=True)
        record["status"] = "error"
        record["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()
        raise
    finally:
        record["finished"] = time.time()
        save_record(study_dir, record)
        tracker.finish(record)
    tracker.log_audit(audit)
    return audit
