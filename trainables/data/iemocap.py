"""Read an IEMOCAP release into utterances, a problem report and a summary.

Layout (the real release, or the generated demo corpus, which copies it)::

    IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utt>.wav
    IEMOCAP_full_release/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
    IEMOCAP_full_release/Session{1..5}/dialog/transcriptions/<dialog>.txt

An ``EmoEvaluation`` line ``[start - end]<TAB>utt<TAB>label<TAB>[V, A, D]``
gives the consensus label; a transcription line ``utt [start-end]: text`` the
words (a missing file or line leaves the transcript empty and is reported). The speaker's gender is the letter before the
utterance's 3-digit index (``Ses01F_impro04_M012`` is male); the letter after
``Ses01`` belongs to the dialog.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from trainables.data.labels import IEMOCAP_LABELS, LabelSet
from trainables.data.manifest import Utterance

logger = logging.getLogger(__name__)

NUM_SESSIONS = 5
ALL_SESSIONS: tuple[int, ...] = tuple(range(1, NUM_SESSIONS + 1))
#: Names under which the folder holding Session1..5 is found below the given root.
RELEASE_DIR_NAMES = ("IEMOCAP_full_release", "IEMOCAP")

_EVAL_LINE = re.compile(
    r"^\[(?P<start>[\d.]+) - (?P<end>[\d.]+)\]\t(?P<utt>\S+)\t(?P<label>\S+)\t"
    r"\[(?P<v>[^,\]]+), (?P<a>[^,\]]+), (?P<d>[^,\]]+)\]\s*$"
)
_TRANSCRIPT_LINE = re.compile(r"^(?P<utt>\S+) \[[^\]]*\]:\s?(?P<text>.*?)\s*$")
_UTT_ID = re.compile(r"^Ses(?P<session>\d{2})[FM]_(?P<dialog_rest>.+)_(?P<gender>[FM])(?P<index>\d{3})$")
_READ_THREADS = 4  # soundfile releases the GIL while decoding; a few threads hide disk latency


class CorpusError(RuntimeError):
    """The corpus cannot be read at all; nothing is written."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with one utterance or file, and what was done about it."""

    path: str
    utt_id: str
    problem: str
    action: str  # "excluded" or "kept: <how it is handled>"


@dataclass(frozen=True)
class EvalLine:
    """One consensus line of an ``EmoEvaluation`` file."""

    utt_id: str
    raw_label: str
    valence: float
    arousal: float
    dominance: float
    source: Path


@dataclass
class CorpusReading:
    """What ``read_iemocap`` found: the usable utterances and everything it set aside."""

    release_dir: Path
    label_set: LabelSet
    utterances: list[Utterance] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Raw labels outside the label set (well-formed, just not studied), with counts.
    outside_label_set: Counter = field(default_factory=Counter)

    @property
    def excluded(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "excluded"]


def find_release_dir(root: str | Path) -> Path:
    """The directory holding ``Session1..5``: ``root`` itself or one of its known children."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"IEMOCAP root {root} is not a directory; pass the folder that holds Session1..Session5")
    for candidate in (root, *(root / name for name in RELEASE_DIR_NAMES)):
        if (candidate / "Session1").is_dir():
            return candidate
    raise CorpusError(
        f"{root} is not an IEMOCAP root: found no Session1 folder in it, nor under "
        f"{' or '.join(str(root / n) for n in RELEASE_DIR_NAMES)}; pass the folder that holds Session1..Session5"
    )


def parse_evaluation_file(path: Path) -> tuple[list[EvalLine], list[Problem]]:
    """The consensus lines of one ``EmoEvaluation`` file, and lines that look like one but do not parse."""
    lines: list[EvalLine] = []
    problems: list[Problem] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue
        match = _EVAL_LINE.match(line)
        if match is None:
            problems.append(Problem(str(path), "", f"line {line_no} is not '[start - end]<TAB>utt<TAB>label<TAB>[V, A, D]'", "excluded"))
            continue
        try:
            vad = tuple(float(match[k]) for k in ("v", "a", "d"))
        except ValueError:
            problems.append(Problem(str(path), match["utt"], f"line {line_no} has a non-numeric [V, A, D]", "excluded"))
            continue
        lines.append(EvalLine(match["utt"], match["label"], *vad, source=path))
    return lines, problems


def parse_transcription_file(path: Path) -> dict[str, str]:
    """``{utt_id: text}`` of a ``transcriptions/<dialog>.txt`` file; lines of another form are skipped
    (the release lists turns such as ``M: [BREATHING]`` without an utterance id)."""
    texts = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _TRANSCRIPT_LINE.match(line)
        if match is not None:
            texts.setdefault(match["utt"], match["text"])
    return texts


def _transcripts(session_dir: Path, dialog: str, cache: dict[str, dict[str, str] | None]) -> dict[str, str] | None:
    """The dialog's transcriptions (None when its file is missing), read once per dialog."""
    if dialog not in cache:
        path = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
        cache[dialog] = parse_transcription_file(path) if path.is_file() else None
    return cache[dialog]


def _session_dirs(release_dir: Path, sessions: Sequence[int]) -> dict[int, Path]:
    dirs = {}
    for session in sessions:
        session_dir = release_dir / f"Session{session}"
        eval_dir = session_dir / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            raise CorpusError(
                f"session {session} is missing: expected {eval_dir}; restore it, or restrict the sessions read "
                f"(--sessions) if you mean to study fewer"
            )
        dirs[session] = session_dir
    return dirs


def _check_wav(path: Path) -> tuple[sf._SoundFileInfo | None, str | None]:
    """``(info, None)`` for a usable wav, ``(None, reason)`` otherwise."""
    if not path.is_file():
        return None, "wav file is missing"
    try:
        info = sf.info(str(path))
        signal, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError) as err:
        return None, f"wav is unreadable ({err})"
    if signal.shape[0] == 0:
        return None, "wav holds no samples (zero length)"
    if not np.isfinite(signal).all():
        return None, "wav holds NaN or infinite samples"
    if not np.any(signal):
        return None, "wav is all zeros (silent)"
    return info, None


def read_iemocap(
    root: str | Path, label_set: LabelSet, sessions: Sequence[int] = ALL_SESSIONS
) -> CorpusReading:
    """Read the sessions of an IEMOCAP root into a :class:`CorpusReading`.

    Raises :class:`CorpusError` when the root is not IEMOCAP, a requested
    session is missing, or no usable utterance is left.
    """
    bad_sessions = [s for s in sessions if s not in ALL_SESSIONS]
    if bad_sessions or not sessions:
        raise CorpusError(f"sessions must be a non-empty subset of 1..5, got {list(sessions)}")
    release_dir = find_release_dir(root)
    reading = CorpusReading(release_dir=release_dir, label_set=label_set)
    candidates: list[tuple[EvalLine, int, Path, str]] = []
    seen: dict[str, Path] = {}
    for session, session_dir in _session_dirs(release_dir, sessions).items():
        transcriptions: dict[str, dict[str, str] | None] = {}
        eval_files = sorted(p for p in (session_dir / "dialog" / "EmoEvaluation").glob("*.txt") if not p.name.startswith("._"))
        if not eval_files:
            raise CorpusError(f"session {session} has no evaluation files in {session_dir / 'dialog' / 'EmoEvaluation'}")
        for eval_file in eval_files:
            lines, problems = parse_evaluation_file(eval_file)
            reading.problems.extend(problems)
            for line in lines:
                wav = session_dir / "sentences" / "wav" / eval_file.stem / f"{line.utt_id}.wav"
                problem = _line_problem(line, session, eval_file, seen)
                if problem is not None:
                    reading.problems.append(Problem(str(eval_file), line.utt_id, problem, "excluded"))
                    continue
                seen[line.utt_id] = eval_file
                mapped = label_set.map(line.raw_label)
                if mapped is None:
                    reading.outside_label_set[line.raw_label] += 1
                    continue
                texts = _transcripts(session_dir, eval_file.stem, transcriptions)
                text = None if texts is None else texts.get(line.utt_id)
                if text is None:
                    where = session_dir / "dialog" / "transcriptions" / f"{eval_file.stem}.txt"
                    problem = "no transcription file for its dialog" if texts is None else "no line in its dialog's transcription file"
                    reading.problems.append(Problem(str(where), line.utt_id, problem, "kept: empty transcript"))
                candidates.append((line, session, wav, text or ""))

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        checks = list(pool.map(lambda c: _check_wav(c[2]), candidates))
    for (line, session, wav, text), (info, reason) in zip(candidates, checks):
        if info is None:
            reading.problems.append(Problem(str(wav), line.utt_id, reason or "unusable", "excluded"))
            continue
        if info.channels != 1:
            reading.problems.append(Problem(str(wav), line.utt_id, f"wav has {info.channels} channels", "kept: mixed down to mono at load"))
        if info.samplerate != 16000:
            reading.problems.append(Problem(str(wav), line.utt_id, f"wav is at {info.samplerate} Hz, not 16000 Hz", "kept: resampled at load"))
        reading.utterances.append(_utterance(line, session, wav, info, label_set, text))

    if not reading.utterances:
        raise CorpusError(f"no usable utterance found under {release_dir} (see the problems above)")
    reading.utterances.sort(key=lambda u: u.utt_id)
    return reading


def _line_problem(line: EvalLine, session: int, eval_file: Path, seen: dict[str, Path]) -> str | None:
    match = _UTT_ID.match(line.utt_id)
    if match is None:
        return f"utterance id {line.utt_id!r} is not of the form SesNN[FM]_<dialog>_[FM]NNN"
    if int(match["session"]) != session:
        return f"utterance {line.utt_id} is listed under Session{session}"
    if not line.utt_id.startswith(eval_file.stem + "_"):
        return f"utterance {line.utt_id} is listed in the evaluation file of dialog {eval_file.stem}"
    if line.raw_label not in IEMOCAP_LABELS:
        return f"unknown label {line.raw_label!r} (IEMOCAP labels: {', '.join(sorted(IEMOCAP_LABELS))})"
    if line.utt_id in seen:
        return f"duplicated utterance id (first seen in {seen[line.utt_id]}); the first is kept"
    return None


def _utterance(line: EvalLine, session: int, wav: Path, info, label_set: LabelSet, transcript: str) -> Utterance:
    match = _UTT_ID.match(line.utt_id)
    gender = match["gender"]
    dialog = line.source.stem
    return Utterance(
        utt_id=line.utt_id,
        path=str(wav.resolve()),
        session=session,
        dialog=dialog,
        speaker=f"Ses{session:02d}{gender}",
        gender=gender,
        label=label_set.map(line.raw_label),
        raw_label=line.raw_label,
        duration_s=info.frames / info.samplerate,
        sample_rate=info.samplerate,
        num_channels=info.channels,
        improvised="impro" in dialog,
        valence=line.valence,
        arousal=line.arousal,
        dominance=line.dominance,
        transcript=transcript,
    )


def summary_table(reading: CorpusReading) -> str:
    """A session x class table of the usable utterances, with totals and what was left out."""
    classes = reading.label_set.classes
    counts = Counter((u.session, u.label) for u in reading.utterances)
    sessions = sorted({u.session for u in reading.utterances})
    width = max(7, *(len(c) + 2 for c in classes))
    header = "session".ljust(9) + "".join(c.rjust(width) for c in classes) + "total".rjust(width)
    rows = [header, "-" * len(header)]
    for s in sessions:
        cells = [counts[(s, c)] for c in classes]
        rows.append(f"Session{s}".ljust(9) + "".join(str(n).rjust(width) for n in cells) + str(sum(cells)).rjust(width))
    totals = [sum(counts[(s, c)] for s in sessions) for c in classes]
    rows.append("-" * len(header))
    rows.append("total".ljust(9) + "".join(str(n).rjust(width) for n in totals) + str(sum(totals)).rjust(width))
    hours = sum(u.duration_s for u in reading.utterances) / 3600
    rows.append(f"\n{len(reading.utterances)} utterances, {hours:.2f} h of audio, label set {reading.label_set.name}")
    if reading.outside_label_set:
        outside = ", ".join(f"{label} {n}" for label, n in sorted(reading.outside_label_set.items()))
        rows.append(f"outside the label set (not studied): {outside}")
    excluded = reading.excluded
    if excluded:
        rows.append(f"excluded as unusable: {len(excluded)} (listed in the problem report)")
    kept = len(reading.problems) - len(excluded)
    if kept:
        rows.append(f"kept with a warning: {kept} (listed in the problem report)")
    return "\n".join(rows)



def problem_report_path(manifest_path: str | Path) -> Path:
    """Where ``prepare`` writes the problem report of a manifest: beside it, ``<stem>.problems.csv``."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.problems.csv")


def problem_report_text(problems: Sequence[Problem]) -> str:
    """The problem report as CSV text: ``path, utt_id, problem, action``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "utt_id", "problem", "action"))
    writer.writerows((p.path, p.utt_id, p.problem, p.action) for p in problems)
    return buffer.getvalue()


#: IEMOCAP's 4-class utterance durations are roughly lognormal: median about 3.5 s,
#: from about 0.6 s to over 30 s (about 7 h over 5531 utterances).
IEMOCAP_MEDIAN_DURATION_S = 3.5
IEMOCAP_LOG_DURATION_SIGMA = 0.65
IEMOCAP_DURATION_RANGE_S = (0.6, 34.0)


def simulated_durations(count: int = 5531, seed: int = 0) -> np.ndarray:
    """Utterance durations in seconds with IEMOCAP's spread, for benchmarks and tests. Shape: ``[count]``."""
    rng = np.random.default_rng(seed)
    log_durations = rng.normal(np.log(IEMOCAP_MEDIAN_DURATION_S), IEMOCAP_LOG_DURATION_SIGMA, count)
    return np.clip(np.exp(log_durations), *IEMOCAP_DURATION_RANGE_S)
