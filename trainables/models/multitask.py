"""The metadata-enhanced SER model: auxiliary tasks, Augmented Residual Integration and co-attention.

Reconstructed from the abstract of Wan et al. (2024) (``docs/methods.md``):

* **Auxiliary tasks.** Each metadata task (gender, style: utterance classes)
  reads its own *view* of the encoder, a learnt softmax mix of the layers
  (``hidden_states``) and a projection; the transcript task reads
  ``ctc_layer`` through a projection and a character CTC head.
* **ARI** (:class:`ResidualIntegration`): after each transformer layer ``l``
  its output becomes ``h_l + sum_{j<l} alpha[l, j] h_j`` (``h_0`` the input of
  the first layer), with ``alpha`` learnt and initialised at 0, so that the
  model starts as the plain encoder. The modified output is what the next
  layer reads.
* **Co-attention** (:class:`CoAttention`): the SER frames query every task's
  view with multi-head cross-attention (padded frames masked as keys);
  ``[SER; attended views]`` is pooled and classified.
* ``integration: layer_sum`` replaces ARI by a learnt weighted sum of the
  layers as the SER frames (the ablation); ``none`` reads the last layer.

``forward`` returns ``{"emotion": [B, C], <task>: [B, classes], "ctc": [B, F, V]}``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.encoder import SpeechEncoder
from trainables.models.heads import LayerMix, PooledNorm, utterance_levels
from trainables.models.pooling import make_pooling, pooled_size

EMOTION = "emotion"
CTC = "ctc"
INTEGRATIONS = ("ari", "layer_sum", "none")


class ResidualIntegration(nn.Module):
    """ARI on a HuggingFace encoder's transformer layers, through forward hooks.

    ``alpha`` ``[L, L]`` (only ``j < l`` used) starts at zero: the wrapped
    encoder's outputs are then exactly the plain encoder's. After a forward,
    ``states`` holds ``h_0 .. h_L`` (each ``[B, F, H]``) as the layers saw them.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(len(layers), len(layers)))
        self.states: list[torch.Tensor] = []
        self._handles = [layers[0].register_forward_pre_hook(self._start)]
        self._handles += [layer.register_forward_hook(self._integrate(index)) for index, layer in enumerate(layers)]

    def _start(self, module: nn.Module, args: tuple) -> None:
        self.states = [args[0]]

    def _integrate(self, index: int):
        def hook(module: nn.Module, args: tuple, output):
            hidden = output[0] if isinstance(output, tuple) else output
            # layer index+1's output gets alpha[index, j] * h_j for the j <= index states before it (h_0 .. h_index).
            weights = self.alpha[index, : index + 1].to(hidden.dtype)
            hidden = hidden + torch.einsum("j,jbfh->bfh", weights, torch.stack(self.states[: index + 1]))
            self.states.append(hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook


class CoAttention(nn.Module):
    """SER frames ``[B, F, H]`` attend to one view ``[B, F, H]``; padded view frames (``~frame_mask``) are never attended."""

    def __init__(self, hidden_size: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)

    def forward(self, query: torch.Tensor, view: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(query, view, view, key_padding_mask=~frame_mask, need_weights=False)
        return attended


class MultitaskClassifier(nn.Module):
    """Encoder + SER head + auxiliary heads, with ARI and co-attention as options (module docstring).

    ``tasks``: metadata classification tasks and their class counts;
    ``ctc_vocab``: the CTC head's vocabulary size (blank included), 0 for no
    transcript task; ``ctc_layer``: the hidden_states index it reads (-1: the last).
    """

    def __init__(
        self,
        encoder: SpeechEncoder,
        pooling: str,
        num_classes: int,
        tasks: Mapping[str, int],
        ctc_vocab: int = 0,
        ctc_layer: int = -1,
        integration: str = "none",
        coattention: bool = False,
        heads: int = 4,
        dropout: float = 0.1,
        head_norm: str = "none",
        layers: str = "last",
        loudness: bool = False,
        spectral_balance: bool = False,
    ):
        super().__init__()
        if integration not in INTEGRATIONS:
            raise ValueError(f"integration must be one of {INTEGRATIONS}, got {integration!r}")
        hidden = encoder.hidden_size
        transformer = encoder.model.encoder.layers
        self.encoder = encoder
        self.integration = integration
        self.ctc_layer = ctc_layer
        self.ari = ResidualIntegration(transformer) if integration == "ari" else None
        # The classifier's ``layers="weighted"`` is this model's ``layer_sum`` integration: the SER branch reads a learnt mix of all layers.
        self.ser_mix = LayerMix(len(transformer) + 1) if integration == "layer_sum" or layers == "weighted" else None
        self.views = nn.ModuleDict({task: nn.Sequential(LayerMix(len(transformer) + 1), nn.Linear(hidden, hidden)) for task in tasks})
        self.ctc_view = nn.Linear(hidden, hidden) if ctc_vocab else None
        view_names = [*tasks, *([CTC] if ctc_vocab else [])]
        heads = heads if hidden % heads == 0 else 1
        self.coattention = nn.ModuleDict({name: CoAttention(hidden, heads) for name in view_names}) if coattention else None
        width = hidden * (1 + (len(view_names) if coattention else 0))
        self.pooling = make_pooling(pooling, width)
        pooled = pooled_size(pooling, width)
        self.norm = PooledNorm(pooled) if head_norm == "batch" else nn.Identity()
        self.levels = utterance_levels(encoder.info, loudness, spectral_balance)
        self.dropout = nn.Dropout(dropout)
        levels = sum(level.features for level in self.levels.values())
        self.heads = nn.ModuleDict({EMOTION: nn.Linear(pooled + levels, num_classes), **{task: nn.Linear(hidden, n) for task, n in tasks.items()}})
        self.task_pooling = nn.ModuleDict({task: make_pooling("average", hidden) for task in tasks})
        self.ctc_head = nn.Linear(hidden, ctc_vocab) if ctc_vocab else None

    def forward(self, waveforms: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.encoder(waveforms, attention_mask, output_hidden_states=True)
        states = self.ari.states if self.ari is not None else out.hidden_states
        mask = out.frame_mask
        ser = self.ser_mix(states) if self.ser_mix is not None else out.last_hidden
        views = {task: view(states) for task, view in self.views.items()}
        if self.ctc_view is not None:
            views[CTC] = self.ctc_view(states[self.ctc_layer])
        outputs = {task: self.heads[task](self.dropout(self.task_pooling[task](views[task], mask))) for task in self.views}
        if self.ctc_head is not None:
            outputs[CTC] = self.ctc_head(self.dropout(views[CTC]))
        if self.coattention is not None:
            ser = torch.cat([ser, *(self.coattention[name](ser, views[name], mask) for name in self.coattention)], dim=-1)
        pooled = self.norm(self.pooling(ser, mask).float())
        pooled = torch.cat([pooled, *(level(waveforms, attention_mask) for level in self.levels.values())], dim=-1)
        outputs[EMOTION] = self.heads[EMOTION](self.dropout(pooled))
        outputs["frame_mask"] = mask
        return outputs


def ctc_loss(logits: torch.Tensor, frame_mask: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Character CTC (blank 0), averaged over the utterances that have a transcript (``target_lengths > 0``).

    ``logits`` ``[B, F, V]``, ``frame_mask`` ``[B, F]``, ``targets`` ``[B, S]`` (padded), ``target_lengths`` ``[B]``.
    0 for a batch where no utterance has one.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [F, B, V]
    losses = F.ctc_loss(log_probs, targets, frame_mask.sum(dim=1), target_lengths, blank=0, reduction="none", zero_infinity=True)
    present = (target_lengths > 0).to(losses.dtype)
    return (losses / target_lengths.clamp(min=1) * present).sum() / present.sum().clamp(min=1)
