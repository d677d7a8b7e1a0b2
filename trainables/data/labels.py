"""IEMOCAP's emotion labels and the named label sets a study can use.

A label set maps the consensus label of an ``EmoEvaluation`` line to a class,
or leaves it out. Classes keep a fixed order so class indices are stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from trainables.data.manifest import Utterance

#: Every consensus label that appears in the IEMOCAP release ("xxx": no agreement).
IEMOCAP_LABELS = frozenset({"neu", "hap", "exc", "ang", "sad", "fru", "fea", "sur", "dis", "oth", "xxx"})


@dataclass(frozen=True)
class LabelSet:
    """A named mapping from raw IEMOCAP labels to an ordered list of classes."""

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[str, str]
    description: str

    def map(self, raw_label: str) -> str | None:
        """The class of ``raw_label``, or ``None`` if this set leaves it out."""
        return self.mapping.get(raw_label)

    def index(self, label: str) -> int:
        """The class index of a (mapped) label."""
        return self.classes.index(label)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _identity(*labels: str) -> dict[str, str]:
    return {label: label for label in labels}


LABEL_SETS: Mapping[str, LabelSet] = MappingProxyType(
    {
        "4class": LabelSet(
            name="4class",
            classes=("neu", "hap", "ang", "sad"),
            mapping=MappingProxyType({**_identity("neu", "hap", "ang", "sad"), "exc": "hap"}),
            description="neutral, happy (excited merged in), angry, sad: the standard 5531 utterances",
        ),
        "4class-noexc": LabelSet(
            name="4class-noexc",
            classes=("neu", "hap", "ang", "sad"),
            mapping=MappingProxyType(_identity("neu", "hap", "ang", "sad")),
            description="neutral, happy, angry, sad; excited left out",
        ),
        "6class": LabelSet(
            name="6class",
            classes=("neu", "hap", "ang", "sad", "exc", "fru"),
            mapping=MappingProxyType(_identity("neu", "hap", "ang", "sad", "exc", "fru")),
            description="neutral, happy, angry, sad, excited, frustrated",
        ),
    }
)

DEFAULT_LABEL_SET = "4class"


def get_label_set(name: str) -> LabelSet:
    """Look a label set up by name, with an error that lists the choices."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; choose one of: {', '.join(LABEL_SETS)}") from None


def classes_of(utterances: Iterable["Utterance"]) -> tuple[str, ...]:
    """The class order of the label set a manifest was prepared with (sorted labels if it matches none)."""
    labels = {u.label for u in utterances}
    for label_set in LABEL_SETS.values():
        if labels <= set(label_set.classes):
            return tuple(label_set.classes)
    return tuple(sorted(labels))
