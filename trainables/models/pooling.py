"""Utterance pooling over the valid frames of an encoder output.

Both poolings ignore padded frames, so the pooling itself adds no dependence
on a batch's padding. Nor do the frames: a CNN that normalises over time
(group norm, e.g. HuBERT-base) takes its statistics over the valid samples
only (:mod:`trainables.models.masked_norm`).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import POOLINGS


class AveragePooling(nn.Module):
    """Mean over valid frames. hidden ``[B, F, H]``, frame_mask ``[B, F]`` bool -> ``[B, H]``."""

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        mask = frame_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class AttentionPooling(nn.Module):
    """Soft attention: e_t = tanh(w . h_t), a = softmax over valid frames, u = sum_t a_t h_t.

    hidden ``[B, F, H]``, frame_mask ``[B, F]`` bool -> ``[B, H]``. The weights of the
    last call are kept in ``last_weights`` (``[B, F]``) for inspection.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        self.last_weights: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        energy = torch.tanh(self.score(hidden).squeeze(-1)).float()
        energy = energy.masked_fill(~frame_mask, float("-inf"))
        weights = torch.softmax(energy, dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # an utterance with no valid frame pools to zero
        self.last_weights = weights.detach()
        return torch.einsum("bf,bfh->bh", weights.to(hidden.dtype), hidden)


class StatisticsPooling(nn.Module):
    """Mean and standard deviation over valid frames (x-vector statistics pooling).

    hidden ``[B, F, H]``, frame_mask ``[B, F]`` bool -> ``[B, 2H]`` (means, then
    standard deviations). The spread keeps what a mean averages away: how far
    pitch, energy and spectrum move within the utterance.
    """

    def __init__(self):
        super().__init__()
        self.average = AveragePooling()

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        mean = self.average(hidden, frame_mask)
        variance = self.average((hidden - mean.unsqueeze(1)) ** 2, frame_mask)
        return torch.cat([mean, torch.sqrt(variance + 1e-6)], dim=-1)


def pooled_size(name: str, hidden_size: int) -> int:
    """Width of the utterance vector a pooling gives for frames of ``hidden_size``."""
    return 2 * hidden_size if name == "stats" else hidden_size


def make_pooling(name: str, hidden_size: int) -> nn.Module:
    if name == "attention":
        return AttentionPooling(hidden_size)
    if name == "average":
        return AveragePooling()
    if name == "stats":
        return StatisticsPooling()
    raise ValueError(f"unknown pooling {name!r}; choose one of {POOLINGS}")
