"""The phase artifact cache: one directory per phase result, keyed by what determines it.

A key hashes the phase name, its parameters, the upstream keys, the exact
utterance ids it uses (via their fingerprint), the encoder's content id and
the phase's code version.

**Local root** (a plain path): artifacts live in ``root/<phase>/<key>``. An
artifact exists only once complete (phases write to a temporary name and
rename), so a present directory whose files match its ``record.json`` (sizes
and SHA-256, :func:`trainables.phases.artifacts.verify_artifact`) is a hit. A
damaged one (unreadable record, a file missing, truncated or changed) is moved
aside to ``<key>.corrupt-<time>-<id>``, logged as a ``corrupt`` event, and
rebuilt: it is never handed to a phase.

**Remote root** (any URI with a scheme: ``s3://``, ``gs://``, and ``file://``,
which takes the same code path): phases only ever read and write local paths,
so every artifact also has a node-local copy under :attr:`ArtifactCache.local_root`
(``$SER_STUDY_LOCAL_CACHE/<hash of root>``, default
``~/.cache/ser-study/<hash of root>``, or ``local_dir`` given to the
constructor), at ``<local_root>/<phase>/<key>``. A build writes there, then
uploads the tree to ``root/<phase>/<key>/`` with ``record.json`` LAST: the
remote record's presence marks a complete artifact, so a crash mid-upload never
looks complete (the next builder overwrites the partial upload). A hit on a
remote artifact downloads it once into the node-local cache (into a temporary
folder, then renamed) and returns the local path. A remote record that cannot
be parsed, or whose download does not match its record, marks a corrupt
artifact: its prefix is deleted and it is rebuilt (or re-uploaded from an
intact local copy). A node whose upload crashed
re-uploads its complete local copy instead of building again.

**Events.** Every hit and build is one small JSON object,
``root/events/<time_ns>-<uuid>.json`` (object stores cannot append), for local
and remote roots alike; :meth:`ArtifactCache.events` reads them all, plus the
``events.jsonl`` of caches written by older versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

from study.io import layout, storage
from trainables.phases.artifacts import RECORD_FILE, to_plain, verify_artifact
from trainables.phases.kinds import phase_kind

logger = logging.getLogger(__name__)

#: The folder of the event objects under the cache root.
EVENTS_DIR = "events"
#: The append-only event log of older versions (still read by :meth:`ArtifactCache.events`).
EVENTS_FILE = "events.jsonl"
#: The node-local cache base for remote roots (default ``~/.cache/ser-study``).
LOCAL_CACHE_ENV = "SER_STUDY_LOCAL_CACHE"


def artifact_key(phase: str, spec: dict[str, Any]) -> str:
    """The cache key of a phase result: a hash of the phase, its code version and ``spec``."""
    payload = json.dumps({"phase": phase, "code_version": phase_kind(phase).version, "spec": to_plain(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def default_local_root(root: str) -> Path:
    """The node-local copy of the remote cache ``root``: ``<$SER_STUDY_LOCAL_CACHE or ~/.cache/ser-study>/<hash of root>``."""
    base = os.environ.get(LOCAL_CACHE_ENV) or os.path.join("~", ".cache", "ser-study")
    digest = hashlib.sha256(storage.normalize(root).encode("utf-8")).hexdigest()[:16]
    return Path(base).expanduser() / digest


class Leases(Protocol):
    """Who builds a missing artifact when several chains want it (see :mod:`study.cache.leases`)."""

    def try_acquire(self, key: str) -> bool: ...

    def wait(self) -> None: ...

    def holding(self, key: str): ...


class ArtifactCache:
    """Phase artifacts under ``root/<phase>/<key>``; ``root`` a local path or a URI.

    With ``leases`` (a :class:`study.cache.leases.LeaseClient`), concurrent chains
    that miss the same key get one build: the others wait for it. ``local_dir``
    (remote roots only) overrides the node-local copy's folder.
    """

    def __init__(self, root: str | Path, leases: Leases | None = None, local_dir: str | Path | None = None):
        self.remote = storage.is_uri(root)
        self.root: str | Path = storage.normalize(root) if self.remote else Path(root)
        self.leases = leases
        if self.remote:
            self.local_root = Path(local_dir).expanduser() if local_dir is not None else default_local_root(self.root)
        else:
            self.local_root = self.root

    # -- where things are

    def path(self, phase: str, key: str) -> Path:
        """The local path of an artifact (for a remote root: its node-local copy)."""
        return self.local_root / phase / key

    def location(self, phase: str, key: str) -> str | Path:
        """Where an artifact is kept for good: ``root/<phase>/<key>`` (a URI for a remote root)."""
        return layout.artifact_location(self.root, phase, key)

    # -- completeness

    def is_complete(self, path: Path) -> bool:
        """True if the local artifact ``path`` is there and intact; a damaged one is moved aside (and logged)."""
        if not path.is_dir():
            return False
        problem = verify_artifact(path)
        if problem is None:
            return True
        corrupt = path.with_name(f"{path.name}.corrupt-{int(time.time())}-{uuid.uuid4().hex[:6]}")
        logger.warning("artifact %s is corrupt (%s); moved to %s, it will be rebuilt", path, problem, corrupt)
        try:
            path.rename(corrupt)
        except OSError:
            if path.is_dir():  # not moved by another process in the meantime
                raise
            return False
        self.log_event(path.parent.name, path.name, "corrupt", problem=problem, moved_to=str(corrupt))
        return False

    def _remote_complete(self, phase: str, key: str) -> bool:
        """True if the remote artifact's record is there and readable; a corrupt one is deleted.

        A missing record means absent or partly uploaded (not complete, left
        alone: its builder may still be uploading). Errors other than "not
        found" (network, permissions) are raised, never taken for corruption.
        """
        location = self.location(phase, key)
        record = storage.join(location, RECORD_FILE)
        try:
            json.loads(storage.read_text(record))
            return True
        except FileNotFoundError:
            return False
        except ValueError:  # JSON or UTF-8
            self._delete_remote(phase, key, f"unreadable {RECORD_FILE}")
            return False

    def _delete_remote(self, phase: str, key: str, problem: str) -> None:
        """Remove a damaged remote artifact so that it is rebuilt (its record first: then it is incomplete for all)."""
        location = self.location(phase, key)
        logger.warning("artifact %s is corrupt (%s); deleting it, it will be rebuilt", location, problem)
        storage.delete(storage.join(location, RECORD_FILE))
        storage.delete(location)
        self.log_event(phase, key, "corrupt", problem=problem, deleted=str(location))

    def has(self, phase: str, key: str) -> bool:
        """True when the artifact ``phase/key`` is complete in the cache (nothing is downloaded)."""
        return self._remote_complete(phase, key) if self.remote else self.is_complete(self.path(phase, key))

    def fetch(self, phase: str, key: str) -> Path | None:
        """The local path of the complete artifact ``phase/key`` (downloaded if remote), or None if not built."""
        path = self.path(phase, key)
        return path if self._available(phase, key, path) is not None else None

    def _available(self, phase: str, key: str, path: Path) -> dict[str, Any] | None:
        """The hit's event details if the artifact is complete (now local), else None."""
        if not self.remote:
            return {} if self.is_complete(path) else None
        if not self._remote_complete(phase, key):
            return None
        if self.is_complete(path):
            return {}
        started = time.monotonic()
        self._download(phase, key, path)
        if not self.is_complete(path):  # the download does not match its record: the remote copy is damaged
            self._delete_remote(phase, key, "its files do not match its record")
            return None
        return {"downloaded_seconds": round(time.monotonic() - started, 3)}

    def _download(self, phase: str, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".download", dir=path.parent))
        try:
            count = storage.download_tree(self.location(phase, key), tmp)
            try:
                os.rename(tmp, path)
            except OSError:
                if not self.is_complete(path):  # not another process's finished download
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("downloaded %s %s (%d files) into %s", phase, key, count, path)

    # -- events

    def log_event(self, phase: str, key: str, event: str, **extra: Any) -> None:
        """Record a hit or a build: one object ``root/events/<time_ns>-<uuid>.json``."""
        now = time.time_ns()
        body = {"phase": phase, "key": key, "event": event, "pid": os.getpid(), "time": now / 1e9, **extra}
        storage.write_text(storage.join(self.root, EVENTS_DIR, f"{now:020d}-{uuid.uuid4().hex}.json"), json.dumps(body))

    def events(self) -> list[dict[str, Any]]:
        """Every hit and build, oldest first: dicts with ``phase``, ``key``, ``event``, ``pid``, ``time`` and extras."""
        found: list[dict[str, Any]] = []
        legacy = storage.join(self.root, EVENTS_FILE)
        try:
            found += [json.loads(line) for line in storage.read_text(legacy).splitlines() if line.strip()]
        except FileNotFoundError:
            pass
        texts = storage.read_texts(storage.list_files(storage.join(self.root, EVENTS_DIR), suffix=".json"))
        found += [json.loads(text) for text in texts if text is not None]
        return found

    # -- get or build

    def get_or_build(self, phase: str, spec: dict[str, Any], build: Callable[[Path], None]) -> tuple[str, Path]:
        """The artifact of ``phase`` for ``spec``, built by ``build(path)`` if not cached. Returns (key, local path)."""
        key = artifact_key(phase, spec)
        path = self.path(phase, key)
        waited = 0.0
        while True:
            hit = self._available(phase, key, path)
            if hit is not None:
                self.log_event(phase, key, "hit", **hit, **({"waited_seconds": round(waited, 1)} if waited else {}))
                return key, path
            if self.leases is None:
                self._build(phase, key, path, build)
                return key, path
            if self.leases.try_acquire(f"{phase}/{key}"):
                with self.leases.holding(f"{phase}/{key}"):
                    hit = self._available(phase, key, path)  # built by another chain between our check and our lease?
                    if hit is None:
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
        extra: dict[str, Any] = {}
        if self.remote and self.is_complete(path):
            # Built here before, but its upload never finished (or the remote copy was removed): publish it again.
            logger.info("%s %s is complete on this node but not in %s; uploading it", phase, key, self.root)
            extra["reuploaded"] = True
        else:
            build(path)
            if not self.is_complete(path):
                raise RuntimeError(f"phase {phase} finished without writing its artifact {path}")
        if self.remote:
            if self._remote_complete(phase, key):  # another builder (no leases) published first: keep theirs
                logger.info("%s %s was published by another builder meanwhile; not uploading ours", phase, key)
                extra["uploaded"] = False
            else:
                uploading = time.time()
                storage.upload_tree(path, self.location(phase, key), last=[RECORD_FILE])
                extra["upload_seconds"] = round(time.time() - uploading, 3)
        self.log_event(phase, key, "built", seconds=time.time() - started, **extra)
