"""Generate a small corpus in the exact IEMOCAP layout, for the demo, the tests and the benchmarks.

Two voices speak it (``DemoCorpusConfig.engine``):

* ``synth`` (default, no external program): syllables from a source-filter
  synthesiser (:mod:`trainables.data.synth_voice`), emotions in prosody;
* ``espeak``: English sentences from ``espeak-ng`` coloured by ``sox``
  (:mod:`trainables.data.espeak_voice`), real synthetic speech.

Every session has a female and a male speaker, half of its dialogs improvised
and half scripted (scripted dialogs repeat the same lines in every session,
as IEMOCAP's do). Written per session::

    Session<s>/sentences/wav/<dialog>/<utt>.wav        16 kHz mono
    Session<s>/dialog/EmoEvaluation/<dialog>.txt        consensus label and [V, A, D]
    Session<s>/dialog/transcriptions/<dialog>.txt       <utt> [start-end]: text

``ser-study prepare`` reads the result like the real release.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

ENGINES = ("synth", "espeak")
#: Class proportions close to IEMOCAP's (hap + exc about one third of the 4 classes). ``fru`` and
#: ``xxx`` exist so that label-set filtering is exercised.
LABEL_WEIGHTS: dict[str, float] = {"neu": 0.27, "hap": 0.09, "exc": 0.17, "ang": 0.17, "sad": 0.17, "fru": 0.08, "xxx": 0.05}
#: Drawn in every session before the random draws, so every class has a few utterances everywhere.
GUARANTEED_LABELS = ("neu", "hap", "ang", "sad", "exc") * 2
#: Typical annotator valence, arousal, dominance of each label.
VAD: dict[str, tuple[float, float, float]] = {
    "neu": (3.0, 2.5, 2.5),
    "hap": (4.0, 3.5, 3.0),
    "exc": (4.0, 4.0, 3.5),
    "ang": (1.8, 4.2, 4.0),
    "sad": (1.8, 2.0, 2.0),
    "fru": (2.0, 3.2, 3.0),
    "xxx": (2.8, 3.0, 3.0),
}
LABEL_NAMES = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness", "fru": "Frustration", "xxx": "Other"}
#: Lines of each scripted dialog (shared by every session).
SCRIPT_LINES = 12


class Voice(Protocol):
    """What an engine provides: speakers, lines of text and their rendering."""

    name: str
    sample_rate: int

    def speaker(self, session: int, gender: str, rng: np.random.Generator) -> Any: ...

    def line(self, rng: np.random.Generator, median_duration_s: float, max_duration_s: float) -> str: ...

    def render(self, label: str, speaker: Any, text: str, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class DemoCorpusConfig:
    """Size and shape of the generated corpus."""

    utterances_per_session: int = 60  # 5 sessions x 60 = 300 utterances, a couple of CPU minutes per phase
    dialogs_per_session: int = 4  # half improvised, half scripted, as in IEMOCAP
    median_duration_s: float = 2.5  # IEMOCAP's is about 3.5 s; shorter keeps the demo fast (synth engine)
    max_duration_s: float = 8.0  # synth engine: no line longer than this at a neutral rate
    seed: int = 0
    engine: str = "synth"

    def validate(self) -> None:
        if self.utterances_per_session < len(GUARANTEED_LABELS):
            raise ValueError(f"utterances_per_session must be at least {len(GUARANTEED_LABELS)}, so every class appears for both speakers")
        if self.dialogs_per_session < 2:
            raise ValueError("dialogs_per_session must be at least 2 (one improvised, one scripted)")
        if not 0 < self.median_duration_s <= self.max_duration_s:
            raise ValueError("durations must satisfy 0 < median_duration_s <= max_duration_s")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")


def make_voice(engine: str) -> Voice:
    """The voice of ``engine`` (``espeak`` raises ``RuntimeError`` naming what to install when it is missing)."""
    if engine == "espeak":
        from trainables.data.espeak_voice import EspeakVoice

        return EspeakVoice()
    from trainables.data.synth_voice import SynthVoice

    return SynthVoice()


def generate_demo_corpus(out: str | Path, config: DemoCorpusConfig = DemoCorpusConfig()) -> Path:
    """Write the corpus under ``out/IEMOCAP_full_release`` and return that directory.

    Deterministic for ``config``. The corpus is built in a temporary directory
    and renamed into place, so an interrupted run leaves nothing that looks
    complete. Refuses to overwrite an existing corpus.
    """
    config.validate()
    voice = make_voice(config.engine)
    out = Path(out)
    release = out / "IEMOCAP_full_release"
    if release.exists():
        raise FileExistsError(f"{release} already exists; remove it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".IEMOCAP_full_release.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        *session_seeds, script_seed = np.random.SeedSequence(config.seed).spawn(6)  # sessions first: their draws keep their seeds
        scripts = _scripts(voice, config, np.random.default_rng(script_seed))
        for session, seed in zip(range(1, 6), session_seeds):
            rng = np.random.default_rng(seed)
            speakers = {gender: voice.speaker(session, gender, rng) for gender in "FM"}
            _write_session(tmp / f"Session{session}", session, config, voice, speakers, scripts, rng)
        tmp.rename(release)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("generated a %d-utterance IEMOCAP-shaped corpus (%s voice) in %s", 5 * config.utterances_per_session, config.engine, release)
    return release


def _dialog_names(session: int, count: int) -> list[str]:
    names = []
    for d in range(count):
        lead = "FM"[d % 2]
        kind = f"impro{d // 2 + 1:02d}" if d % 2 == 0 else f"script{d // 2 + 1:02d}_1"
        names.append(f"Ses{session:02d}{lead}_{kind}")
    return names


def _scripts(voice: Voice, config: DemoCorpusConfig, rng: np.random.Generator) -> dict[str, list[str]]:
    """The lines of each scripted dialog, by its name without the session prefix (``script01_1``)."""
    names = [name.split("_", 1)[1] for name in _dialog_names(1, config.dialogs_per_session) if "script" in name]
    return {name: [voice.line(rng, config.median_duration_s, config.max_duration_s) for _ in range(SCRIPT_LINES)] for name in names}


def _evaluation_block(start: float, end: float, utt_id: str, label: str, vad: tuple[float, float, float]) -> str:
    v, a, d = vad
    return (
        f"[{start:.4f} - {end:.4f}]\t{utt_id}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
        f"C-E1:\t{LABEL_NAMES[label]};\t()\n"
        f"C-E2:\t{LABEL_NAMES[label]};\t()\n"
        f"A-E1:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()\n\n"
    )


def _write_session(
    session_dir: Path,
    session: int,
    config: DemoCorpusConfig,
    voice: Voice,
    speakers: dict[str, Any],
    scripts: dict[str, list[str]],
    rng: np.random.Generator,
) -> None:
    dialogs = _dialog_names(session, config.dialogs_per_session)
    labels = list(LABEL_WEIGHTS)
    weights = np.array(list(LABEL_WEIGHTS.values()))
    drawn = list(rng.choice(labels, size=config.utterances_per_session - len(GUARANTEED_LABELS), p=weights / weights.sum()))
    utterance_labels = list(GUARANTEED_LABELS) + drawn
    rng.shuffle(utterance_labels)
    eval_dir = session_dir / "dialog" / "EmoEvaluation"
    text_dir = session_dir / "dialog" / "transcriptions"
    eval_dir.mkdir(parents=True)
    text_dir.mkdir(parents=True)
    blocks: dict[str, list[str]] = {d: [] for d in dialogs}
    lines: dict[str, list[str]] = {d: [] for d in dialogs}
    clock: dict[str, float] = {d: 0.0 for d in dialogs}
    index: dict[tuple[str, str], int] = {}
    for i, label in enumerate(utterance_labels):
        dialog = dialogs[i % len(dialogs)]
        gender = "FM"[(i // len(dialogs)) % 2]
        number = index.get((dialog, gender), 0)
        index[(dialog, gender)] = number + 1
        utt_id = f"{dialog}_{gender}{number:03d}"
        script = scripts.get(dialog.split("_", 1)[1])
        text = script[(i // len(dialogs)) % len(script)] if script else voice.line(rng, config.median_duration_s, config.max_duration_s)
        signal = voice.render(label, speakers[gender], text, rng)
        duration = signal.size / voice.sample_rate
        wav = session_dir / "sentences" / "wav" / dialog / f"{utt_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), signal, voice.sample_rate, subtype="PCM_16")
        vad = tuple(float(np.clip(x + rng.normal(0, 0.4), 1, 5)) for x in VAD[label])
        start = clock[dialog] + rng.uniform(0.2, 1.0)
        clock[dialog] = start + duration
        blocks[dialog].append(_evaluation_block(start, start + duration, utt_id, label, vad))
        lines[dialog].append(f"{utt_id} [{start:08.4f}-{start + duration:08.4f}]: {text}\n")
    for dialog in dialogs:
        header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        (eval_dir / f"{dialog}.txt").write_text(header + "".join(blocks[dialog]), encoding="utf-8")
        (text_dir / f"{dialog}.txt").write_text("".join(lines[dialog]), encoding="utf-8")
