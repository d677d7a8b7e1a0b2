"""Models built on a :class:`SpeechEncoder`: the utterance classifier and the frame predictor.

Both take a mapping of task name to class count, so a second task (e.g. the
speaker's gender, as GMP-TL adds) or several pseudo-label sets (several K at
once) are more heads, and their losses are summed.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.encoder import SpeechEncoder
from trainables.models.pooling import make_pooling

FRAME_HEADS = ("cosine", "linear")


HEAD_NORMS = ("none", "batch")


class PooledNorm(nn.BatchNorm1d):
    """Each dimension of pooled vectors ``[B, H]`` standardised over the batch, without scale or shift.

    A training batch of one utterance (a long one, bucketed alone) has no
    spread to standardise by: it uses the running statistics, as evaluation does.
    """

    def __init__(self, size: int):
        super().__init__(size, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and pooled.shape[0] < 2:
            return F.batch_norm(pooled, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(pooled)


class UtteranceClassifier(nn.Module):
    """Encoder -> pooling over valid frames -> (optionally) standardised -> one linear head per task.

    ``head_norm="batch"`` standardises each dimension of the pooled vector over
    the batch (a ``BatchNorm1d`` without scale or shift; running statistics at
    evaluation), as x-vector and ECAPA heads do: pooled frames of a small
    encoder vary little between utterances next to their mean, and a linear
    head needs many updates to find those small differences unscaled.
    ``forward`` returns ``{task: logits [B, classes]}``.
    """

    def __init__(self, encoder: SpeechEncoder, pooling: str, tasks: Mapping[str, int], dropout: float = 0.1, head_norm: str = "none"):
        super().__init__()
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
        self.encoder = encoder
        self.pooling_name = pooling
        self.head_norm = head_norm
        self.pooling = make_pooling(pooling, encoder.hidden_size)
        self.norm = PooledNorm(encoder.hidden_size) if head_norm == "batch" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(encoder.hidden_size, n) for task, n in tasks.items()})

    def pooled(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The utterance vectors ``[B, H]`` the heads read (after pooling and the head's normalisation)."""
        out = self.encoder(waveforms, attention_mask)
        return self.norm(self.pooling(out.last_hidden, out.frame_mask).float())

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.dropout(self.pooled(waveforms, attention_mask))
        return {task: head(pooled) for task, head in self.heads.items()}


class CosineFrameHead(nn.Module):
    """HuBERT's target head: project frames, cosine similarity to learnt label embeddings, over a temperature.

    hidden ``[N, H]`` -> logits ``[N, K]``.
    """

    def __init__(self, hidden_size: int, num_labels: int, projection_size: int = 256, temperature: float = 0.1):
        super().__init__()
        self.projection = nn.Linear(hidden_size, projection_size)
        self.label_embeddings = nn.Parameter(torch.randn(num_labels, projection_size) * 0.02)
        self.temperature = temperature

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.projection(hidden).float(), dim=-1)
        labels = F.normalize(self.label_embeddings.float(), dim=-1)
        return projected @ labels.T / self.temperature


def make_frame_head(kind: str, hidden_size: int, num_labels: int) -> nn.Module:
    if kind == "cosine":
        return CosineFrameHead(hidden_size, num_labels)
    if kind == "linear":
        return nn.Linear(hidden_size, num_labels)
    raise ValueError(f"unknown frame head {kind!r}; choose one of {FRAME_HEADS}")


class FramePredictor(nn.Module):
    """Encoder with masked frames -> one frame head per pseudo-label set.

    ``forward`` returns ``{label_set: logits [M, K]}`` for the M masked valid frames.
    """

    def __init__(self, encoder: SpeechEncoder, label_sets: Mapping[str, int], head: str = "cosine"):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({name: make_frame_head(head, encoder.hidden_size, k) for name, k in label_sets.items()})

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor, mask_time_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.encoder(waveforms, attention_mask, mask_time_indices=mask_time_indices)
        selected = out.last_hidden[mask_time_indices & out.frame_mask]
        return {name: head(selected) for name, head in self.heads.items()}
