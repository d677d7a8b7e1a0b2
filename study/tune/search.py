"""The Tune search algorithm and scheduler of a study: Optuna (TPE or grid) behind Ray Tune.

* :func:`make_search_alg` builds a :class:`CompleteOnlyOptunaSearch` over the
  study's space, wrapped in a ``ConcurrencyLimiter(search.max_concurrent)``.
* :func:`make_scheduler` gives ``None`` or a ``MedianStoppingRule`` on
  ``val_ua_running_mean`` with ``folds_done`` as time.

The space is Optuna's define-by-run (:class:`DefineByRun`): the method first,
then only that method's parameters, each an Optuna distribution: a choice is a
``CategoricalDistribution``, an ``{int: ...}`` range an ``IntDistribution``, a
``{float: ...}`` range a ``FloatDistribution``, and a **fixed value a
one-element** ``CategoricalDistribution``, so that every Optuna trial carries
all its method's parameters and the trainable reads one flat config
(``{"method": ..., <parameters>}``). A grid walks the methods' candidates once each.

Why a subclass of ``OptunaSearch``: when a Tune scheduler stops a trial early,
Tune calls ``on_trial_complete`` with the trial's last (partial) result, and
Ray's ``OptunaSearch`` tells Optuna the trial is COMPLETE with that partial
score (e.g. the mean validation UA of 2 folds out of 5). TPE would then model
the space from scores of different quality. Our trials report ``folds_done``
and ``folds_total`` in every result; :class:`CompleteOnlyOptunaSearch` tells
Optuna COMPLETE only when all folds are in, PRUNED for a trial stopped early
(TPE ranks pruned trials below every complete one, by how far they got), and
FAIL for a trial that errored (Optuna's own state for errors; TPE ignores it).

Tune requirements this module relies on (``study.tune.runner`` and ``study.tune.trial``):
every result a trial reports must hold ``folds_done``, ``folds_total`` and,
with median stopping, ``val_ua_running_mean``; with Tune's strict metric
checking on (the default) every result must also hold the objective metric
(e.g. ``val_ua_mean``, the running mean while folds are missing), or set
``TUNE_DISABLE_STRICT_METRIC_CHECKING=1``. ``tune.TuneConfig`` must not get
``metric``/``mode`` when the scheduler is set: the searcher and the scheduler
carry their own.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import MedianStoppingRule
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from study.config.base import StudyConfigError
from study.config.space import CANDIDATE, METHOD, Choice, FloatRange, IntRange, ParamSpec
from study.config.study import StudyConfig

logger = logging.getLogger(__name__)

FOLDS_DONE = "folds_done"
FOLDS_TOTAL = "folds_total"
#: What the median stopping rule compares after each fold.
RUNNING_METRIC = "val_ua_running_mean"


def distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution of one parameter spec (a fixed value: one-element categorical)."""
    if isinstance(spec, Choice):
        return CategoricalDistribution(list(spec.choice))
    if isinstance(spec, IntRange):
        low, high = spec.bounds
        return IntDistribution(low, high, log=spec.log, step=spec.step)
    if isinstance(spec, FloatRange):
        low, high = spec.bounds
        return FloatDistribution(low, high, log=spec.log)
    return CategoricalDistribution([spec])


def _method(config: StudyConfig, method: str | None) -> str:
    return method or config.search.space.methods()[0]


def optuna_space(config: StudyConfig, method: str | None = None) -> dict[str, BaseDistribution]:
    """The parameters of ``method`` (default: the study's first) as Optuna distributions."""
    return {name: distribution(spec) for name, spec in config.search.space.method_params(_method(config, method)).items()}


def grid_points(config: StudyConfig, method: str | None = None) -> dict[str, list[Any]]:
    """The grid (``{name: values}``) of ``method`` (default: the study's first), whose parameters are all fixed or choices."""
    method = _method(config, method)
    grid = config.search.space.grid(method)
    if grid is None:
        ranges = [name for name, spec in config.search.space.method_params(method).items() if isinstance(spec, (IntRange, FloatRange))]
        raise config.error(f"search.space.{ranges[0]}", "is a range: a grid needs every parameter fixed or a choice")
    return grid


def grid_size(config: StudyConfig) -> int:
    """Number of grid points of the space: the sum over the study's methods of the product of their choices."""
    for method in config.search.space.methods():
        grid_points(config, method)  # a range is an error naming it
    return int(config.search.space.grid_size() or 0)


class DefineByRun:
    """The search space as Optuna's define-by-run function: a method first, then only that method's parameters.

    TPE: ``method`` is suggested when the study has several (else fixed), then
    each parameter of the chosen method (a fixed one as a one-element
    categorical, so every Optuna trial carries all its method's parameters).
    Grid: one ``candidate`` index into :meth:`SearchSpace.candidates` (the
    methods' grids one after the other), which Optuna's grid sampler walks
    through once in a seeded order; the candidate's parameters are returned
    as constants. A plain class, not a closure, so the searcher's state pickles.
    """

    def __init__(self, config: StudyConfig):
        space = config.search.space
        self.methods = space.methods()
        self.grid = config.search.algorithm == "grid"
        self.candidates = space.candidates() if self.grid else []
        self.spaces = {} if self.grid else {method: optuna_space(config, method) for method in self.methods}

    def grid_space(self) -> dict[str, list[int]]:
        """The grid sampler's own space: the candidate indices."""
        return {CANDIDATE: list(range(len(self.candidates)))}

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        if self.grid:
            return dict(self.candidates[trial.suggest_categorical(CANDIDATE, list(range(len(self.candidates))))])
        method = trial.suggest_categorical(METHOD, self.methods) if len(self.methods) > 1 else self.methods[0]
        for name, dist in self.spaces[method].items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        return {METHOD: method}


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """``TPESampler`` (seeded, constant liar for concurrent trials) or a seeded ``GridSampler`` over the candidates."""
    search = config.search
    if search.algorithm == "grid":
        grid_size(config)  # a range is an error naming it
        return optuna.samplers.GridSampler(DefineByRun(config).grid_space(), seed=search.seed)
    with warnings.catch_warnings():  # constant_liar is experimental in Optuna 4 (stable in 5)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials, constant_liar=True)


def running_metric(metric: str) -> str:
    """The name a trial reports a fold-mean metric under while folds are missing (val_ua_mean -> val_ua_running_mean)."""
    return metric[: -len("_mean")] + "_running_mean" if metric.endswith("_mean") else metric


def is_complete(result: Mapping[str, Any] | None) -> bool:
    """True when ``result`` covers every fold (``folds_done >= folds_total``)."""
    if not result:
        return False
    done, total = result.get(FOLDS_DONE), result.get(FOLDS_TOTAL)
    if done is None or total is None:
        return False
    try:
        return int(total) > 0 and int(done) >= int(total)
    except (TypeError, ValueError):
        return False


class CompleteOnlyOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna COMPLETE only for trials scored on every fold.

    * all folds done, no error: COMPLETE with the objective (Ray's behaviour);
    * error: FAIL (no value; Ray does the same when Tune reports the error);
    * anything else (stopped early by the scheduler, or the Tuner stopped it):
      PRUNED, no value told. The final partial result is first reported as an
      intermediate value (Tune skips ``on_trial_result`` for the result a
      scheduler stops on), and Optuna keeps the last intermediate value (the
      running mean at the last fold count) as the pruned trial's value; TPE
      ranks pruned trials below every complete one, by folds done, then value.

    Intermediate results are reported to the Optuna trial at step
    ``folds_done`` (Ray uses ``training_iteration``), with the objective metric
    if present, else its running-mean name; a result with neither is skipped
    instead of raising ``KeyError``.

    With an RDB ``storage`` (a local study's ``optuna.db``) the Optuna study
    lives in that database, so ``optuna.load_study`` and ``optuna-dashboard``
    open it while the search runs; Tune's checkpoint of this searcher pickles
    the storage's URL. An Optuna trial still RUNNING that the checkpoint does
    not know was asked after Tune's last checkpoint, before the driver died:
    Tune will not run it again, so :meth:`restore` (``ser-study resume``) keeps
    it and :meth:`suggest` hands it, with its parameters, to the next new Tune
    trial. Telling it FAIL and asking a new one would lose its point: a grid
    sampler counts a FAIL trial's grid point as visited and never asks it
    again. :func:`fail_unfinished_trials` marks FAIL any left when the study ends.

    Uses Optuna's private ``FrozenTrial._trial_id`` (to reopen a trial) and
    ``OptunaSearch``'s private ``_ot_trials`` (Tune trial id -> Optuna
    trial), ``_ot_study`` and ``_completed_trials`` (Ray 2.60).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost: list[optuna.trial.FrozenTrial] = []  # see restore

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._ot_study is None:
            return
        known = {trial.number for trial in self._ot_trials.values()}
        self._lost = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known]
        for frozen in self._lost:
            logger.info("Optuna trial %d was asked after Tune's last checkpoint: the next new trial runs its parameters", frozen.number)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._lost:
            frozen = self._lost.pop(0)
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            logger.info("Tune trial %s runs Optuna trial %d (asked before the driver died)", trial_id, frozen.number)
        return super().suggest(trial_id)  # the define-by-run space reads an existing trial's parameters back

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = result.get(self.metric, result.get(running_metric(self.metric)))
        if value is None:
            return
        try:
            step = int(result.get(FOLDS_DONE, result.get(TRAINING_ITERATION, 0)))
            if step in self._reported_steps(trial_id):
                return  # Optuna keeps the first value of a step (and warns about a second)
            self._ot_trials[trial_id].report(float(value), step)
        except (TypeError, ValueError) as err:  # a NaN or a non-number: keep searching
            logger.warning("trial %s: intermediate value %r not reported to Optuna (%s)", trial_id, value, err)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            logger.warning("completion of trial %s, which this searcher never suggested: ignored", trial_id)
            return
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)  # logs the repeat
        if not error and is_complete(result):
            value = result.get(self.metric) if result else None
            if value is None or not math.isfinite(float(value)):
                logger.warning("trial %s finished every fold without a finite %s (%r): told Optuna FAIL", trial_id, self.metric, value)
                self._tell(trial_id, TrialState.FAIL)
                return
            return super().on_trial_complete(trial_id, result=result, error=False)
        if error:
            self._tell(trial_id, TrialState.FAIL)
            return
        done = result.get(FOLDS_DONE) if result else None
        total = result.get(FOLDS_TOTAL) if result else None
        if result:  # a scheduler's STOP skips on_trial_result for the stopping result: keep it as the last step
            self.on_trial_result(trial_id, result)
        logger.info("trial %s ended after %s of %s folds: told Optuna PRUNED, not COMPLETE", trial_id, done, total)
        self._tell(trial_id, TrialState.PRUNED)

    def _reported_steps(self, trial_id: str) -> set[int]:
        number = self._ot_trials[trial_id].number
        frozen = next((t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number), None)
        return set(frozen.intermediate_values) if frozen is not None else set()

    def _tell(self, trial_id: str, state: TrialState) -> None:
        try:
            self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
        except Exception as exc:  # as OptunaSearch: a refused tell must not end the study
            logger.warning("trial %s: Optuna refused %s (%s)", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)


def fail_unfinished_trials(storage_url: str | None, study_name: str) -> None:
    """Tell FAIL every Optuna trial of a finished study still RUNNING in its storage (asked, never run)."""
    if storage_url is None:
        return
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:  # the search never created its study (no trial was asked)
        return
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.info("Optuna trial %d was asked but never run: told FAIL", frozen.number)
        study.tell(frozen.number, None, state=TrialState.FAIL)


def make_searcher(config: StudyConfig, storage_url: str | None = None) -> CompleteOnlyOptunaSearch:
    """The Optuna searcher of ``config``, not yet concurrency-limited: its Optuna study is named after the study,
    in memory or in the RDB storage at ``storage_url`` (a study's :func:`~study.io.layout.optuna_storage_url`)."""
    return CompleteOnlyOptunaSearch(
        space=DefineByRun(config),
        metric=config.objective.metric,
        mode=config.objective.mode,
        sampler=make_sampler(config),
        study_name=config.name,
        storage=optuna.storages.RDBStorage(storage_url) if storage_url else None,
    )


def make_search_alg(config: StudyConfig, storage_url: str | None = None) -> ConcurrencyLimiter:
    """The study's Tune search algorithm: :func:`make_searcher` behind ``ConcurrencyLimiter(max_concurrent)``."""
    return ConcurrencyLimiter(make_searcher(config, storage_url), max_concurrent=config.search.max_concurrent)


def make_scheduler(config: StudyConfig) -> MedianStoppingRule | None:
    """None, or the median stopping rule on the running mean of validation UA after each fold.

    A trial is stopped at ``folds_done = t >= grace_folds`` when its best running
    validation UA so far is below the median, over at least ``min_trials`` other
    trials that reached ``t`` folds, of their mean running validation UA up to
    ``t``. It compares validation UA (mode max) whatever the objective is.
    """
    search = config.search
    if search.early_stopping == "none":
        return None
    if search.early_stopping != "median":
        raise StudyConfigError(f"{config.source}: search.early_stopping: unknown rule {search.early_stopping!r}; allowed: none, median", source=config.source, field="search.early_stopping")
    return MedianStoppingRule(
        time_attr=FOLDS_DONE,
        metric=RUNNING_METRIC,
        mode="max",
        grace_period=search.grace_folds,
        min_samples_required=search.min_trials,
        hard_stop=True,
    )
