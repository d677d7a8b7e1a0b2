"""The fold task: one fold's chain of phases as a Ray task, with the resources the study gives a fold."""

from __future__ import annotations

import socket
from functools import cache
from typing import Any

from study.cache.leases import LeaseClient, get_coordinator
from study.cache.store import ArtifactCache
from study.config.loading import load_resolved_study
from study.config.study import StudyConfig
from study.io import layout
from trainables.data.manifest import read_manifest

#: Attempts after the first for a fold whose worker process or node died (a preempted node, the OOM killer).
#: A phase that raises is not retried (Ray's retry_exceptions is off): the trial fails with its cause.
#: A retry finds the phases already built in the cache and resumes the interrupted one from its checkpoint.
FOLD_TASK_RETRIES = 2


def run_fold(study_dir: str, test_session: int, method: str, params: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """One fold's chain of ``method`` with ``params`` (runs as a Ray task). Returns :meth:`~study.cache.chain.FoldResult.to_dict`."""
    import ray

    from study.cache.chain import FoldChain, run_fold_chain
    from trainables.executors import make_executor

    study = load_resolved_study(study_dir)  # imports the study's plugins: their recipes are known here too
    utterances = read_manifest(study.data.manifest)
    cache_root = str(layout.cache_dir(study_dir))  # a URI for a remote study: artifacts are copied to this node's local cache
    # The task id is the same in every attempt of this task: a retry holds the lease its dead attempt held.
    owner = f"fold-task-{ray.get_runtime_context().get_task_id()}"
    cache = ArtifactCache(cache_root, leases=LeaseClient(get_coordinator(cache_root), owner=owner))
    executor = make_executor(study.resources.executor, study.ray_resources(), storage=layout.ray_train_dir(study_dir))
    chain = FoldChain(
        utterances,
        test_session,
        study.protocol(),
        method,
        params,
        study.phase_settings(),
        study.encoder_ref(),
        study.classes(utterances),
        embed_layers=study.embedding_layers(),
        seed=seed,
    )
    result = run_fold_chain(chain, cache, executor)
    context = ray.get_runtime_context()
    result.node = f"{socket.gethostname()} {context.get_node_id()[:12]}" if ray.is_initialized() else socket.gethostname()
    return result.to_dict()


@cache
def _remote_run_fold():
    """:func:`run_fold` as a Ray remote function, made once: each ``ray.remote(fn)`` is a new function that Ray exports and its workers load again."""
    import ray

    return ray.remote(max_retries=FOLD_TASK_RETRIES)(run_fold)


def fold_task(study: StudyConfig):
    """The fold task with the resources the study gives a fold, outside the trial's placement group."""
    if study.resources.executor == "ray":
        # The fold only drives Ray Train jobs and tasks, which reserve their own resources.
        resources = {"num_cpus": 0.01, "num_gpus": 0}
    else:
        resources = {"num_cpus": study.resources.cpus_per_fold, "num_gpus": study.resources.gpus_per_fold}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return _remote_run_fold().options(**resources, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))


