"""A study whose folds fit no node fails with what is missing, at once or after waiting for a node to join."""

from __future__ import annotations

import pytest

from study.config.loading import load_study, shipped_studies
from study.errors import UserError
from study.tune.capacity import fold_demand, wait_for_capacity


def node(cpus: float, gpus: float = 0.0, alive: bool = True, name: str = "10.0.0.1") -> dict:
    return {"Alive": alive, "NodeID": f"id-{name}", "NodeManagerAddress": name, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def config(*sets: str):
    return load_study(shipped_studies()["smoke"], list(sets))


def test_a_fold_that_fits_a_node_starts_at_once():
    slept = []
    wait_for_capacity(config("resources.cpus_per_fold=1"), joined=True, nodes=lambda: [node(1)], sleep=slept.append)
    assert slept == []


def test_on_a_local_ray_a_fold_too_big_for_every_node_fails_at_once_naming_the_field():
    with pytest.raises(UserError, match=r"a fold task needs 2 CPU and 0 GPU on one node \(resources.cpus_per_fold / gpus_per_fold\).*10.0.0.1: 1 CPU"):
        wait_for_capacity(config("resources.cpus_per_fold=2"), joined=False, nodes=lambda: [node(1), node(8, alive=False)])


def test_on_a_joined_cluster_it_waits_for_a_node_and_goes_on_when_one_joins():
    seen = iter([[node(1)], [node(1)], [node(1), node(4, 1, name="10.0.0.2")]])
    slept = []
    wait_for_capacity(config("resources.gpus_per_fold=1"), joined=True, nodes=lambda: next(seen), sleep=slept.append, poll_s=5)
    assert slept == [5, 5]


def test_on_a_joined_cluster_it_gives_up_after_node_wait_s():
    with pytest.raises(UserError, match=r"after waiting 0 s \(resources.node_wait_s\).*ray start --address"):
        wait_for_capacity(config("resources.gpus_per_fold=1", "resources.node_wait_s=0"), joined=True, nodes=lambda: [node(1)], sleep=lambda s: None)


def test_with_the_ray_executor_the_demand_is_a_train_worker():
    demand = fold_demand(config("resources.executor=ray", "resources.train.gpus_per_worker=1", "resources.train.cpus_per_worker=4"))
    assert (demand.cpus, demand.gpus, demand.what) == (4, 1, "a Ray Train worker")
