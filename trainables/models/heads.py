"""Models built on a :class:`SpeechEncoder`: the utterance classifier and the frame predictor.

Both take a mapping of task name to class count, so a second task (e.g. the
speaker's gender, as GMP-TL adds) or several pseudo-label sets (several K at
once) are more heads, and their losses are summed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.encoder import EncoderInfo, SpeechEncoder
from trainables.config import CLASSIFIER_LAYERS
from trainables.models.loudness import LOUDNESS_FEATURES, UtteranceLoudness
from trainables.models.spectral_balance import SPECTRAL_BANDS, UtteranceSpectralBalance
from trainables.models.pooling import make_pooling, pooled_size

FRAME_HEADS = ("cosine", "linear")


HEAD_NORMS = ("none", "batch")
#: Utterance heads: a linear layer, or cosine similarity to class weights times a scale (AM-Softmax's head).
CLASS_HEADS = ("linear", "cosine")


class CosineClassHead(nn.Module):
    """``scale * cos(x, w_c)`` for every class ``c``: pooled ``[B, H]`` -> logits ``[B, C]``.

    The head of additive-margin softmax (:func:`am_softmax_loss` lowers the
    target's cosine by a margin in training); at prediction the logits are the
    scaled cosines, so the argmax is the nearest class direction.
    """

    def __init__(self, hidden_size: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, hidden_size) * hidden_size**-0.5)
        self.scale = scale

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(pooled.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T


def am_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, scale: float, margin: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Additive-margin softmax: cross-entropy of ``logits`` ``[B, C]`` (``scale * cos``) with ``scale * margin`` taken off each target's logit.

    The target logit becomes ``scale * (cos - margin)``, the others stay
    ``scale * cos``; ``weight`` ``[C]`` weighs the classes as ``cross_entropy`` does.
    """
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits - scale * margin * target, labels, weight=weight)


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

    @torch.no_grad()
    def calibrate(self, pooled: torch.Tensor) -> None:
        """Set the running statistics to the exact mean and (unbiased) variance of ``pooled`` ``[N, H]``, N >= 2."""
        self.running_mean.copy_(pooled.mean(dim=0))
        self.running_var.copy_(pooled.var(dim=0))


class StandardisedLevel(nn.Module):
    """An utterance-level measurement of the raw samples (``level``: waveforms ``[B, T]``, attention_mask ``[B, T]`` -> ``[B, features]``) standardised by a :class:`PooledNorm` of its own.

    What a classifier appends to its pooled vector for what the encoder's
    normalised CNN cannot hear: the loudness level (:func:`loudness_level`)
    and the spectral balance (:func:`spectral_balance`).
    """

    def __init__(self, level: nn.Module, features: int):
        super().__init__()
        self.level = level
        self.features = features
        self.norm = PooledNorm(features)

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.norm(self.level(waveforms, attention_mask))


def loudness_level(info: EncoderInfo) -> StandardisedLevel:
    """The utterance's loudness level, ``[B, 2]`` (:class:`UtteranceLoudness`; log energy has an arbitrary offset, hence the norm)."""
    return StandardisedLevel(UtteranceLoudness(info), LOUDNESS_FEATURES)


def spectral_balance(info: EncoderInfo) -> StandardisedLevel:
    """The utterance's spectral balance, ``[B, SPECTRAL_BANDS]`` (:class:`UtteranceSpectralBalance`)."""
    return StandardisedLevel(UtteranceSpectralBalance(info), SPECTRAL_BANDS)


def utterance_levels(info: EncoderInfo, loudness: bool, spectral: bool) -> nn.ModuleDict:
    """The :class:`StandardisedLevel` a classifier appends, by name (``loudness``, then ``spectral_balance``), for the options on."""
    return nn.ModuleDict({name: make(info) for name, make, on in (("loudness", loudness_level, loudness), ("spectral_balance", spectral_balance, spectral)) if on})


class LayerMix(nn.Module):
    """A learnt softmax-weighted sum of ``count`` hidden states (SUPERB's featurizer): N+1 tensors ``[B, F, H]`` -> ``[B, F, H]``.

    The weights start equal; a classifier learns which layers hold its task
    (for emotion, often not the last one).
    """

    def __init__(self, count: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(count))

    def forward(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = torch.softmax(self.logits.float(), dim=0).to(states[0].dtype)
        return torch.einsum("l,lbfh->bfh", weights, torch.stack(list(states)))


class UtteranceClassifier(nn.Module):
    """Encoder -> (last layer, or ``layers="weighted"``: a learnt mix of all) -> pooling over valid frames -> (optionally) standardised -> one head per task.

    Heads are linear, or cosine (``head_kinds``).

    ``head_norm="batch"`` standardises each dimension of the pooled vector over
    the batch (a ``BatchNorm1d`` without scale or shift; running statistics at
    evaluation), as x-vector and ECAPA heads do: pooled frames of a small
    encoder vary little between utterances next to their mean, and a linear
    head needs many updates to find those small differences unscaled.
    ``loudness`` appends the utterance's loudness level (``[B, 2]``) and
    ``spectral_balance`` its spectral balance (``[B, 8]``), which the
    encoder's normalised CNN cannot hear, to the pooled vector (:func:`utterance_levels`).
    ``forward`` returns ``{task: logits [B, classes]}``.
    """

    def __init__(
        self,
        encoder: SpeechEncoder,
        pooling: str,
        tasks: Mapping[str, int],
        dropout: float = 0.1,
        head_norm: str = "none",
        head_kinds: Mapping[str, str] | None = None,
        cosine_scale: float = 30.0,
        layers: str = "last",
        loudness: bool = False,
        spectral_balance: bool = False,
    ):
        super().__init__()
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
        if layers not in CLASSIFIER_LAYERS:
            raise ValueError(f"layers must be one of {CLASSIFIER_LAYERS}, got {layers!r}")
        self.head_kinds = {task: (head_kinds or {}).get(task, "linear") for task in tasks}
        unknown = {kind for kind in self.head_kinds.values() if kind not in CLASS_HEADS}
        if unknown:
            raise ValueError(f"head kinds must be among {CLASS_HEADS}, got {sorted(unknown)}")
        self.encoder = encoder
        self.pooling_name = pooling
        self.head_norm = head_norm
        self.cosine_scale = cosine_scale
        self.layers = layers
        self.layer_mix = LayerMix(encoder.info.num_layers + 1) if layers == "weighted" else None
        self.pooling = make_pooling(pooling, encoder.hidden_size)
        width = pooled_size(pooling, encoder.hidden_size)
        self.norm = PooledNorm(width) if head_norm == "batch" else nn.Identity()
        self.levels = utterance_levels(encoder.info, loudness, spectral_balance)
        width += sum(level.features for level in self.levels.values())
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {task: CosineClassHead(width, n, cosine_scale) if self.head_kinds[task] == "cosine" else nn.Linear(width, n) for task, n in tasks.items()}
        )

    def pooled(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The utterance vectors ``[B, D]`` the heads read (after pooling and the head's normalisation; D is 2H for ``stats``, plus the levels')."""
        out = self.encoder(waveforms, attention_mask, output_hidden_states=self.layer_mix is not None)
        frames = out.last_hidden if self.layer_mix is None else self.layer_mix(out.hidden_states)
        pooled = self.norm(self.pooling(frames, out.frame_mask).float())
        return torch.cat([pooled, *(level(waveforms, attention_mask) for level in self.levels.values())], dim=-1)

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

    ``forward`` returns ``{label_set: logits [M, K]}`` for the M selected valid
    frames (``frame_mask``, or ``predict_mask`` where given). With
    ``mask_input`` (masked prediction, HuBERT's objective) the ``frame_mask``
    frames are replaced by the mask embedding before the transformer; without
    it the encoder sees every frame and the heads classify the selected ones
    (plain frame classification).
    """

    def __init__(self, encoder: SpeechEncoder, label_sets: Mapping[str, int], head: str = "cosine", mask_input: bool = True):
        super().__init__()
        self.encoder = encoder
        self.mask_input = mask_input
        self.heads = nn.ModuleDict({name: make_frame_head(head, encoder.hidden_size, k) for name, k in label_sets.items()})

    def forward(
        self, waveforms: torch.Tensor, attention_mask: torch.Tensor, frame_mask: torch.Tensor, predict_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        out = self.encoder(waveforms, attention_mask, mask_time_indices=frame_mask if self.mask_input else None)
        selected = out.last_hidden[(frame_mask if predict_mask is None else predict_mask) & out.frame_mask]
        return {name: head(selected) for name, head in self.heads.items()}
