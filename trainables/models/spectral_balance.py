"""The utterance's spectral balance (its long-term average spectrum's shape), read from its raw samples beside the encoder.

A HuBERT-style encoder hears the spectrum frame by frame, but its group-norm
CNN (HuBERT-base's) standardises each channel of its first convolution over
the whole utterance, and those channels are band filters of the waveform: how
much energy the utterance holds in one band against another, over the whole
utterance, is what that normalisation takes away; only its movement within the
utterance is left. That balance is a classic correlate of vocal effort and
arousal (eGeMAPS's alpha ratio, Hammarberg index and spectral slopes measure
it). A classifier with ``spectral_balance`` reads it here and appends it to
its pooled vector, beside the loudness level (``trainables.models.loudness``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.models.encoder import EncoderInfo

#: Bands of :class:`UtteranceSpectralBalance`, log-spaced from :data:`LOWEST_HZ` to :data:`HIGHEST_HZ` (or 95 % of Nyquist).
SPECTRAL_BANDS = 8
LOWEST_HZ = 80.0
HIGHEST_HZ = 7600.0
#: The analysis window and hop, in seconds (a 512-point FFT at 16 kHz).
WINDOW_SECONDS = 0.032
HOP_SECONDS = 0.010
#: Added to each band's mean power before the log, so that digital silence stays finite.
POWER_FLOOR = 1e-10


def band_matrix(sample_rate: int, n_fft: int, bands: int = SPECTRAL_BANDS) -> torch.Tensor:
    """``[bands, n_fft // 2 + 1]``: 1 where an FFT bin's frequency lies in a band (log-spaced edges), else 0.

    Raises ``ValueError`` when the sample rate leaves a band without a bin.
    """
    top = min(HIGHEST_HZ, 0.95 * sample_rate / 2)
    edges = torch.logspace(math.log10(LOWEST_HZ), math.log10(top), bands + 1, dtype=torch.float64)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    matrix = ((freqs[None, :] >= edges[:-1, None]) & (freqs[None, :] < edges[1:, None])).float()
    if (matrix.sum(dim=1) == 0).any():
        raise ValueError(f"a {sample_rate} Hz encoder gives a {bands}-band spectral balance an empty band; turn spectral_balance off")
    return matrix


class UtteranceSpectralBalance(nn.Module):
    """waveforms ``[B, T]``, attention_mask ``[B, T]`` (1 = a real sample) -> ``[B, SPECTRAL_BANDS]``.

    The power spectrum averaged over every analysis window that lies wholly
    within the utterance's valid samples (the long-term average spectrum),
    summed into log-spaced bands, in log, minus its mean over the bands. So it
    is the spectrum's shape only: a gain, the waveform's normalisation and
    padding do not change it. Nothing is learnt.
    """

    def __init__(self, info: EncoderInfo, bands: int = SPECTRAL_BANDS):
        super().__init__()
        self.window_length = round(WINDOW_SECONDS * info.sample_rate)
        self.hop = round(HOP_SECONDS * info.sample_rate)
        self.register_buffer("window", torch.hann_window(self.window_length), persistent=False)
        self.register_buffer("bands", band_matrix(info.sample_rate, self.window_length, bands), persistent=False)

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        samples = waveforms.float() * attention_mask.to(torch.float32)
        if samples.shape[1] < self.window_length:
            samples = torch.nn.functional.pad(samples, (0, self.window_length - samples.shape[1]))
        frames = samples.unfold(1, self.window_length, self.hop) * self.window  # [B, W, window]
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)  # [B, W, bins]
        lengths = attention_mask.sum(dim=1)
        whole = torch.div(lengths - self.window_length, self.hop, rounding_mode="floor") + 1  # windows wholly inside
        count = whole.clamp(min=1, max=power.shape[1])  # an utterance shorter than one window keeps its one padded window
        valid = (torch.arange(power.shape[1], device=power.device)[None, :] < count[:, None]).to(power.dtype)
        average = (power * valid[..., None]).sum(dim=1) / count[:, None].to(power.dtype)  # [B, bins]
        level = torch.log(average @ self.bands.T + POWER_FLOOR)  # [B, bands]
        return level - level.mean(dim=1, keepdim=True)
