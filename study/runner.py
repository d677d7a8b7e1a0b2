"""Running a study: validate, lay out the study directory, start Ray, drive Tune, write the report.

The notebook entry point is :func:`run_study` (a :class:`StudyConfig` in, Tune's
``ResultGrid`` out); ``ser-study run`` and ``ser-study resume`` call it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from ray import tune

from study import paths
from study.config import StudyConfig, load_resolved_study
from study.coordinator import get_coordinator
from study.errors import UserError
from study.report_command import write_study_report
from study.search import make_scheduler, make_search_alg
from study.trial import run_trial
from trainables.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: The trial itself only waits on its fold tasks; they reserve the real resources.
TRIAL_RESOURCES = {"cpu": 0.01}


def prepare_study_dir(config: StudyConfig) -> Path:
    """Create the study directory and save the resolved study file in it; refuse a directory of another study."""
    study_dir = Path(config.storage.study_dir)
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"storage.study_dir {study_dir} is not writable ({err.strerror}); choose another with --study-dir") from None
    study_file = paths.study_file(study_dir)
    if paths.tune_dir(study_dir).exists():
        raise UserError(f"{study_dir} already holds a study; continue it with `ser-study resume {study_dir}` or choose another --study-dir")
    atomic_write_text(study_file, config.to_yaml())
    return study_dir


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` or start a local one (dashboard on, bound to 127.0.0.1)."""
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=os.cpu_count())
    except ConnectionError as err:
        raise UserError(f"no Ray cluster answers at --address {address}: {err}; start one with `ray start --head` or `ray up cluster.yaml`, or leave --address out for a local cluster") from None


def _trainable():
    return tune.with_resources(run_trial, TRIAL_RESOURCES)


def run_study(config: StudyConfig, address: str | None = None) -> tune.ResultGrid:
    """Run a new study to completion and write its report; returns Tune's ``ResultGrid``."""
    config.check_inputs()  # before Ray starts: data, encoder, layers, folds
    study_dir = prepare_study_dir(config)
    connect_ray(address)
    get_coordinator(str(paths.cache_dir(study_dir)))
    tuner = tune.Tuner(
        _trainable(),
        param_space={"study_dir": str(study_dir)},
        tune_config=tune.TuneConfig(
            search_alg=make_search_alg(config),
            scheduler=make_scheduler(config),
            num_samples=config.num_trials(),
        ),
        run_config=tune.RunConfig(
            name=paths.TUNE_NAME,
            storage_path=str(study_dir.resolve()),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
    results = tuner.fit()
    write_study_report(study_dir)
    return results


def resume_study(study_dir: str | Path, address: str | None = None) -> tune.ResultGrid:
    """Continue an interrupted study from its directory alone: finished trials are kept, cached phases reused."""
    study_dir = Path(study_dir)
    if not paths.study_file(study_dir).is_file():
        raise UserError(f"{study_dir} is not a study directory ({paths.study_file(study_dir).name} is missing); start one with `ser-study run STUDY.yaml`")
    config = load_resolved_study(study_dir)
    config.check_inputs()
    tune_dir = paths.tune_dir(study_dir).resolve()
    connect_ray(address)
    get_coordinator(str(paths.cache_dir(study_dir)))
    if not tune.Tuner.can_restore(str(tune_dir)):
        raise UserError(f"{tune_dir} holds no Tune experiment state to resume; start the study again with `ser-study run`")
    tuner = tune.Tuner.restore(str(tune_dir), trainable=_trainable(), resume_unfinished=True, resume_errored=False, restart_errored=False)
    results = tuner.fit()
    write_study_report(study_dir)
    return results
