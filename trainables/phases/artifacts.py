"""Phase artifacts: the record every phase leaves, and where its files live.

An artifact directory is complete if and only if it exists: phases write into a
temporary sibling and rename it into place (:func:`trainables.atomic.atomic_directory`).
Its ``record.json`` names the phase, its parameters, the upstream artifacts, the
fingerprint and count of the utterances it trained or fit on, wall time and device,
and lists every other file of the artifact with its size and SHA-256 (``files``),
so that a reader can tell an intact artifact from one damaged on disk
(:func:`verify_artifact`).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Sequence


from trainables.data.manifest import Utterance, fingerprint
from trainables.phases.kinds import phase_kind

RECORD_FILE = "record.json"
#: Beside a pretrained tiny encoder: what its own pretraining trained on (see trainables.phases.acoustic_pretrain).
PRETRAINING_RECORD = "pretraining_record.json"


def encoder_dir(artifact: Path) -> Path:
    """The encoder saved by TAPT or CPT inside its artifact."""
    return artifact / "encoder"


def classifier_dir(artifact: Path) -> Path:
    """The fine-tuned classifier (encoder + pooling + heads) inside a fine-tuning artifact."""
    return artifact / "classifier"


def encoder_fingerprint(name_or_path: str | Path) -> str:
    """A content id for cache keys: a hash of a local directory's config and weights, or the hub id itself."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"hub:{name_or_path}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin"}):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def checkpoint_dir_for(artifact: Path) -> Path:
    """Where a training phase keeps its resumable checkpoint while it builds ``artifact``."""
    return artifact.with_name(f".{artifact.name}.ckpt")


def audio_digest(path: str | Path) -> str:
    """A content id of an audio file: the first 16 hex digits of its SHA-256 (the same audio wherever it lies)."""
    return file_digest(Path(path))[:16]


def describe_utterances(utterances: Sequence[Utterance]) -> dict[str, Any]:
    """Fingerprint, count and sessions of the utterances a phase used."""
    return {
        "fingerprint": fingerprint(u.utt_id for u in utterances),
        "count": len(utterances),
        "sessions": sorted({u.session for u in utterances}),
    }


def to_plain(value: Any) -> Any:
    """``value`` with dataclasses, enums, paths and tuples turned into JSON types."""
    if is_dataclass(value):
        return {k: to_plain(v) for k, v in asdict(value).items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def current_ray_node() -> str:
    """The id of the Ray node this process runs on, or "" when it is not part of a Ray cluster (Ray is never imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


@dataclass
class PhaseRecord:
    phase: str
    params: dict[str, Any]
    upstream: dict[str, str]
    used: dict[str, dict[str, Any]]  # role ("trained_on", "fit_on", "selected_on", "tested_on") -> describe_utterances(...)
    results: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    device: str = ""
    world_size: int = 1
    host: str = field(default_factory=socket.gethostname)
    ray_node: str = field(default_factory=lambda: current_ray_node())  # the Ray node that built it ("" outside Ray)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    code_version: int = 0

    def __post_init__(self) -> None:
        self.code_version = self.code_version or phase_kind(self.phase).version
        self.params = to_plain(self.params)
        self.results = to_plain(self.results)


#: Read size when hashing artifact files.
_HASH_CHUNK_BYTES = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-256 of the file at ``path`` (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``directory`` except the record: relative POSIX path -> ``{"bytes", "sha256"}``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != RECORD_FILE)
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}


def write_record(directory: Path, record: PhaseRecord) -> None:
    """Write ``record.json``, with the manifest of the files already in ``directory``: call it last."""
    body = {**asdict(record), "files": file_manifest(directory)}
    (directory / RECORD_FILE).write_text(json.dumps(body, indent=2, sort_keys=True))


def verify_artifact(artifact: Path) -> str | None:
    """Why the artifact at ``artifact`` cannot be trusted, or None if it is intact.

    Intact means: ``record.json`` parses, lists its files, and every listed file
    is present with the recorded size and SHA-256.
    """
    try:
        record = json.loads((artifact / RECORD_FILE).read_text())
    except (OSError, ValueError) as err:
        return f"{RECORD_FILE} is unreadable ({err.__class__.__name__})"
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        return f"{RECORD_FILE} lists no files (written by an older ser-study, or damaged)"
    for name, expected in files.items():
        path = artifact / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, the record says {expected.get('bytes')}"
        if file_digest(path) != expected.get("sha256"):
            return f"{name} does not match its recorded SHA-256"
    return None


def read_record(artifact: Path) -> dict[str, Any]:
    path = artifact / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{artifact} is not a complete phase artifact: {RECORD_FILE} is missing")
    return json.loads(path.read_text())
