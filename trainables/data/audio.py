"""Load utterance audio as mono float waveforms at the encoder's sample rate.

Reading is done with soundfile (torchaudio's own loader needs torchcodec);
resampling with torchaudio.

Crop policy for utterances longer than ``max_seconds``:

* ``random``: one random window of ``max_seconds`` (training);
* ``start``: the first ``max_seconds`` (deterministic, e.g. for embedding passes);
* evaluation keeps the whole utterance, or splits it into ``max_seconds`` chunks
  with :func:`chunk` whose predictions are averaged.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class Crop(str, Enum):
    RANDOM = "random"
    START = "start"
    NONE = "none"


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names it."""


def load_waveform(path: str | Path, sample_rate: int) -> torch.Tensor:
    """The mono waveform of ``path`` at ``sample_rate``. Shape: ``[samples]``, float32."""
    try:
        signal, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError) as err:
        raise AudioError(f"{path} is not readable audio ({err}); give a wav/flac/ogg file") from None
    if signal.shape[0] == 0:
        raise AudioError(f"{path} holds no samples")
    waveform = torch.from_numpy(np.ascontiguousarray(signal.mean(axis=1)))
    if rate != sample_rate:
        waveform = AF.resample(waveform, rate, sample_rate)
    return waveform


def crop(waveform: torch.Tensor, max_samples: int | None, policy: Crop, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut ``waveform`` (``[samples]``) to at most ``max_samples`` by ``policy``."""
    if max_samples is None or policy is Crop.NONE or waveform.numel() <= max_samples:
        return waveform
    if policy is Crop.START:
        return waveform[:max_samples]
    offset = int(torch.randint(0, waveform.numel() - max_samples + 1, (1,), generator=generator))
    return waveform[offset : offset + max_samples]


def chunk(waveform: torch.Tensor, max_samples: int, min_samples: int = 400) -> list[torch.Tensor]:
    """Split ``waveform`` (``[samples]``) into consecutive chunks of at most ``max_samples``.

    A final chunk shorter than ``min_samples`` (too short for the CNN) is merged into the previous one.
    """
    chunks = list(torch.split(waveform, max_samples))
    if len(chunks) > 1 and chunks[-1].numel() < min_samples:
        tail = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], tail])
    return chunks
