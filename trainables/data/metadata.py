"""Utterance metadata as auxiliary classification tasks: what a manifest row says besides the emotion.

GMP-TL adds the speaker's gender as a second head; the metadata method adds
gender and speaking style. Each :class:`MetadataTask` reads its class from an
:class:`~trainables.data.manifest.Utterance` (None when the row does not say),
and a missing value is left out of the task's loss (:data:`IGNORE_INDEX`).
Speaker identity is not a task: under leave-one-session-out the test
speakers are never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from trainables.data.manifest import Utterance

#: The target of an utterance whose metadata is missing: ``cross_entropy``'s ignore_index.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class MetadataTask:
    """An utterance-level auxiliary task: its ordered classes and how a manifest row gives one."""

    name: str
    classes: tuple[str, ...]
    value: Callable[[Utterance], str | None]
    help: str

    def index(self, utterance: Utterance) -> int:
        """The class index of ``utterance``, or :data:`IGNORE_INDEX` when its row lacks the value."""
        value = self.value(utterance)
        return self.classes.index(value) if value in self.classes else IGNORE_INDEX


def _gender(utterance: Utterance) -> str | None:
    return utterance.gender.upper() if utterance.gender else None


def _style(utterance: Utterance) -> str:
    return "improvised" if utterance.improvised else "scripted"


METADATA_TASKS: Mapping[str, MetadataTask] = MappingProxyType(
    {
        "gender": MetadataTask("gender", ("F", "M"), _gender, "the speaker's gender (IEMOCAP: the utterance id's F/M after the dialog)"),
        "style": MetadataTask("style", ("improvised", "scripted"), _style, "improvised or scripted dialog (IEMOCAP: 'impro' or 'script' in the dialog name)"),
    }
)


def metadata_task(name: str) -> MetadataTask:
    """The task called ``name``; a ``KeyError`` lists the known ones."""
    try:
        return METADATA_TASKS[name]
    except KeyError:
        raise KeyError(f"unknown metadata task {name!r}; known: {', '.join(METADATA_TASKS)}") from None


def task_coverage(task: MetadataTask, utterances: Sequence[Utterance]) -> dict[str, int]:
    """How many of ``utterances`` have each class of ``task`` (``missing``: no value)."""
    counts = {name: 0 for name in (*task.classes, "missing")}
    for utterance in utterances:
        index = task.index(utterance)
        counts["missing" if index == IGNORE_INDEX else task.classes[index]] += 1
    return counts
