"""Real synthetic speech for the generated corpus: English sentences spoken by ``espeak-ng``, coloured by ``sox``.

Each speaker is an espeak-ng voice (an accent and a voice variant) with its own
pitch and speed; each emotion shifts pitch, pitch range, rate, loudness and
spectral tilt, with per-utterance jitter so the classes overlap; each session
gets its own recording channel (band limits, a little reverberation) and every
utterance background noise at a random SNR. Sentences of the scripted dialogs
repeat across sessions, as IEMOCAP's do.

Needs the ``espeak-ng`` and ``sox`` programs (Debian packages of those names);
:func:`espeak_available` says whether they are on ``PATH``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
PROGRAMS = ("espeak-ng", "sox")


@dataclass(frozen=True)
class EspeakProsody:
    """An emotion relative to the speaker's neutral voice (SSML prosody and post-processing)."""

    pitch_pct: float
    range_pct: float
    rate_pct: float
    level_db: float  # RMS level in dBFS
    treble_db: float  # spectral tilt: brighter (tense) > 0 > duller (lax)


PROSODY: dict[str, EspeakProsody] = {
    "neu": EspeakProsody(0.0, 0.0, 0.0, -24.0, 0.0),
    "hap": EspeakProsody(18.0, 60.0, 8.0, -20.0, 2.0),
    "exc": EspeakProsody(28.0, 80.0, 14.0, -18.0, 3.0),
    "ang": EspeakProsody(8.0, 30.0, 12.0, -16.0, 6.0),
    "sad": EspeakProsody(-12.0, -50.0, -22.0, -29.0, -5.0),
    "fru": EspeakProsody(5.0, 20.0, 5.0, -20.0, 3.0),
    "xxx": EspeakProsody(6.0, 15.0, 4.0, -22.0, 1.0),
}
#: Jitter (standard deviations) of each utterance around its emotion.
JITTER = EspeakProsody(pitch_pct=7.0, range_pct=25.0, rate_pct=7.0, level_db=3.0, treble_db=2.0)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = {"F": ("f1", "f2", "f3", "f4", "f5"), "M": ("m1", "m2", "m3", "m4", "m5", "m6", "m7")}
SENTENCES = (
    "I told you I would be here at noon.",
    "Where did you put the keys to the car?",
    "We have been waiting for almost an hour now.",
    "That is not what I said and you know it.",
    "Can you believe they gave me the job?",
    "The train leaves at seven tomorrow morning.",
    "I don't know what to tell you anymore.",
    "She called me twice last night.",
    "You never listen to a word I say.",
    "Let's just go home and forget about it.",
    "I have to finish this report by Friday.",
    "Did you hear what happened to Tom?",
    "It was the best day of my whole life.",
    "Nobody told me the meeting was cancelled.",
    "Why would you do something like that?",
    "I think we should talk about this later.",
    "The weather has been strange all week.",
    "He left without saying goodbye.",
    "We finally found the house we wanted.",
    "I'm not going to apologize for that.",
    "Could you pass me the salt, please?",
    "They lost everything in the fire.",
    "My brother is coming to visit next month.",
    "Stop doing that right now.",
    "I really thought it would work this time.",
    "The store was closed when I got there.",
    "You look wonderful in that dress.",
    "I waited by the phone all day.",
    "We need to leave in five minutes.",
    "It doesn't matter what they think.",
    "I can't find my glasses anywhere.",
    "They said the results will come on Monday.",
    "This is exactly what I was afraid of.",
    "Let me know when you are ready.",
    "I miss the way things used to be.",
    "Everyone is going to the party tonight.",
    "Please stop calling me at work.",
    "We won the game in the last minute.",
    "I am so tired of hearing that excuse.",
    "The letter arrived this morning.",
)


def espeak_available() -> bool:
    """Whether ``espeak-ng`` and ``sox`` are on ``PATH``."""
    return all(shutil.which(program) for program in PROGRAMS)


@dataclass(frozen=True)
class Channel:
    """A session's recording chain (sox effects)."""

    highpass_hz: float
    lowpass_hz: float
    reverberance: float

    def effects(self) -> list[str]:
        return ["highpass", f"{self.highpass_hz:.0f}", "lowpass", f"{self.lowpass_hz:.0f}", "reverb", f"{self.reverberance:.0f}"]


@dataclass(frozen=True)
class EspeakSpeaker:
    gender: str
    voice: str  # accent+variant, e.g. en-gb+f3
    pitch: int  # espeak-ng -p (0..99)
    words_per_minute: int  # espeak-ng -s
    level_offset_db: float
    channel: Channel  # the session's recording chain


class EspeakVoice:
    """The ``espeak`` engine of ``ser-study demo-data``."""

    name = "espeak"
    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        missing = [program for program in PROGRAMS if shutil.which(program) is None]
        if missing:
            raise RuntimeError(
                f"the espeak engine needs {' and '.join(missing)} on PATH; install the Debian packages espeak-ng and sox "
                f"(apt-get install espeak-ng sox), or use the default engine"
            )
        self._channels: dict[int, Channel] = {}

    def speaker(self, session: int, gender: str, rng: np.random.Generator) -> EspeakSpeaker:
        if session not in self._channels:
            self._channels[session] = Channel(rng.uniform(60, 160), rng.uniform(5000, 7500), rng.uniform(5, 35))
        voice = f"{ACCENTS[int(rng.integers(len(ACCENTS)))]}+{VARIANTS[gender][int(rng.integers(len(VARIANTS[gender])))]}"
        return EspeakSpeaker(gender, voice, int(rng.integers(30, 71)), int(rng.integers(150, 191)), float(rng.normal(0, 2)), self._channels[session])

    def line(self, rng: np.random.Generator, median_duration_s: float, max_duration_s: float) -> str:
        """One sentence of the pool (their length, not the durations asked for, sets the duration)."""
        return SENTENCES[int(rng.integers(len(SENTENCES)))]

    def render(self, label: str, speaker: EspeakSpeaker, text: str, rng: np.random.Generator) -> np.ndarray:
        """``text`` spoken by ``speaker`` with ``label``'s prosody: float32 ``[samples]`` at 16 kHz in [-1, 1]."""
        base, jitter = PROSODY[label], JITTER
        pitch = base.pitch_pct + rng.normal(0, jitter.pitch_pct)
        spread = max(-90.0, base.range_pct + rng.normal(0, jitter.range_pct))
        rate = max(-60.0, base.rate_pct + rng.normal(0, jitter.rate_pct))
        treble = base.treble_db + rng.normal(0, jitter.treble_db)
        ssml = f'<speak><prosody pitch="{pitch:+.0f}%" range="{spread:+.0f}%" rate="{rate:+.0f}%">{escape(text)}</prosody></speak>'
        with tempfile.TemporaryDirectory(prefix="ser-espeak-") as tmp:
            raw, coloured = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
            _run(["espeak-ng", "-m", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.words_per_minute), "-w", str(raw), ssml])
            effects = ["treble", f"{treble:+.1f}", *speaker.channel.effects()]
            # -R: repeatable; sox dithers its 16-bit output with a random generator it otherwise seeds from the clock
            _run(["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(coloured), *effects])
            signal, _ = sf.read(str(coloured), dtype="float64")
        level_db = base.level_db + speaker.level_offset_db + rng.normal(0, jitter.level_db)
        signal *= 10 ** (level_db / 20) / (np.sqrt(np.mean(signal**2)) + 1e-9)
        noise = rng.normal(size=signal.size) * np.sqrt(np.mean(signal**2)) * 10 ** (-rng.uniform(15, 35) / 20)
        return np.clip(signal + noise, -1.0, 1.0).astype(np.float32)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()[:500]}")
