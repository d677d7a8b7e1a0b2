"""The Tune trial: one candidate (a method and its parameters), its folds fanned out in parallel as Ray tasks.

:func:`run_trial` is an ordinary Tune function trainable. Its ``config`` holds
the study directory (where the resolved study file lives), the ``method`` and
its parameters, so it runs the same under ``tune.Tuner`` (what ``ser-study
run`` does) and under ``tune.run`` in a user's own script::

    tune.run(run_trial, config={"study_dir": "studies/smoke", "method": "alignment", "layer": 2,
                                "clusters": 8, "mask_ratio": 0.2, "pooling": "attention"})

A parameter the config leaves out takes its method's default. Each fold is a
Ray task running the method's recipe through the shared artifact cache
(:mod:`study.tune.scoring`). Results are reported in fold order as folds finish
(``val_ua_running_mean`` after each), then the aggregate; every report carries
``folds_done`` and ``folds_total`` so a searcher can tell a partial score from
a complete one. The trial's record lands in ``<study_dir>/trials/<trial_id>.json``
and in MLflow.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from study.config.loading import load_resolved_study
from study.config.space import CANDIDATE, DEFAULT_METHOD, METHOD
from study.io.records import load_record
from study.tracking.runs import TrialTracker, trial_tags
from study.tune.scoring import new_record, score
from trainables.data.manifest import read_manifest
from trainables.phases.artifacts import to_plain

logger = logging.getLogger(__name__)

#: Keys of a trial's config that are not parameters of its method (``candidate``: a grid point's index).
NOT_PARAMS = ("study_dir", METHOD, CANDIDATE)


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: score one candidate over the study's folds."""
    from ray import tune

    study_dir = str(config["study_dir"])
    study = load_resolved_study(study_dir)
    method = str(config.get(METHOD, DEFAULT_METHOD))
    params = {name: value for name, value in config.items() if name not in NOT_PARAMS}
    trial_id = tune.get_context().get_trial_id() or f"manual-{int(time.time())}"
    finished = load_record(study_dir, trial_id)
    if finished is not None and finished["status"] == "complete":
        # Finished before a driver crash but after Tune's last snapshot: resume reports it again, runs nothing.
        logger.info("trial %s finished before the study was interrupted; reporting its record", trial_id)
        tune.report(tune_result(finished, finished["metrics"]))
        return
    utterances = read_manifest(study.data.manifest)
    record = new_record(trial_id, "trial", method, params, study, utterances)  # a parameter the method lacks raises here
    tracker = TrialTracker(study.tracking_uri(), study.name)  # MLflow trouble is logged, never fails the trial
    tracker.start(trial_id, record["params"], tags=trial_tags(study, utterances, record),
                  fixed={"phases": to_plain(study.phase_settings()), "folds": study.fold_sessions(utterances), "seeds": study.study.seeds, "encoder": study.encoder_ref()})
    # Means so far under their final names: the searcher tells Optuna a result with folds_done < folds_total
    # as PRUNED, never as a complete score (study.tune.search).
    score(study_dir, study, utterances, record, tracker, after_fold=lambda record, running: tune.report(tune_result(record, running)))
    tune.report(tune_result(record, record["metrics"]))


def tune_result(record: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """What a trial reports to Tune: fold progress, the running means, and ``metrics`` under their own names."""
    return {
        "folds_done": record["folds_done"],
        "folds_total": record["folds_total"],
        "val_ua_running_mean": metrics["val_ua_mean"],
        "test_ua_running_mean": metrics["test_ua_mean"],
        **metrics,
    }
