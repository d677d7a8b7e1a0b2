"""Leave-one-session-out folds: which utterances train, validate and test.

Fold ``k`` tests on session ``k``. Validation comes from the training sessions
under the strict protocol; the published code's choice (one speaker of the test
session validates, the other is tested) is available and flagged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np

from trainables.data.manifest import Utterance, fingerprint

#: Which audio the unsupervised phases (embeddings, k-means, CPT) may see.
UNSUPERVISED_AUDIO = ("train", "train+test")


class Validation(str, Enum):
    """Where a fold's validation utterances come from."""

    SPEAKERS = "speakers"  # whole speakers of the training sessions, chosen by seed (strict, speaker-independent; default)
    STRATIFIED = "stratified"  # a label-stratified fraction of the training sessions (strict; shares speakers with training)
    TRAIN_SPEAKER = "train_speaker"  # one named (or seeded) speaker of the training sessions (strict)
    TEST_SESSION_SPEAKER = "test_session_speaker"  # one speaker of the test session (published code; not strict)


@dataclass(frozen=True)
class FoldSpec:
    """How to split the manifest for one fold."""

    test_session: int
    validation: Validation = Validation.SPEAKERS
    val_fraction: float = 0.1  # SPEAKERS: of the training speakers (at least one); STRATIFIED: of each class in the training sessions
    val_speaker: str | None = None  # e.g. "Ses02F" for TRAIN_SPEAKER, gender "F"/"M" for TEST_SESSION_SPEAKER; None: chosen by seed
    seed: int = 0


@dataclass(frozen=True)
class Split:
    """The utterance ids of one part of a fold, sorted, with their fingerprint."""

    utt_ids: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.utt_ids)

    def __len__(self) -> int:
        return len(self.utt_ids)


@dataclass(frozen=True)
class Fold:
    spec: FoldSpec
    train: Split
    val: Split
    test: Split

    @property
    def strict(self) -> bool:
        """True when no utterance of the test session is used outside the test split."""
        return self.spec.validation is not Validation.TEST_SESSION_SPEAKER

    def summary(self) -> dict[str, object]:
        return {
            "test_session": self.spec.test_session,
            "validation": self.spec.validation.value,
            "strict": self.strict,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "train_fingerprint": self.train.fingerprint,
            "val_fingerprint": self.val.fingerprint,
            "test_fingerprint": self.test.fingerprint,
        }


@dataclass(frozen=True)
class FoldProtocol:
    """How folds are split and which audio the unsupervised phases may see."""

    validation: Validation = Validation.SPEAKERS
    val_fraction: float = 0.1
    val_speaker: str | None = None
    # "train": embeddings, k-means and CPT see the training sessions only (strict).
    # "train+test": they also see the test session's audio, without labels (the published code).
    unsupervised_audio: str = "train"
    seed: int = 0

    def validate(self) -> None:
        if self.unsupervised_audio not in UNSUPERVISED_AUDIO:
            raise ValueError(f"protocol.unsupervised_audio must be one of {UNSUPERVISED_AUDIO}, got {self.unsupervised_audio!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"protocol.val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def strict(self) -> bool:
        return self.unsupervised_audio == "train" and self.validation is not Validation.TEST_SESSION_SPEAKER

    def fold_spec(self, test_session: int) -> FoldSpec:
        return FoldSpec(test_session, Validation(self.validation), self.val_fraction, self.val_speaker, self.seed)

    def unsupervised_ids(self, fold: "Fold") -> tuple[str, ...]:
        """The utterances whose audio (no labels) the unsupervised phases of ``fold`` may use, sorted.

        The training sessions' (training and validation) under ``train``; with
        ``train+test`` the test session's too. Validation drawn from the test
        session (``test_session_speaker``) is test-session audio: it joins only
        under ``train+test``.
        """
        ids = set(fold.train.utt_ids)
        val_in_test = Validation(self.validation) is Validation.TEST_SESSION_SPEAKER
        if not val_in_test or self.unsupervised_audio == "train+test":
            ids |= set(fold.val.utt_ids)
        if self.unsupervised_audio == "train+test":
            ids |= set(fold.test.utt_ids)
        return tuple(sorted(ids))

    def describe(self) -> str:
        if self.strict:
            return f"strict (validation: {Validation(self.validation).value}; the test session enters no phase but the test)"
        loose = []
        if self.unsupervised_audio == "train+test":
            loose.append("test-session audio (no labels) in embeddings, k-means and CPT")
        if Validation(self.validation) is Validation.TEST_SESSION_SPEAKER:
            loose.append("validation on a speaker of the test session")
        return "NOT strict: " + "; ".join(loose)


class FoldError(ValueError):
    """A fold that cannot be built from the manifest; the message says why and what to change."""


def _split(utterances: Sequence[Utterance]) -> Split:
    return Split(tuple(sorted(u.utt_id for u in utterances)))


def _chosen_speakers(speakers: Sequence[str], count: int, rng: np.random.Generator) -> set[str]:
    """``count`` speakers drawn by ``rng``, alternating genders (the letter ending a speaker id) while both remain."""
    by_gender: dict[str, list[str]] = defaultdict(list)
    for speaker in speakers:
        by_gender[speaker[-1]].append(speaker)
    pools = [list(rng.permutation(by_gender[g])) for g in sorted(by_gender)]
    start = int(rng.integers(len(pools)))
    chosen: list[str] = []
    index = start
    while len(chosen) < count:
        pool = pools[index % len(pools)]
        if pool:
            chosen.append(str(pool.pop()))
        index += 1
    return set(chosen)


def build_fold(utterances: Sequence[Utterance], spec: FoldSpec) -> Fold:
    """Split ``utterances`` into train/val/test for ``spec.test_session``.

    Deterministic for ``spec.seed``. Raises :class:`FoldError` if a part would be empty.
    """
    sessions = sorted({u.session for u in utterances})
    if spec.test_session not in sessions:
        raise FoldError(f"test session {spec.test_session} has no utterances in the manifest (sessions present: {sessions})")
    if len(sessions) < 2:
        raise FoldError("leave-one-session-out needs at least two sessions in the manifest")
    rng = np.random.default_rng([spec.seed, spec.test_session])
    rest = [u for u in utterances if u.session != spec.test_session]
    test = [u for u in utterances if u.session == spec.test_session]

    if spec.validation in (Validation.SPEAKERS, Validation.STRATIFIED) and not 0.0 < spec.val_fraction < 1.0:
        raise FoldError(f"val_fraction must be in (0, 1), got {spec.val_fraction}")
    if spec.validation is Validation.SPEAKERS:
        speakers = sorted({u.speaker for u in rest})
        if len(speakers) < 2:
            raise FoldError(f"fold {spec.test_session}: validation 'speakers' needs at least two training speakers, found {speakers}; use validation 'stratified'")
        count = min(len(speakers) - 1, max(1, int(round(spec.val_fraction * len(speakers)))))
        chosen = _chosen_speakers(speakers, count, rng)
        val = [u for u in rest if u.speaker in chosen]
        train = [u for u in rest if u.speaker not in chosen]
    elif spec.validation is Validation.STRATIFIED:
        by_label: dict[str, list[Utterance]] = defaultdict(list)
        for u in sorted(rest, key=lambda u: u.utt_id):
            by_label[u.label].append(u)
        val_ids: set[str] = set()
        for label in sorted(by_label):
            members = by_label[label]
            count = max(1, int(round(spec.val_fraction * len(members)))) if len(members) > 1 else 0
            chosen = rng.choice(len(members), size=count, replace=False)
            val_ids.update(members[i].utt_id for i in chosen)
        val = [u for u in rest if u.utt_id in val_ids]
        train = [u for u in rest if u.utt_id not in val_ids]
    elif spec.validation is Validation.TRAIN_SPEAKER:
        speakers = sorted({u.speaker for u in rest})
        speaker = spec.val_speaker or speakers[rng.integers(len(speakers))]
        if speaker not in speakers:
            raise FoldError(f"validation speaker {speaker!r} is not a training speaker of fold {spec.test_session}; choose one of {speakers}")
        val = [u for u in rest if u.speaker == speaker]
        train = [u for u in rest if u.speaker != speaker]
    else:
        gender = spec.val_speaker or "FM"[rng.integers(2)]
        if gender not in ("F", "M"):
            raise FoldError(f"for validation {spec.validation.value!r}, val_speaker is the gender of the validation speaker, 'F' or 'M', got {gender!r}")
        train = rest
        val = [u for u in test if u.gender == gender]
        test = [u for u in test if u.gender != gender]

    fold = Fold(spec, _split(train), _split(val), _split(test))
    for name in ("train", "val", "test"):
        if len(getattr(fold, name)) == 0:
            raise FoldError(f"fold {spec.test_session} has an empty {name} split; the manifest is too small for validation {spec.validation.value!r}")
    return fold


def build_folds(utterances: Sequence[Utterance], specs: Sequence[FoldSpec]) -> list[Fold]:
    return [build_fold(utterances, spec) for spec in specs]
