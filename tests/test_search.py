"""The Tune search algorithm: Optuna spaces, partial trials told PRUNED (not COMPLETE), grids, the scheduler."""

from __future__ import annotations

import itertools

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import GridSampler, TPESampler
from optuna.trial import TrialState
from ray.tune.schedulers import MedianStoppingRule
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from study.config.base import StudyConfigError
from study.config.loading import load_study, shipped_studies
from study.tune.search import (
    CompleteOnlyOptunaSearch,
    fail_unfinished_trials,
    grid_points,
    grid_size,
    is_complete,
    make_sampler,
    make_scheduler,
    make_search_alg,
    make_searcher,
    optuna_space,
    running_metric,
)

SHIPPED = shipped_studies()


def config(name: str = "smoke", *overrides: str):
    return load_study(SHIPPED[name], list(overrides))


def partial(value: float, done: int = 1, total: int = 2) -> dict:
    return {"folds_done": done, "folds_total": total, "val_ua_running_mean": value, "val_ua_mean": value, "training_iteration": done}


def complete(value: float, total: int = 2) -> dict:
    return {**partial(value, total, total), "test_ua_mean": 0.5}


def ot_trial(searcher, trial_id: str):
    number = searcher._ot_trials[trial_id].number
    return searcher._ot_study.trials[number]


def test_space_of_the_smoke_study():
    space = optuna_space(config())
    assert space["layer"] == CategoricalDistribution([1, 2])
    assert space["clusters"] == CategoricalDistribution([4, 8])
    assert space["mask_ratio"] == CategoricalDistribution([0.2])  # fixed: a one-element categorical
    assert space["pooling"] == CategoricalDistribution(["attention", "average"])


def test_space_of_the_tpe_study():
    space = optuna_space(config("tpe"))
    assert space["layer"] == IntDistribution(1, 12)
    assert space["clusters"] == IntDistribution(20, 300, log=True)
    assert space["mask_ratio"] == FloatDistribution(0.05, 0.8)
    assert isinstance(make_sampler(config("tpe")), TPESampler)


def test_search_alg_suggests_candidates_of_the_space():
    alg = make_search_alg(config("smoke", "search.max_concurrent=3"))
    assert isinstance(alg, ConcurrencyLimiter) and isinstance(alg.searcher, CompleteOnlyOptunaSearch)
    assert alg.searcher.metric == "val_ua_mean" and alg.searcher.mode == "max"
    for index in range(3):
        params = alg.suggest(f"t{index}")
        assert set(params) == {"method", "layer", "clusters", "mask_ratio", "pooling"} and params["method"] == "alignment"
        assert params["layer"] in (1, 2) and params["clusters"] in (4, 8) and params["mask_ratio"] == 0.2
        assert params["pooling"] in ("attention", "average")
    assert alg.suggest("t3") is None  # max_concurrent reached


def test_concurrency_limit_frees_a_slot_on_completion():
    alg = make_search_alg(config())  # smoke: max_concurrent 1
    assert alg.suggest("a") is not None
    assert alg.suggest("b") is None
    alg.on_trial_complete("a", complete(0.6))
    assert alg.suggest("b") is not None


def test_partial_result_is_told_pruned_and_complete_result_complete():
    alg = make_search_alg(config("smoke", "search.max_concurrent=4"))
    searcher = alg.searcher
    for trial_id in ("stopped", "finished", "errored", "removed"):
        alg.suggest(trial_id)
    alg.on_trial_result("stopped", partial(0.41))
    alg.on_trial_complete("stopped", partial(0.41))  # what Tune passes when a scheduler stops a trial
    alg.on_trial_result("finished", partial(0.55))
    alg.on_trial_result("finished", complete(0.62))
    alg.on_trial_complete("finished", complete(0.62))
    alg.on_trial_complete("errored", error=True)
    alg.on_trial_complete("removed")  # a pending trial Tune dropped: no result at all

    stopped = ot_trial(searcher, "stopped")
    assert stopped.state is TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.41}  # reported at step folds_done
    assert stopped.value == 0.41  # Optuna keeps the last intermediate value of a pruned trial
    finished = ot_trial(searcher, "finished")
    assert finished.state is TrialState.COMPLETE and finished.value == pytest.approx(0.62)
    assert finished.intermediate_values == {1: 0.55, 2: 0.62}
    assert ot_trial(searcher, "errored").state is TrialState.FAIL
    assert ot_trial(searcher, "removed").state is TrialState.PRUNED
    assert [t.state for t in searcher._ot_study.get_trials(states=(TrialState.COMPLETE,))] == [TrialState.COMPLETE]


def test_result_a_scheduler_stopped_on_is_kept_as_the_last_step():
    """Tune calls on_trial_complete, not on_trial_result, with the result a scheduler stops a trial on."""
    searcher = make_searcher(config("tpe"))
    searcher.suggest("t")
    searcher.on_trial_result("t", partial(0.3, 1, 5))
    searcher.on_trial_complete("t", partial(0.35, 2, 5))
    trial = ot_trial(searcher, "t")
    assert trial.state is TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.3, 2: 0.35} and trial.value == 0.35


def test_plain_optuna_search_would_tell_the_partial_score_complete():
    """The Ray behaviour CompleteOnlyOptunaSearch exists to fix (if this fails, Ray fixed it upstream)."""
    cfg = config()
    searcher = OptunaSearch(space=optuna_space(cfg), metric="val_ua_mean", mode="max", sampler=make_sampler(cfg))
    searcher.suggest("stopped")
    searcher.on_trial_complete("stopped", partial(0.41))
    assert searcher._ot_study.trials[0].state is TrialState.COMPLETE


def test_result_without_fold_counts_is_not_complete():
    searcher = make_searcher(config())
    searcher.suggest("t")
    searcher.on_trial_complete("t", {"val_ua_mean": 0.7})
    assert ot_trial(searcher, "t").state is TrialState.PRUNED


def test_complete_result_without_a_finite_objective_fails():
    searcher = make_searcher(config())
    searcher.suggest("t")
    searcher.on_trial_complete("t", {**complete(0.5), "val_ua_mean": float("nan")})
    assert ot_trial(searcher, "t").state is TrialState.FAIL


def test_intermediate_result_without_the_metric_is_skipped():
    searcher = make_searcher(config())
    searcher.suggest("t")
    searcher.on_trial_result("t", {"folds_done": 1, "folds_total": 2, "val_ua_running_mean": 0.3})  # running name
    searcher.on_trial_result("t", {"folds_done": 1, "folds_total": 2})  # nothing to report: no KeyError
    assert ot_trial(searcher, "t").intermediate_values == {1: 0.3}


def test_tpe_keeps_sampling_with_pruned_and_failed_trials():
    alg = make_search_alg(config("tpe", "search.startup_trials=2", "search.max_concurrent=1"))
    for index in range(8):
        params = alg.suggest(f"t{index}")
        assert 1 <= params["layer"] <= 12 and 20 <= params["clusters"] <= 300 and 0.05 <= params["mask_ratio"] <= 0.8
        if index % 3 == 0:
            alg.on_trial_complete(f"t{index}", partial(0.3 + index / 100, 2, 5))
        elif index % 3 == 1:
            alg.on_trial_complete(f"t{index}", complete(0.5 + index / 100, 5))
        else:
            alg.on_trial_complete(f"t{index}", error=True)
    states = [t.state for t in alg.searcher._ot_study.trials]
    assert states.count(TrialState.PRUNED) == 3 and states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 2


def test_tpe_suggestions_follow_the_seed():
    def first(seed: int) -> list[dict]:
        searcher = make_searcher(config("tpe", f"search.seed={seed}"))
        return [searcher.suggest(f"t{i}") for i in range(3)]

    assert first(3) == first(3)


def test_grid_suggests_every_point_once():
    cfg = config("paper_grid")
    assert grid_size(cfg) == 18 == cfg.num_trials()
    searcher = make_searcher(cfg)
    assert isinstance(searcher._ot_study.sampler, GridSampler)
    points = []
    for index in range(18):
        params = searcher.suggest(f"t{index}")
        points.append((params["layer"], params["clusters"], params["mask_ratio"], params["pooling"]))
        searcher.on_trial_complete(f"t{index}", complete(0.6, 5) if index % 2 else partial(0.4, 2, 5))
    expected = set(itertools.product([6, 9, 11], [50, 100, 150], [0.2], ["attention", "average"]))
    assert len(points) == 18 and set(points) == expected


def test_grid_of_the_smoke_space():
    cfg = config("smoke", "search.algorithm=grid", "search.num_trials=null")
    assert grid_size(cfg) == 8 == cfg.num_trials()
    assert grid_points(cfg)["mask_ratio"] == [0.2]
    searcher = make_searcher(cfg)
    points = {tuple(searcher.suggest(f"t{i}").values()) for i in range(8)}
    assert len(points) == 8


def test_grid_points_of_a_range_space_is_an_error():
    with pytest.raises(StudyConfigError, match=r"search\.space\.layer: is a range"):
        grid_points(config("tpe"))


def test_scheduler():
    assert make_scheduler(config()) is None
    scheduler = make_scheduler(config("tpe"))
    assert isinstance(scheduler, MedianStoppingRule)
    assert scheduler.metric == "val_ua_running_mean" and scheduler._time_attr == "folds_done"
    assert scheduler._grace_period == 2 and scheduler._min_samples_required == 3 and scheduler._mode == "max"


def test_searcher_state_survives_save_and_restore(tmp_path):
    cfg = config("smoke", "search.max_concurrent=4")
    searcher = make_searcher(cfg)
    searcher.suggest("a")
    searcher.on_trial_complete("a", partial(0.4))
    searcher.suggest("b")
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(cfg)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("b", complete(0.7))
    assert [t.state for t in restored._ot_study.trials] == [TrialState.PRUNED, TrialState.COMPLETE]


def test_helpers():
    assert running_metric("val_ua_mean") == "val_ua_running_mean"
    assert running_metric("test_wa_mean") == "test_wa_running_mean"
    assert is_complete({"folds_done": 5, "folds_total": 5})
    assert not is_complete({"folds_done": 4, "folds_total": 5})
    assert not is_complete({"val_ua_mean": 1.0}) and not is_complete(None)


def test_the_optuna_study_lives_in_its_storage_and_survives_a_restore(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = config("smoke", "search.max_concurrent=4")
    searcher = make_searcher(cfg, url)
    searcher.suggest("a")
    searcher.on_trial_complete("a", complete(0.6))
    searcher.suggest("b")
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("c")  # asked after the checkpoint: the driver dies before Tune saves again

    loaded = optuna.load_study(study_name=cfg.name, storage=url)  # what optuna-dashboard opens
    assert [t.state for t in loaded.trials] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING]
    assert loaded.trials[0].value == 0.6 and set(loaded.trials[0].params) >= {"layer", "clusters", "pooling"}

    lost_params = loaded.trials[2].params
    restored = make_searcher(cfg)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("b", complete(0.7))
    # Tune never runs c again: its next new trial runs c's Optuna trial, with c's parameters.
    assert restored.suggest("d") == {"method": "alignment", **lost_params}
    restored.on_trial_complete("d", complete(0.8))
    restored.suggest("e")
    fail_unfinished_trials(url, cfg.name)  # the study ended with e asked and never run
    trials = optuna.load_study(study_name=cfg.name, storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert [t.value for t in trials[:3]] == [0.6, 0.7, 0.8]


def test_a_grid_point_asked_before_the_driver_died_is_run_after_the_restore(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = config("smoke", "search.algorithm=grid", "search.space.layer={choice: [1]}", "search.space.pooling={choice: [average]}", "search.num_trials=2")
    searcher = make_searcher(cfg, url)
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", complete(0.6))
    searcher.save(str(tmp_path / "searcher.pkl"))
    second = searcher.suggest("b")  # the driver dies before Tune saves again
    assert first != second

    restored = make_searcher(cfg, url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("c") == second  # not a FAIL that the grid sampler would count as visited
    restored.on_trial_complete("c", complete(0.7))
    trials = optuna.load_study(study_name=cfg.name, storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
