"""Transcripts as character targets for CTC.

IEMOCAP's transcription lines mix words with markers such as ``[LAUGHTER]``,
``[GARBAGE]`` or ``{breath}``. :func:`normalize` drops the markers and every
character outside :data:`CHARACTERS` (after lower-casing) and collapses
spaces; :func:`encode` maps the result to ids ``1..len(CHARACTERS)``, 0 being
CTC's blank.
"""

from __future__ import annotations

import re

#: The CTC alphabet after normalisation; id = position + 1 (0 is the blank).
CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"
VOCAB_SIZE = len(CHARACTERS) + 1
_MARKERS = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
_IDS = {character: index + 1 for index, character in enumerate(CHARACTERS)}


def normalize(text: str) -> str:
    """Lower-case words of ``text`` in :data:`CHARACTERS`, markers removed, single spaces."""
    kept = "".join(c for c in _MARKERS.sub(" ", text.lower()) if c in _IDS)
    return " ".join(kept.split())


def encode(text: str) -> list[int]:
    """The CTC target ids of ``text`` (normalised first); empty when nothing is left."""
    return [_IDS[c] for c in normalize(text)]


def decode(ids: list[int]) -> str:
    """Greedy CTC decoding of frame ids: repeats merged, blanks dropped."""
    out, previous = [], 0
    for index in ids:
        if index != previous and index != 0:
            out.append(CHARACTERS[index - 1])
        previous = index
    return "".join(out)
