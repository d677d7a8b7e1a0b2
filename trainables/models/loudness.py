"""The utterance's loudness level, read from its raw samples beside the encoder.

A HuBERT-style encoder cannot hear how loud an utterance is: its CNN
normalises what its first layer sees (group norm: each channel over the whole
utterance, HuBERT-base; layer norm: each frame over its channels), and
HuBERT-base's convolutions have no bias, so scaling the waveform by any gain
gives the same frames. Loudness is one of
the strongest cues of arousal (eGeMAPS keeps 11 loudness functionals). A
classifier with ``loudness`` reads it here, from the samples themselves,
frame by frame on the encoder's own grid, and appends it to its pooled vector.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.models.encoder import EncoderInfo

#: What :class:`UtteranceLoudness` gives per utterance: the mean and standard deviation of its frames' log energy.
LOUDNESS_FEATURES = 2
#: Added to each frame's mean square before the log, so that digital silence stays finite (-18.4).
ENERGY_FLOOR = 1e-8


class UtteranceLoudness(nn.Module):
    """waveforms ``[B, T]`` (not normalised), attention_mask ``[B, T]`` (1 = a real sample) -> ``[B, 2]``.

    Each encoder frame's log mean square over its receptive field (the frames
    :meth:`EncoderInfo.frame_lengths` counts), then the mean and standard
    deviation over the utterance's valid frames: its level and how much it moves.
    Padding does not change them. Nothing is learnt.
    """

    def __init__(self, info: EncoderInfo):
        super().__init__()
        self.info = info

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        window, hop = self.info.receptive_field, self.info.total_stride
        samples = waveforms.float() * attention_mask.to(torch.float32)
        if samples.shape[1] < window:
            samples = torch.nn.functional.pad(samples, (0, window - samples.shape[1]))
        energy = torch.log(samples.unfold(1, window, hop).pow(2).mean(dim=-1) + ENERGY_FLOOR)  # [B, F]
        lengths = self.info.frame_lengths(attention_mask.sum(dim=1)).clamp(min=1, max=energy.shape[1])
        mask = (torch.arange(energy.shape[1], device=energy.device)[None, :] < lengths[:, None]).to(energy.dtype)
        count = mask.sum(dim=1)
        mean = (energy * mask).sum(dim=1) / count
        spread = (((energy - mean[:, None]) * mask) ** 2).sum(dim=1) / count
        return torch.stack([mean, torch.sqrt(spread + 1e-6)], dim=-1)
