"""One computation per artifact across concurrent trials: a coordinating Ray actor.

The artifact cache's files say what is *built*; this actor says what is *being
built*. A fold chain asks :meth:`CacheCoordinator.acquire` before building a
phase: the first asker gets a lease and builds, later askers wait and then read
the finished artifact. A builder renews its lease while it works (a heartbeat
thread); a lease not renewed for ``lease_seconds`` is expired, so a trial that
dies mid-build never leaves the others waiting forever: the next asker takes
the build over. The actor holds no state that matters after a crash: on resume
the files on disk are the truth.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from functools import cache
from typing import Iterator

logger = logging.getLogger(__name__)

#: A build whose heartbeat stops for this long is presumed dead (heartbeats come every third of it).
DEFAULT_LEASE_SECONDS = 60.0
#: How often a waiting chain asks again.
POLL_SECONDS = 1.0


class CacheCoordinator:
    """Leases on artifact keys (run as a named Ray actor; plain class for tests)."""

    def __init__(self, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.lease_seconds = lease_seconds
        self._leases: dict[str, tuple[str, float]] = {}  # key -> (owner, expiry)
        self.stats = {"granted": 0, "waited": 0, "expired": 0}

    def acquire(self, key: str, owner: str) -> bool:
        """True if ``owner`` now holds the lease on ``key`` (and must build), False if another live owner does."""
        now = time.monotonic()
        holder = self._leases.get(key)
        if holder is not None and holder[0] != owner:
            if holder[1] > now:
                self.stats["waited"] += 1
                return False
            self.stats["expired"] += 1
            logger.warning("lease on %s held by %s expired; %s takes the build over", key, holder[0], owner)
        self._leases[key] = (owner, now + self.lease_seconds)
        self.stats["granted"] += 1
        return True

    def renew(self, key: str, owner: str) -> bool:
        """Extend ``owner``'s lease; False if it no longer holds it."""
        holder = self._leases.get(key)
        if holder is None or holder[0] != owner:
            return False
        self._leases[key] = (owner, time.monotonic() + self.lease_seconds)
        return True

    def release(self, key: str, owner: str) -> None:
        holder = self._leases.get(key)
        if holder is not None and holder[0] == owner:
            del self._leases[key]

    def held(self) -> list[str]:
        return sorted(self._leases)

    def get_stats(self) -> dict[str, int]:
        return dict(self.stats)


@cache
def _remote_coordinator():
    """:class:`CacheCoordinator` as a Ray actor class (Ray is imported when a study first needs it)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(CacheCoordinator)


def coordinator_name(cache_root: str) -> str:
    """The actor's name: one coordinator per cache, shared by every trial and study using it."""
    import hashlib

    return "ser-study-cache-" + hashlib.sha256(str(cache_root).encode("utf-8")).hexdigest()[:12]


def get_coordinator(cache_root: str, lease_seconds: float = DEFAULT_LEASE_SECONDS):
    """The named coordinator actor for ``cache_root`` on the connected Ray cluster, created if missing.

    Created on the caller's node when it can be (the study's driver, on the head: a worker node that goes away
    should not take the leases with it); Ray restarts it elsewhere if that node is lost.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return _remote_coordinator().options(name=coordinator_name(cache_root), get_if_exists=True, lifetime="detached", scheduling_strategy=here).remote(lease_seconds)


#: How long a lease request waits for a restarting coordinator before the phase fails.
UNAVAILABLE_PATIENCE_S = 120.0


class LeaseClient:
    """What :class:`study.cache.store.ArtifactCache` uses to wait for, or take, a build."""

    def __init__(self, actor, lease_seconds: float = DEFAULT_LEASE_SECONDS, poll_seconds: float = POLL_SECONDS, owner: str | None = None):
        self.actor = actor
        # A retried Ray task passes the same owner as its first attempt, so it takes its own lease back at once.
        self.owner = owner or uuid.uuid4().hex
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds

    def try_acquire(self, key: str, patience_s: float = UNAVAILABLE_PATIENCE_S) -> bool:
        """Take the lease on ``key`` if free. While the coordinator restarts (its node was lost: Ray starts it again
        elsewhere, with no leases) the call is retried for up to ``patience_s``."""
        import ray
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + patience_s
        while True:
            try:
                return ray.get(self.actor.acquire.remote(key, self.owner))
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                logger.info("the cache coordinator is restarting; asking again for %s", key)
                time.sleep(self.poll_seconds)

    def wait(self) -> None:
        time.sleep(self.poll_seconds)

    @contextmanager
    def holding(self, key: str) -> Iterator[None]:
        """Keep the lease on ``key`` alive while the body builds; release it after."""
        import ray

        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_seconds / 3):
                try:
                    ray.get(self.actor.renew.remote(key, self.owner))
                except Exception:  # the actor restarts; the next beat re-establishes nothing, the build goes on
                    logger.warning("could not renew the lease on %s", key, exc_info=True)

        thread = threading.Thread(target=beat, name=f"lease-{key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            try:
                ray.get(self.actor.release.remote(key, self.owner))
            except Exception:
                logger.warning("could not release the lease on %s", key, exc_info=True)
