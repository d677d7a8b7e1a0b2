"""Can the cluster ever run a fold? Checked after joining Ray, before the first trial starts.

A fold task (``executor: local``) needs ``resources.cpus_per_fold`` CPUs and
``gpus_per_fold`` GPUs on one node; with ``executor: ray`` each Ray Train
worker needs ``resources.train.cpus_per_worker`` and ``gpus_per_worker``. If no
alive node has that much in total, Ray would keep the task pending forever
with no message. A cluster Ray started for this driver cannot grow: that fails
at once. A cluster joined with ``--address`` may be autoscaling (``ray up``
starts GPU workers on demand): the driver says what it waits for and fails
after ``resources.node_wait_s`` if no such node has joined by then.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from study.config.study import StudyConfig
from study.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demand:
    """What one unit of a study's work needs on a single node, and the fields that set it."""

    cpus: float
    gpus: float
    what: str
    fields: str


def fold_demand(config: StudyConfig) -> Demand:
    """The largest single-node demand of the study: a fold task, or a Ray Train worker with ``executor: ray``."""
    resources = config.resources
    if resources.executor == "ray":
        train = resources.train
        return Demand(train.cpus_per_worker, train.gpus_per_worker, "a Ray Train worker", "resources.train.cpus_per_worker / gpus_per_worker")
    return Demand(resources.cpus_per_fold, resources.gpus_per_fold, "a fold task", "resources.cpus_per_fold / gpus_per_fold")


def fitting_nodes(demand: Demand, nodes: Sequence[Mapping]) -> list[str]:
    """The ids of the alive ``nodes`` (``ray.nodes()`` entries) whose total resources hold ``demand``."""
    fits = []
    for node in nodes:
        total = node.get("Resources") or {}
        if node.get("Alive") and total.get("CPU", 0.0) >= demand.cpus and total.get("GPU", 0.0) >= demand.gpus:
            fits.append(node.get("NodeID", "?"))
    return fits


def describe_nodes(nodes: Sequence[Mapping]) -> str:
    alive = [n for n in nodes if n.get("Alive")]
    return ", ".join(f"{n.get('NodeManagerAddress', '?')}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU" for n in alive) or "none"


def wait_for_capacity(
    config: StudyConfig,
    joined: bool,
    nodes: Callable[[], Sequence[Mapping]],
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 10.0,
) -> None:
    """Return once some node can run the study's work; raise :class:`UserError` saying why not otherwise.

    ``joined``: the cluster was joined with ``--address`` (it may autoscale), so
    wait up to ``resources.node_wait_s``; a cluster started here fails at once.
    """
    demand = fold_demand(config)
    seen = nodes()
    if fitting_nodes(demand, seen):
        return
    problem = (
        f"{demand.what} needs {demand.cpus:g} CPU and {demand.gpus:g} GPU on one node ({demand.fields}), "
        f"but no node of the cluster has that much (nodes: {describe_nodes(seen)})"
    )
    if not joined:
        raise UserError(f"{problem}; lower {demand.fields.split(' / ')[0]} or run on a cluster with such nodes (--address)")
    wait_s = config.resources.node_wait_s
    logger.warning("%s; waiting up to %.0f s (resources.node_wait_s) for the autoscaler or a worker node to join", problem, wait_s)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        seen = nodes()
        if fitting_nodes(demand, seen):
            logger.info("a node that fits %s joined", demand.what)
            return
    raise UserError(
        f"{problem} after waiting {wait_s:.0f} s (resources.node_wait_s): start a worker node that has it "
        "(`ray start --address=<head>:6379 --num-cpus=N`, with RAY_AUTH_MODE=token and the head's token), "
        f"check the autoscaler (`ray status`), or lower {demand.fields}"
    )
