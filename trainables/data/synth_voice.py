"""The default voice of the generated corpus: a source-filter synthesiser of syllables.

Speech-like signals come from a glottal-like harmonic source through vowel
formants, with noisy consonants and background noise. The text is a string of
syllables (a consonant and a vowel each, e.g. ``"sa ti shu"``) and the audio
carries it: every consonant letter has its own noise band and every vowel its
own formants, so a CTC model can learn to spell what it hears.

The emotion shows in prosody only: pitch level and range, tempo, loudness and
spectral tilt. Every parameter is jittered per utterance and per speaker, so
the classes overlap and have to be learnt, not read off one feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Prosody:
    """How an emotion sounds, relative to the speaker's neutral voice."""

    f0_scale: float  # multiplies the speaker's mean pitch
    f0_range_semitones: float  # standard deviation of the pitch contour
    syllables_per_s: float
    level_db: float  # RMS level in dBFS
    tilt: float  # harmonic k has amplitude k**-tilt: lower is brighter (tenser voice)


#: ``fru`` and ``xxx`` exist so that label-set filtering is exercised; they sit between the studied classes.
PROSODY: dict[str, Prosody] = {
    "neu": Prosody(1.00, 1.2, 4.0, -22.0, 1.3),
    "hap": Prosody(1.22, 3.5, 4.6, -18.0, 1.0),
    "exc": Prosody(1.30, 4.0, 5.0, -16.0, 0.95),
    "ang": Prosody(1.12, 2.4, 5.0, -14.0, 0.7),
    "sad": Prosody(0.90, 0.8, 3.0, -27.0, 1.6),
    "fru": Prosody(1.05, 2.0, 4.4, -18.0, 0.9),
    "xxx": Prosody(1.08, 2.2, 4.3, -20.0, 1.1),
}
#: Vowel letters and their formants (F1, F2, F3) in Hz for an adult male; female formants are scaled up.
VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (730, 1090, 2440),
    "i": (270, 2290, 3010),
    "u": (300, 870, 2240),
    "e": (530, 1840, 2480),
    "o": (570, 840, 2410),
}
#: Consonant letters and the centre of their noise band in Hz.
CONSONANTS: dict[str, float] = {"t": 4200.0, "s": 6200.0, "h": 1800.0, "k": 3000.0}
#: Syllables per word, drawn uniformly.
WORD_SYLLABLES = (1, 3)


@dataclass(frozen=True)
class SynthSpeaker:
    gender: str
    f0_hz: float
    formant_scale: float
    tempo_scale: float
    level_offset_db: float


class SynthVoice:
    """The default engine of ``ser-study demo-data``: no external program, deterministic for a seed."""

    name = "synth"
    sample_rate = SAMPLE_RATE

    def speaker(self, session: int, gender: str, rng: np.random.Generator) -> SynthSpeaker:
        if gender == "F":
            return SynthSpeaker("F", rng.uniform(190, 235), rng.uniform(1.12, 1.22), rng.uniform(0.85, 1.15), rng.normal(0, 2))
        return SynthSpeaker("M", rng.uniform(100, 135), rng.uniform(0.95, 1.05), rng.uniform(0.85, 1.15), rng.normal(0, 2))

    def line(self, rng: np.random.Generator, median_duration_s: float, max_duration_s: float) -> str:
        """A text of about ``median_duration_s`` seconds (at most ``max_duration_s``) at a neutral 4 syllables per second."""
        syllables = int(np.clip(round(median_duration_s * 4.0 * np.exp(rng.normal(0, 0.5))), 2, max(2, 4.0 * max_duration_s)))
        words, left = [], syllables
        while left > 0:
            size = min(left, int(rng.integers(WORD_SYLLABLES[0], WORD_SYLLABLES[1] + 1)))
            words.append("".join(rng.choice(list(CONSONANTS)) + rng.choice(list(VOWELS)) for _ in range(size)))
            left -= size
        return " ".join(words)

    def render(self, label: str, speaker: SynthSpeaker, text: str, rng: np.random.Generator) -> np.ndarray:
        """``text`` spoken with ``label``'s prosody: float32 ``[samples]`` at 16 kHz in [-1, 1]."""
        p = PROSODY[label]
        rate = p.syllables_per_s * speaker.tempo_scale * rng.uniform(0.85, 1.15)
        syllables = [(word[i], word[i + 1]) for word in text.split() for i in range(0, len(word), 2)]
        lengths = [int(SAMPLE_RATE / rate * rng.uniform(0.7, 1.3)) for _ in syllables]
        pauses = [int(rng.uniform(0.0, 0.12) * SAMPLE_RATE) for _ in syllables]
        lead = int(rng.uniform(0.05, 0.15) * SAMPLE_RATE)
        n = lead + sum(lengths) + sum(pauses) + int(0.1 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        duration_s = n / SAMPLE_RATE

        f0_mean = speaker.f0_hz * p.f0_scale * rng.uniform(0.9, 1.1)
        f0_range = p.f0_range_semitones * rng.uniform(0.7, 1.3)
        contour = np.zeros(n)  # smooth pitch: a few slow sinusoids plus declination, in semitones
        for _ in range(4):
            contour += rng.normal() * np.sin(2 * np.pi * rng.uniform(0.3, 2.5) * t + rng.uniform(0, 2 * np.pi))
        contour = contour / 2.0 * f0_range - 1.5 * t / duration_s
        f0 = f0_mean * 2.0 ** (contour / 12.0)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        tilt = p.tilt + rng.normal(0, 0.12)
        source = sum(k**-tilt * np.sin(k * phase) for k in range(1, int(4000 / f0.min()) + 1))

        voiced, consonants = np.zeros(n), np.zeros(n)
        position = lead
        for (consonant, vowel), length, pause in zip(syllables, lengths, pauses):
            end = position + length
            nucleus = position + int(0.25 * length)
            formants = np.asarray(VOWELS[vowel]) * speaker.formant_scale
            voiced[nucleus:end] += _resonate(source[nucleus:end], formants) * np.hanning(end - nucleus)
            burst = rng.normal(size=nucleus - position) * np.hanning(nucleus - position)
            consonants[position:nucleus] += _resonate(burst, np.array([CONSONANTS[consonant]]), 500.0) * 0.3
            position = end + pause

        speech = voiced / (np.sqrt(np.mean(voiced**2)) + 1e-9) + consonants / (np.sqrt(np.mean(consonants**2)) + 1e-9) * 0.25
        level_db = p.level_db + speaker.level_offset_db + rng.normal(0, 2.5)
        speech *= 10 ** (level_db / 20) / (np.sqrt(np.mean(speech**2)) + 1e-9)
        noise = rng.normal(size=n) * np.sqrt(np.mean(speech**2)) * 10 ** (-rng.uniform(15, 35) / 20)
        return np.clip(speech + noise, -1.0, 1.0).astype(np.float32)


def _resonate(signal: np.ndarray, formants: np.ndarray, bandwidth_hz: float = 90.0) -> np.ndarray:
    """Pass ``signal`` through a cascade of two-pole resonators at ``formants`` (Hz)."""
    out = signal
    for freq in formants:
        r = np.exp(-np.pi * bandwidth_hz / SAMPLE_RATE)
        theta = 2 * np.pi * freq / SAMPLE_RATE
        out = lfilter([1.0 - r], [1.0, -2 * r * np.cos(theta), r * r], out)
    return out
