"""The study's baselines (``baselines:``): each scored once per fold and seed, outside the search, beside the trials.

A baseline is a recipe with its default parameters (:mod:`trainables.recipes.baselines`),
scored like a trial (:mod:`study.tune.scoring`) but never proposed by the
searcher: its record is ``<study_dir>/baselines/<name>.json`` and its MLflow
run is tagged ``ser_study.kind=baseline``. Its phases go through the same
cache, so the ``tapt`` baseline costs one evaluation when ``alignment`` built
the TAPT models, and a resumed or later study on the same cache rebuilds nothing.
They run in a thread of the driver while Tune runs the trials; a baseline that
fails is recorded with its cause and does not stop the study.
"""

from __future__ import annotations

import logging
import threading

from study.config.loading import load_resolved_study
from study.io.records import load_baseline_record
from study.tracking.runs import TrialTracker, trial_tags
from study.tune.scoring import new_record, score
from trainables.data.manifest import read_manifest
from trainables.phases.artifacts import to_plain

logger = logging.getLogger(__name__)


def run_baselines(study_dir: str) -> None:
    """Score every baseline of the study that has no complete record for its seeds yet."""
    study = load_resolved_study(study_dir)
    if not study.baselines:
        return
    utterances = read_manifest(study.data.manifest)
    for name in study.baselines:
        done = load_baseline_record(study_dir, name)
        if done is not None and done.get("status") == "complete" and done.get("seeds") == list(study.study.seeds):
            logger.info("baseline %s is already scored", name)
            continue
        record = new_record(f"baseline-{name}", "baseline", name, {}, study, utterances)
        tracker = TrialTracker(study.tracking_uri(), study.name)
        tracker.start(record["trial_id"], record["params"], tags=trial_tags(study, utterances, record), kind="baseline",
                      fixed={"phases": to_plain(study.phase_settings()), "folds": study.fold_sessions(utterances), "seeds": study.study.seeds, "encoder": study.encoder_ref()})
        try:
            score(study_dir, study, utterances, record, tracker)
            logger.info("baseline %s: test UA %.3f", name, record["metrics"]["test_ua_mean"])
        except Exception:  # recorded in the baseline's record and run; the study goes on
            logger.exception("baseline %s failed", name)


def start_baselines(study_dir: str) -> threading.Thread:
    """:func:`run_baselines` in a thread of the driver (join it after the search)."""
    thread = threading.Thread(target=run_baselines, args=(study_dir,), name="ser-study-baselines", daemon=True)
    thread.start()
    return thread
