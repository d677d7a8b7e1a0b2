"""The phase artifact cache: one directory per phase result, keyed by what determines it.

A key hashes the phase name, its parameters, the upstream keys, the exact
utterance ids it uses (via their fingerprint), the encoder's content id and
the phase's code version. An artifact exists only once complete (phases write
to a temporary name and rename), so a present directory with a readable record
is a hit. A directory whose record cannot be read is moved aside as corrupt and
rebuilt. Every hit and build is appended to ``events.jsonl`` for accounting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from trainables.phases.artifacts import PHASE_CODE_VERSION, RECORD_FILE, to_plain

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"


def artifact_key(phase: str, spec: dict[str, Any]) -> str:
    """The cache key of a phase result: a hash of the phase, its code version and ``spec``."""
    payload = json.dumps({"phase": phase, "code_version": PHASE_CODE_VERSION[phase], "spec": to_plain(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


class Leases(Protocol):
    """Who builds a missing artifact when several chains want it (see :mod:`study.coordinator`)."""

    def try_acquire(self, key: str) -> bool: ...

    def wait(self) -> None: ...

    def holding(self, key: str): ...


class ArtifactCache:
    """Phase artifacts under ``root/<phase>/<key>``.

    With ``leases`` (a :class:`study.coordinator.LeaseClient`), concurrent chains
    that miss the same key get one build: the others wait for it.
    """

    def __init__(self, root: str | Path, leases: Leases | None = None):
        self.root = Path(root)
        self.leases = leases

    def path(self, phase: str, key: str) -> Path:
        return self.root / phase / key

    def is_complete(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        try:
            json.loads((path / RECORD_FILE).read_text())
            return True
        except (OSError, ValueError):
            corrupt = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            logger.warning("artifact %s is corrupt (unreadable %s); moved to %s and rebuilding", path, RECORD_FILE, corrupt)
            path.rename(corrupt)
            return False

    def log_event(self, phase: str, key: str, event: str, **extra: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"phase": phase, "key": key, "event": event, "pid": os.getpid(), "time": time.time(), **extra})
        with open(self.root / EVENTS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def get_or_build(self, phase: str, spec: dict[str, Any], build: Callable[[Path], None]) -> tuple[str, Path]:
        """The artifact of ``phase`` for ``spec``, built by ``build(path)`` if not cached. Returns (key, path)."""
        key = artifact_key(phase, spec)
        path = self.path(phase, key)
        waited = 0.0
        while True:
            if self.is_complete(path):
                self.log_event(phase, key, "hit", **({"waited_seconds": round(waited, 1)} if waited else {}))
                return key, path
            if self.leases is None:
                self._build(phase, key, path, build)
                return key, path
            if self.leases.try_acquire(f"{phase}/{key}"):
                with self.leases.holding(f"{phase}/{key}"):
                    if not self.is_complete(path):  # built by another chain between our check and our lease
                        self._build(phase, key, path, build)
                        return key, path
                continue
            if not waited:
                logger.info("%s %s is being built by another trial; waiting for it", phase, key)
            started = time.monotonic()
            self.leases.wait()
            waited += time.monotonic() - started

    def _build(self, phase: str, key: str, path: Path, build: Callable[[Path], None]) -> None:
        started = time.time()
        build(path)
        if not self.is_complete(path):
            raise RuntimeError(f"phase {phase} finished without writing its artifact {path}")
        self.log_event(phase, key, "built", seconds=time.time() - started)

    def events(self) -> list[dict[str, Any]]:
        path = self.root / EVENTS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
