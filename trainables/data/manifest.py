"""The utterance manifest: one CSV row per usable utterance.

``prepare`` writes it; every later step reads it. Paths are stored absolute;
a relative path is resolved against the manifest's own directory, so a
manifest moved together with its corpus keeps working.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

from trainables.atomic import atomic_write_text


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance of the corpus."""

    utt_id: str
    path: str
    session: int
    dialog: str
    speaker: str
    gender: str
    label: str
    raw_label: str
    duration_s: float
    sample_rate: int
    num_channels: int
    improvised: bool
    valence: float
    arousal: float
    dominance: float
    transcript: str = ""  # from dialog/transcriptions/<dialog>.txt; empty when the release lacks it


MANIFEST_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Utterance))
#: Columns a manifest written before they existed may lack: read as their default.
OPTIONAL_COLUMNS = frozenset({"transcript"})
_CONVERTERS = {
    "session": int,
    "duration_s": float,
    "sample_rate": int,
    "num_channels": int,
    "valence": float,
    "arousal": float,
    "dominance": float,
}


class ManifestError(ValueError):
    """A manifest file that cannot be used; the message names the file and the fix."""


def fingerprint(utt_ids: Iterable[str]) -> str:
    """A stable fingerprint of a set of utterance ids (order does not matter).

    Returns the first 16 hex digits of the SHA-256 of the sorted ids, one per line.
    """
    digest = hashlib.sha256("\n".join(sorted(utt_ids)).encode("utf-8")).hexdigest()
    return digest[:16]


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def manifest_text(utterances: Sequence[Utterance]) -> str:
    """The CSV text of a manifest, header included."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for utt in utterances:
        row = asdict(utt)
        writer.writerow(_format(row[name]) for name in MANIFEST_COLUMNS)
    return buffer.getvalue()


def write_manifest(utterances: Sequence[Utterance], path: str | Path) -> None:
    """Write the manifest atomically: the file appears complete or not at all."""
    atomic_write_text(path, manifest_text(utterances))


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read and check a manifest written by ``ser-study prepare``.

    Raises ``ManifestError`` naming the file, line and column of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; create it with `ser-study prepare IEMOCAP_ROOT --out {path}`")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        present = set(reader.fieldnames or [])
        missing = [c for c in MANIFEST_COLUMNS if c not in present and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ManifestError(
                f"manifest {path} lacks the columns {missing}; regenerate it with `ser-study prepare`"
            )
        utterances = []
        seen: set[str] = set()
        for line_no, row in enumerate(reader, start=2):
            values: dict[str, object] = {}
            for name in MANIFEST_COLUMNS:
                if name not in present:
                    continue
                raw = row[name]
                try:
                    if name == "improvised":
                        if raw not in ("0", "1"):
                            raise ValueError(raw)
                        values[name] = raw == "1"
                    else:
                        values[name] = _CONVERTERS.get(name, str)(raw)
                except (TypeError, ValueError):
                    raise ManifestError(f"{path}:{line_no}: column {name!r} has the invalid value {raw!r}") from None
            utt = Utterance(**values)  # type: ignore[arg-type]
            if utt.utt_id in seen:
                raise ManifestError(f"{path}:{line_no}: utterance id {utt.utt_id!r} appears twice")
            seen.add(utt.utt_id)
            if not Path(utt.path).is_absolute():
                utt = Utterance(**{**asdict(utt), "path": str((path.parent / utt.path).resolve())})
            utterances.append(utt)
    if not utterances:
        raise ManifestError(f"manifest {path} holds no utterances")
    return utterances
