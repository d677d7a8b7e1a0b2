"""Running a study: validate, lay out the study directory, start Ray, drive Tune, write the report.

The notebook entry point is :func:`run_study` (a :class:`StudyConfig` in, Tune's
``ResultGrid`` out); ``ser-study run`` and ``ser-study resume`` call it.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from study.io import layout, storage
from study.config.loading import load_resolved_study
from study.config.study import StudyConfig
from study.cache.leases import get_coordinator
from study.errors import UserError
from study.tune.capacity import wait_for_capacity
from study.tune.preflight import check_mlflow_server, check_ray_address
from study.tune.baselines import start_baselines
from study.tune.publish import write_study_report
from study.tracking.summary import retire_lost_trials
from study.io.records import set_aside_lost_records
from study.tune.trial import run_trial
from trainables.atomic import atomic_write_text

if TYPE_CHECKING:
    from ray import tune

logger = logging.getLogger(__name__)

#: The trial itself only waits on its fold tasks, which reserve the real resources. It runs on the
#: head node, where a cluster's MLflow server listens on 127.0.0.1 (see docs/cluster.md).
TRIAL_RESOURCES = {"cpu": 0.01, "node:__internal_head__": 0.001}


def prepare_study_dir(config: StudyConfig) -> Path | str:
    """Create the study directory and save the resolved study file in it; refuse a directory of another study.

    Returns the study directory: a ``Path`` if local, the URI string if on object
    storage (``s3://...``, ``file://...``; written through :mod:`study.io.storage`).
    """
    if layout.is_remote(config.storage.study_dir):
        return _prepare_remote_study_dir(config)
    study_dir = Path(config.storage.study_dir)
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"storage.study_dir {study_dir} is not writable ({err.strerror}); choose another with --study-dir") from None
    study_file = layout.study_file(study_dir)
    if layout.tune_dir(study_dir).exists():
        raise UserError(f"{study_dir} already holds a study; continue it with `ser-study resume {study_dir}` or choose another --study-dir")
    atomic_write_text(study_file, config.to_yaml())
    _point_to_shared_cache(config, study_dir)
    return study_dir


def _prepare_remote_study_dir(config: StudyConfig) -> str:
    study_dir = str(layout.location(config.storage.study_dir))
    try:
        probe = storage.join(study_dir, f".write-test-{uuid.uuid4().hex}")
        storage.write_text(probe, "ok")
        storage.delete(probe)
        taken = storage.exists(layout.tune_dir(study_dir))
    except (OSError, ValueError) as err:  # no credentials, no bucket, no permission, a malformed URI
        raise UserError(f"storage.study_dir {study_dir} is not writable ({err}); check the URI and your credentials, or choose another with --study-dir") from None
    if taken:
        raise UserError(f"{study_dir} already holds a study; continue it with `ser-study resume {study_dir}` or choose another --study-dir")
    storage.write_text(layout.study_file(study_dir), config.to_yaml())
    _point_to_shared_cache(config, study_dir)
    return study_dir


def _tune_storage_path(study_dir: Path | str) -> str:
    """Ray Tune's ``storage_path``: a URI passed unchanged, a local directory made absolute."""
    return str(layout.location(study_dir)) if layout.is_remote(study_dir) else str(Path(study_dir).resolve())


def _point_to_shared_cache(config: StudyConfig, study_dir) -> None:
    """With ``storage.cache_dir``, the study reads and builds its phases in that shared cache."""
    if config.storage.cache_dir:
        storage.write_text(layout.cache_pointer(study_dir), str(config.storage.cache_dir) + "\n")


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` or start a local one (dashboard on, bound to 127.0.0.1)."""
    import ray

    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=os.cpu_count())
    except ConnectionError as err:
        raise UserError(f"no Ray cluster answers at --address {address}: {err}; start one with `ray start --head` or `ray up cluster.yaml`, or leave --address out for a local cluster") from None


#: Ray unpacks a job's ``--working-dir`` under this prefix; it may delete the folder while the job still runs.
_RAY_JOB_PACKAGE = "_ray_pkg_"


def _leave_job_package() -> None:
    """Move this process out of a Ray job's unpacked working directory, into the home directory.

    Under ``ray job submit --working-dir .`` the driver starts in that folder;
    Ray may remove it once the job's tasks no longer hold it, and Tune then fails
    resolving a path at the end of the study. Every path of the study is
    absolute by then (the resolved config), so nothing depends on the folder.
    """
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        cwd = _RAY_JOB_PACKAGE  # already gone
    if _RAY_JOB_PACKAGE in cwd:
        os.chdir(Path.home())
        logger.info("left the job's working directory %s for %s (Ray may remove it while the study runs)", cwd, Path.home())


def check_services(config: StudyConfig, address: str | None) -> None:
    """The Ray cluster and the MLflow server answer (before anything is written or started)."""
    check_ray_address(address)
    check_mlflow_server(config.tracking_uri())


def _trainable():
    from ray import tune

    return tune.with_resources(run_trial, TRIAL_RESOURCES)


def run_study(config: StudyConfig, address: str | None = None, callbacks: Sequence[tune.Callback] = (), progress: bool = False) -> tune.ResultGrid:
    """Run a new study to completion and write its report; returns Tune's ``ResultGrid``.

    ``callbacks`` are Tune callbacks run in this (the driver) process, e.g. to
    log or watch trials as they end; ``progress`` adds the live view
    (:class:`~study.tune.progress.StudyProgress`), which a resume keeps.
    """
    from ray import tune

    from study.tune.search import make_scheduler, make_search_alg

    config.check_inputs()  # before Ray starts: data, encoder, layers, folds
    check_services(config, address)
    study_dir = prepare_study_dir(config)
    callbacks = list(callbacks)
    if progress:
        callbacks.append(_progress_view(config, study_dir))

    def new_tuner() -> tune.Tuner:
        return tune.Tuner(
            _trainable(),
            param_space={"study_dir": str(study_dir)},
            tune_config=tune.TuneConfig(
                search_alg=make_search_alg(config, layout.optuna_storage_url(study_dir)),
                scheduler=make_scheduler(config),
                num_samples=config.num_trials(),
                # The trial function keeps no state between calls, so an actor can run trial after trial
                # (search.reuse_actors: the default saves a process start per trial).
                reuse_actors=config.search.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=layout.TUNE_NAME,
                storage_path=_tune_storage_path(study_dir),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=callbacks,
                verbose=0 if progress else 1,
            ),
        )

    return _drive(study_dir, address, new_tuner)


def _progress_view(config: StudyConfig, study_dir: Path | str) -> tune.Callback:
    """The live view, expecting as many builds as the study's plan counts when its space is finite."""
    from study.tune.plan import make_plan
    from study.tune.progress import StudyProgress

    try:
        plan = make_plan(config)
        expected = sum(build for build, _ in plan.counts().values()) if plan.candidates and plan.exhaustive else None
    except Exception as err:  # the view's ETA is a nicety: never a reason not to run
        logger.info("no ETA for the progress view (%s)", err)
        expected = None
    return StudyProgress(str(layout.cache_dir(study_dir)), expected_builds=expected)


def resume_study(study_dir: str | Path, address: str | None = None) -> tune.ResultGrid:
    """Continue an interrupted study from its directory alone: finished trials are kept, cached phases reused."""
    from ray import tune

    study_dir = layout.require_study_dir(study_dir)
    config = load_resolved_study(study_dir)
    config.check_inputs()
    check_services(config, address)
    tune_dir = _tune_storage_path(layout.tune_dir(study_dir))
    if not tune.Tuner.can_restore(tune_dir):
        raise UserError(f"{tune_dir} holds no Tune experiment state to resume; start the study again with `ser-study run`")
    return _drive(study_dir, address, lambda: tune.Tuner.restore(tune_dir, trainable=_trainable(), resume_unfinished=True, resume_errored=False, restart_errored=False))


def _drive(study_dir: str | Path, address: str | None, make_tuner: Callable[[], tune.Tuner]) -> tune.ResultGrid:
    """Join or start Ray, check a fold fits a node, start the study's cache coordinator and its baselines, run the tuner
    to the end, write the report."""
    import ray

    config = load_resolved_study(study_dir)
    connect_ray(address)
    _leave_job_package()
    wait_for_capacity(config, joined=bool(address), nodes=ray.nodes)
    get_coordinator(str(layout.cache_dir(study_dir)))
    baselines = start_baselines(str(study_dir))  # beside the search, sharing its cache and its cluster
    results = make_tuner().fit()
    baselines.join()
    _forget_lost_trials(study_dir, config)
    write_study_report(study_dir)
    return results


def _forget_lost_trials(study_dir: str | Path, config: StudyConfig) -> None:
    """Set aside the records and MLflow runs of trials that Tune's saved state never knew (see ``set_aside_lost_records``),
    and tell FAIL the Optuna trials asked but never run."""
    from ray import tune

    from study.tune.search import fail_unfinished_trials

    fail_unfinished_trials(layout.optuna_storage_url(study_dir), config.name)

    # Tune's own experiment_path drops the scheme of an s3:// study ("bucket/prefix/tune"): name the experiment ourselves.
    known = {trial.trial_id for trial in tune.ExperimentAnalysis(_tune_storage_path(layout.tune_dir(study_dir))).trials}
    set_aside_lost_records(study_dir, known)
    try:
        retire_lost_trials(config.tracking_uri(), config.name, str(config.storage.study_dir), known)  # as run_trial tags it
    except Exception:  # MLflow trouble never fails a finished study; the report does not read MLflow
        logger.exception("could not look for, or delete, the MLflow runs of lost trials")
