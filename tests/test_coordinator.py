"""One build per artifact across concurrent chains, and no wait forever on a dead builder."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray

from study.cache.store import ArtifactCache, artifact_key
from study.cache.leases import CacheCoordinator, LeaseClient, get_coordinator


def test_a_lease_is_exclusive_until_released_or_expired():
    coordinator = CacheCoordinator(lease_seconds=0.2)
    assert coordinator.acquire("tapt/k", "a")
    assert not coordinator.acquire("tapt/k", "b")
    assert coordinator.renew("tapt/k", "a") and not coordinator.renew("tapt/k", "b")
    coordinator.release("tapt/k", "a")
    assert coordinator.acquire("tapt/k", "b")
    time.sleep(0.3)  # b dies without renewing
    assert coordinator.acquire("tapt/k", "c")
    assert coordinator.get_stats() == {"granted": 3, "waited": 1, "expired": 1}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _builder(calls: list, seconds: float):
    def build(out: Path) -> None:
        calls.append(threading.current_thread().name)
        time.sleep(seconds)
        out.mkdir(parents=True)
        (out / "record.json").write_text(json.dumps({"files": {}}))

    return build


def test_concurrent_chains_wanting_one_artifact_build_it_once(ray_local, tmp_path):
    actor = get_coordinator(str(tmp_path))
    calls: list[str] = []
    paths = []

    def chain() -> None:
        cache = ArtifactCache(tmp_path, leases=LeaseClient(actor, poll_seconds=0.05))
        paths.append(cache.get_or_build("tapt", {"fold": 1}, _builder(calls, 0.5))[1])

    threads = [threading.Thread(target=chain, name=f"chain{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1
    events = ArtifactCache(tmp_path).events()
    assert [e["event"] for e in events].count("built") == 1 and [e["event"] for e in events].count("hit") == 2
    assert ray.get(actor.held.remote()) == []


def test_a_builder_that_died_does_not_block_the_others(ray_local, tmp_path):
    actor = get_coordinator(str(tmp_path / "cache"), lease_seconds=0.5)
    dead = LeaseClient(actor, lease_seconds=0.5)
    calls: list[str] = []
    cache = ArtifactCache(tmp_path / "cache", leases=LeaseClient(actor, lease_seconds=0.5, poll_seconds=0.05))
    started = time.monotonic()
    key = artifact_key("tapt", {"fold": 2})
    assert dead.try_acquire(f"tapt/{key}")  # takes the lease, then never renews nor builds: a trial that died
    cache.get_or_build("tapt", {"fold": 2}, _builder(calls, 0.0))
    assert len(calls) == 1 and 0.4 < time.monotonic() - started < 10
    assert ray.get(actor.get_stats.remote())["expired"] >= 1
