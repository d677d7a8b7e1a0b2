"""Every kind of phase: its code version and what it does with the utterances its record names.

A phase artifact's ``record.json`` lists, per *role* (``trained_on``,
``selected_on``, ``tested_on``, ...), the utterances the phase used. The
kind says, for each role, which of the fold's sets those must be and how the
test session may enter it (:data:`ACCESS`), so that the leakage audit checks
any recipe's chain the same way. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

#: How a role may see the fold's test session: never (its labels are learnt), as validation, as unlabelled audio, or as the test.
LABELS, VALIDATION, AUDIO, TEST = "labels", "validation", "audio", "test"
#: A fixed function of each utterance's audio (nothing learnt): the test session may pass through it.
FIXED = "fixed"
#: The fold's sets a role must be: its training, validation, test, or unsupervised (train + val, + test audio if the protocol allows) set.
TRAIN_SET, VAL_SET, TEST_SET, UNSUPERVISED_SET = "train", "val", "test", "unsupervised"
#: Every utterance of the fold: train + val + test.
FOLD_SET = "fold"


@dataclass(frozen=True)
class Role:
    """One role of a phase's record: what the phase did with those utterances, the fold's set it must be, and its access."""

    doing: str
    set: str
    access: str


@dataclass(frozen=True)
class PhaseKind:
    """A kind of phase: its label in reports, its code version (bumped when its output changes) and its roles."""

    label: str
    version: int
    roles: Mapping[str, Role] = field(default_factory=dict)


_SUPERVISED = {
    "trained_on": Role("trained on (with labels)", TRAIN_SET, LABELS),
    "selected_on": Role("selected its checkpoint on (validation, with labels)", VAL_SET, VALIDATION),
}
_TESTED = {"tested_on": Role("tested on", TEST_SET, TEST)}

PHASE_KINDS: Mapping[str, PhaseKind] = MappingProxyType(
    {
        "tapt": PhaseKind("TAPT", 2, _SUPERVISED),
        "embeddings": PhaseKind("embeddings", 1, {"embedded": Role("embedded (audio, the input of k-means and CPT)", UNSUPERVISED_SET, AUDIO)}),
        "clustering": PhaseKind("k-means", 1, {"fit_on": Role("fit k-means on (audio)", UNSUPERVISED_SET, AUDIO)}),
        "cpt": PhaseKind("CPT", 1, {"trained_on": Role("pretrained on (audio with k-means pseudo labels)", UNSUPERVISED_SET, AUDIO)}),
        "finetune": PhaseKind("fine-tuning", 1, {**_SUPERVISED, **_TESTED}),
        "score": PhaseKind("scoring", 1, _TESTED),
        "egemaps_features": PhaseKind("eGeMAPS features", 1, {"featurized": Role("computed fixed eGeMAPS functionals of (nothing learnt)", FOLD_SET, FIXED)}),
        "egemaps": PhaseKind("eGeMAPS", 1, {**_SUPERVISED, **_TESTED}),
        "mtl_stage1": PhaseKind("multi-task stage 1", 1, _SUPERVISED),
        "mtl_stage2": PhaseKind("multi-task stage 2", 1, {**_SUPERVISED, **_TESTED}),
    }
)
#: The phase kinds, in the order reports list them.
PHASES = tuple(PHASE_KINDS)


def phase_kind(phase: str) -> PhaseKind:
    """The kind called ``phase`` (a ``KeyError`` names the known ones)."""
    try:
        return PHASE_KINDS[phase]
    except KeyError:
        raise KeyError(f"unknown phase {phase!r}; known phases: {', '.join(PHASES)}") from None
