"""Span masking along time that covers a stated fraction of each utterance's frames.

HuggingFace's ``mask_time_prob`` is a span-start probability whose coverage
depends on overlaps; here ``mask_ratio`` is the fraction of valid frames masked.
Each utterance gets ``round(mask_ratio * frames)`` masked frames in
non-overlapping spans of ``span`` frames (the last may be shorter), placed at
random, so the achieved ratio is within ``0.5 / frames`` of the request.
"""

from __future__ import annotations

import numpy as np
import torch

#: HuBERT masks spans of 10 frames (200 ms).
DEFAULT_SPAN = 10


def span_mask(frame_lengths: torch.Tensor, num_frames: int, mask_ratio: float, rng: np.random.Generator, span: int = DEFAULT_SPAN) -> torch.Tensor:
    """A ``[B, num_frames]`` bool mask: True = masked. Padded frames are never masked.

    ``frame_lengths`` ``[B]`` gives each utterance's valid frames.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if span < 1:
        raise ValueError(f"span must be at least 1, got {span}")
    lengths = frame_lengths.tolist()
    mask = np.zeros((len(lengths), num_frames), dtype=bool)
    for row, length in enumerate(lengths):
        length = min(int(length), num_frames)
        target = int(round(mask_ratio * length))
        if target == 0:
            continue
        spans = [span] * (target // span) + ([target % span] if target % span else [])
        gap_total = length - target
        # Random composition of the unmasked frames into len(spans) + 1 gaps.
        cuts = np.sort(rng.choice(gap_total + len(spans), size=len(spans), replace=False))
        gaps = np.diff(np.concatenate([[-1], cuts])) - 1
        order = rng.permutation(len(spans))
        position = 0
        for gap, span_length in zip(gaps, (spans[i] for i in order)):
            position += int(gap)
            mask[row, position : position + span_length] = True
            position += span_length
    return torch.from_numpy(mask)


def achieved_ratio(mask: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Masked frames over valid frames, for the whole batch: a 0-d float tensor on ``mask``'s device (no host sync)."""
    return mask.sum() / frame_lengths.sum().clamp(min=1)
