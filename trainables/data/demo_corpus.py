"""Generate a small corpus in the exact IEMOCAP layout, for the demo and the tests.

Speech-like signals are synthesised from a glottal-like harmonic source with
vowel formants, syllable rhythm, consonant noise and background noise. The
emotion shows in prosody only: pitch level and range, tempo, loudness and
spectral tilt. Every parameter is jittered per utterance and per speaker, so the
classes overlap and have to be learnt, not read off one feature.

``ser-study prepare`` reads the result like the real release.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Prosody:
    """How an emotion sounds, relative to the speaker's neutral voice."""

    f0_scale: float  # multiplies the speaker's mean pitch
    f0_range_semitones: float  # standard deviation of the pitch contour
    syllables_per_s: float
    level_db: float  # RMS level in dBFS
    tilt: float  # harmonic k has amplitude k**-tilt: lower is brighter (tenser voice)
    vad: tuple[float, float, float]  # typical annotator valence, arousal, dominance


#: Emotions of the generated corpus. ``fru`` and ``xxx`` exist so that label-set
#: filtering is exercised; they sit between the studied classes.
PROSODY: dict[str, Prosody] = {
    "neu": Prosody(1.00, 1.2, 4.0, -22.0, 1.3, (3.0, 2.5, 2.5)),
    "hap": Prosody(1.22, 3.5, 4.6, -18.0, 1.0, (4.0, 3.5, 3.0)),
    "exc": Prosody(1.30, 4.0, 5.0, -16.0, 0.95, (4.0, 4.0, 3.5)),
    "ang": Prosody(1.12, 2.4, 5.0, -14.0, 0.7, (1.8, 4.2, 4.0)),
    "sad": Prosody(0.90, 0.8, 3.0, -27.0, 1.6, (1.8, 2.0, 2.0)),
    "fru": Prosody(1.05, 2.0, 4.4, -18.0, 0.9, (2.0, 3.2, 3.0)),
    "xxx": Prosody(1.08, 2.2, 4.3, -20.0, 1.1, (2.8, 3.0, 3.0)),
}
#: Class proportions close to IEMOCAP's (hap + exc about one third of the 4 classes).
LABEL_WEIGHTS: dict[str, float] = {"neu": 0.27, "hap": 0.09, "exc": 0.17, "ang": 0.17, "sad": 0.17, "fru": 0.08, "xxx": 0.05}
#: Drawn in every session before the random draws, so every class has a few utterances everywhere.
GUARANTEED_LABELS = ("neu", "hap", "ang", "sad", "exc") * 2
#: Vowel formants (F1, F2, F3) in Hz for an adult male; female formants are scaled up.
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410], [440, 1020, 2240]])


@dataclass(frozen=True)
class DemoCorpusConfig:
    """Size and shape of the generated corpus."""

    utterances_per_session: int = 60  # 5 sessions x 60 = 300 utterances, a couple of CPU minutes per phase
    dialogs_per_session: int = 4  # half improvised, half scripted, as in IEMOCAP
    median_duration_s: float = 2.5  # IEMOCAP's is about 3.5 s; shorter keeps the demo fast
    max_duration_s: float = 8.0
    min_duration_s: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        if self.utterances_per_session < len(GUARANTEED_LABELS):
            raise ValueError(
                f"utterances_per_session must be at least {len(GUARANTEED_LABELS)}, so every class appears for both speakers"
            )
        if self.dialogs_per_session < 2:
            raise ValueError("dialogs_per_session must be at least 2 (one improvised, one scripted)")
        if not 0 < self.min_duration_s <= self.median_duration_s <= self.max_duration_s:
            raise ValueError("durations must satisfy 0 < min_duration_s <= median_duration_s <= max_duration_s")


@dataclass(frozen=True)
class Speaker:
    session: int
    gender: str
    f0_hz: float
    formant_scale: float
    tempo_scale: float
    level_offset_db: float


def _speakers(session: int, rng: np.random.Generator) -> dict[str, Speaker]:
    return {
        "F": Speaker(session, "F", rng.uniform(190, 235), rng.uniform(1.12, 1.22), rng.uniform(0.85, 1.15), rng.normal(0, 2)),
        "M": Speaker(session, "M", rng.uniform(100, 135), rng.uniform(0.95, 1.05), rng.uniform(0.85, 1.15), rng.normal(0, 2)),
    }


def _resonate(signal: np.ndarray, formants: np.ndarray, bandwidth_hz: float = 90.0) -> np.ndarray:
    """Pass ``signal`` through a cascade of two-pole resonators at ``formants`` (Hz)."""
    out = signal
    for freq in formants:
        r = np.exp(-np.pi * bandwidth_hz / SAMPLE_RATE)
        theta = 2 * np.pi * freq / SAMPLE_RATE
        a = [1.0, -2 * r * np.cos(theta), r * r]
        out = lfilter([1.0 - r], a, out)
    return out


def synthesize(label: str, speaker: Speaker, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """One utterance of ``duration_s`` seconds at 16 kHz, float32 in [-1, 1]. Shape: ``[samples]``."""
    p = PROSODY[label]
    n = int(round(duration_s * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0_mean = speaker.f0_hz * p.f0_scale * rng.uniform(0.9, 1.1)
    f0_range = p.f0_range_semitones * rng.uniform(0.7, 1.3)
    # Smooth pitch contour: a few random slow sinusoids plus declination, in semitones.
    contour = np.zeros(n)
    for _ in range(4):
        contour += rng.normal() * np.sin(2 * np.pi * rng.uniform(0.3, 2.5) * t + rng.uniform(0, 2 * np.pi))
    contour = contour / 2.0 * f0_range - 1.5 * t / max(duration_s, 1e-3)
    f0 = f0_mean * 2.0 ** (contour / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    n_harmonics = int(4000 / f0.min())
    tilt = p.tilt + rng.normal(0, 0.12)
    source = sum(k ** -tilt * np.sin(k * phase) for k in range(1, n_harmonics + 1))

    # Syllables: voiced nuclei with formants, separated by short noisy consonants.
    rate = p.syllables_per_s * speaker.tempo_scale * rng.uniform(0.85, 1.15)
    voiced = np.zeros(n)
    consonants = np.zeros(n)
    position = int(rng.uniform(0.05, 0.15) * SAMPLE_RATE)
    while position < n - 400:
        length = int(SAMPLE_RATE / rate * rng.uniform(0.7, 1.3))
        end = min(n, position + length)
        nucleus_start = position + int(0.25 * (end - position))
        vowel = VOWELS[rng.integers(len(VOWELS))] * speaker.formant_scale
        segment = _resonate(source[nucleus_start:end], vowel)
        envelope = np.hanning(end - nucleus_start)
        voiced[nucleus_start:end] += segment * envelope
        burst = rng.normal(size=nucleus_start - position) * np.hanning(nucleus_start - position)
        consonants[position:nucleus_start] += _resonate(burst, np.array([rng.uniform(2500, 5000)]), 600.0) * 0.3
        position = end + int(rng.uniform(0.0, 0.12) * SAMPLE_RATE)

    speech = voiced / (np.sqrt(np.mean(voiced**2)) + 1e-9) + consonants / (np.sqrt(np.mean(consonants**2)) + 1e-9) * 0.25
    level_db = p.level_db + speaker.level_offset_db + rng.normal(0, 2.5)
    speech *= 10 ** (level_db / 20) / (np.sqrt(np.mean(speech**2)) + 1e-9)
    snr_db = rng.uniform(15, 35)
    noise = rng.normal(size=n) * np.sqrt(np.mean(speech**2)) * 10 ** (-snr_db / 20)
    return np.clip(speech + noise, -1.0, 1.0).astype(np.float32)


def _dialog_names(session: int, count: int) -> list[str]:
    names = []
    for d in range(count):
        lead = "FM"[d % 2]
        kind = f"impro{d // 2 + 1:02d}" if d % 2 == 0 else f"script{d // 2 + 1:02d}_1"
        names.append(f"Ses{session:02d}{lead}_{kind}")
    return names


def _evaluation_block(start: float, end: float, utt_id: str, label: str, vad: tuple[float, float, float]) -> str:
    v, a, d = vad
    names = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness", "fru": "Frustration", "xxx": "Other"}
    return (
        f"[{start:.4f} - {end:.4f}]\t{utt_id}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
        f"C-E1:\t{names[label]};\t()\n"
        f"C-E2:\t{names[label]};\t()\n"
        f"A-E1:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()\n\n"
    )


def generate_demo_corpus(out: str | Path, config: DemoCorpusConfig = DemoCorpusConfig()) -> Path:
    """Write the corpus under ``out/IEMOCAP_full_release`` and return that directory.

    Deterministic for ``config.seed``. The corpus is built in a temporary
    directory and renamed into place, so an interrupted run leaves nothing
    that looks complete. Refuses to overwrite an existing corpus.
    """
    config.validate()
    out = Path(out)
    release = out / "IEMOCAP_full_release"
    if release.exists():
        raise FileExistsError(f"{release} already exists; remove it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".IEMOCAP_full_release.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        seeds = np.random.SeedSequence(config.seed).spawn(5)
        for session, seed in zip(range(1, 6), seeds):
            _write_session(tmp / f"Session{session}", session, config, np.random.default_rng(seed))
        tmp.rename(release)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("generated a %d-utterance IEMOCAP-shaped corpus in %s", 5 * config.utterances_per_session, release)
    return release


def _write_session(session_dir: Path, session: int, config: DemoCorpusConfig, rng: np.random.Generator) -> None:
    speakers = _speakers(session, rng)
    dialogs = _dialog_names(session, config.dialogs_per_session)
    labels = list(LABEL_WEIGHTS)
    weights = np.array(list(LABEL_WEIGHTS.values()))
    drawn = list(rng.choice(labels, size=config.utterances_per_session - len(GUARANTEED_LABELS), p=weights / weights.sum()))
    utterance_labels = list(GUARANTEED_LABELS) + drawn
    rng.shuffle(utterance_labels)
    eval_dir = session_dir / "dialog" / "EmoEvaluation"
    eval_dir.mkdir(parents=True)
    blocks: dict[str, list[str]] = {d: [] for d in dialogs}
    clock: dict[str, float] = {d: 0.0 for d in dialogs}
    index: dict[tuple[str, str], int] = {}
    sigma = 0.5
    for i, label in enumerate(utterance_labels):
        dialog = dialogs[i % len(dialogs)]
        gender = "FM"[(i // len(dialogs)) % 2]
        number = index.get((dialog, gender), 0)
        index[(dialog, gender)] = number + 1
        utt_id = f"{dialog}_{gender}{number:03d}"
        duration = float(np.clip(config.median_duration_s * np.exp(rng.normal(0, sigma)), config.min_duration_s, config.max_duration_s))
        signal = synthesize(label, speakers[gender], duration, rng)
        wav = session_dir / "sentences" / "wav" / dialog / f"{utt_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), signal, SAMPLE_RATE, subtype="PCM_16")
        vad = tuple(float(np.clip(x + rng.normal(0, 0.4), 1, 5)) for x in PROSODY[label].vad)
        start = clock[dialog] + rng.uniform(0.2, 1.0)
        clock[dialog] = start + duration
        blocks[dialog].append(_evaluation_block(start, start + duration, utt_id, label, vad))
    for dialog, dialog_blocks in blocks.items():
        header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        (eval_dir / f"{dialog}.txt").write_text(header + "".join(dialog_blocks), encoding="utf-8")
