"""A group-norm CNN's first normalisation, over each utterance's valid positions only.

HuBERT-base's and wav2vec2-base's CNN (``feat_extract_norm="group"``)
standardises each channel of its first convolution over the whole time axis.
In a zero-padded batch that axis includes the padding, so an utterance's
frames would depend on the batch it is in. :class:`MaskedGroupNorm` takes the
statistics over the valid positions only (those whose receptive field lies in
the utterance's samples); every later CNN layer, the positional convolution
(HF zeroes padded frames before it) and the attention (masked) already ignore
padding, so a padded utterance's valid frames equal those of the utterance
encoded alone. Inference can then batch such an encoder's utterances by
length, and training batches see the statistics evaluation sees.

:func:`install_masked_group_norm` swaps HF's ``nn.GroupNorm`` for this
subclass; the parameters and their names stay, so checkpoints are
unchanged. :class:`~trainables.models.encoder.SpeechEncoder` sets the valid
lengths around each forward (:meth:`MaskedGroupNorm.valid_lengths`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class MaskedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over ``[B, C, T]`` whose statistics skip each row's positions from ``lengths[b]`` on.

    Without lengths set (a caller that does not know them) it is exactly ``nn.GroupNorm``.
    """

    lengths: torch.Tensor | None = None

    @contextlib.contextmanager
    def valid_lengths(self, lengths: torch.Tensor) -> Iterator[None]:
        """Within the block, row ``b`` of the input has ``lengths[b]`` valid positions (``[B]`` long)."""
        self.lengths = lengths
        try:
            yield
        finally:
            self.lengths = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lengths is None:
            return super().forward(hidden)
        with torch.autocast(hidden.device.type, enabled=False):  # statistics in float32, as autocast keeps group_norm
            return self._masked(hidden)

    def _masked(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, channels, time = hidden.shape
        x = hidden.float()
        per_group = channels // self.num_groups
        valid = (torch.arange(time, device=x.device)[None, :] < self.lengths.to(x.device)[:, None]).to(x.dtype)  # [B, T]
        count = (valid.sum(dim=1, keepdim=True) * per_group).clamp(min=1)  # [B, 1]

        def channel_means(values: torch.Tensor) -> torch.Tensor:
            """``values`` ``[B, C, T]`` -> the mean over each group's valid positions, per channel ``[B, C, 1]`` (a batched matmul: the fastest masked sum)."""
            sums = torch.bmm(values, valid[:, :, None]).reshape(batch, self.num_groups, per_group).sum(dim=-1)
            return (sums / count).repeat_interleave(per_group, dim=1)[:, :, None]

        centered = x - channel_means(x)
        scale = torch.rsqrt(channel_means(centered.square()) + self.eps)  # [B, C, 1]
        if not self.affine:
            return (centered * scale).to(hidden.dtype)
        return torch.addcmul(self.bias.float()[None, :, None], centered, scale * self.weight.float()[None, :, None]).to(hidden.dtype)


def first_group_norm(model: nn.Module) -> nn.GroupNorm | None:
    """The ``nn.GroupNorm`` of a HF wav2vec2-style model's first CNN layer (``feature_extractor.conv_layers[0].layer_norm``), or None."""
    layers = getattr(getattr(model, "feature_extractor", None), "conv_layers", None)
    norm = getattr(layers[0], "layer_norm", None) if layers else None
    return norm if isinstance(norm, nn.GroupNorm) else None


def install_masked_group_norm(model: nn.Module) -> MaskedGroupNorm | None:
    """Make ``model``'s first-layer group norm a :class:`MaskedGroupNorm` (same parameters); None when it has none."""
    norm = first_group_norm(model)
    if norm is None:
        return None
    if isinstance(norm, MaskedGroupNorm):
        return norm
    masked = MaskedGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
    if norm.affine:
        masked.weight, masked.bias = norm.weight, norm.bias  # the same parameters: state dict and optimiser unchanged
    model.feature_extractor.conv_layers[0].layer_norm = masked
    return masked
