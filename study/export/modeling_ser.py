"""A ser-study emotion classifier as a HuggingFace model: a speech encoder, pooling over its valid frames, a head.

This file is copied next to an exported model's weights (``config.json``'s
``auto_map`` names it) and is imported by ``transformers`` on its own, so it
depends on torch and transformers only. Load the model with::

    from transformers import pipeline
    classify = pipeline("audio-classification", model="path/to/export", trust_remote_code=True)
    classify({"raw": samples, "sampling_rate": 16000})   # samples: 1-D float array, mono

Shapes: ``input_values`` ``[B, T]`` samples (normalised by the feature
extractor when the encoder was trained so), ``attention_mask`` ``[B, T]``
(1 = a real sample) -> ``logits`` ``[B, C]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("attention", "average")
HEADS = ("linear", "cosine")
HEAD_NORMS = ("none", "batch")


class SerStudyConfig(PretrainedConfig):
    """The encoder's own config (a dict with its ``model_type``) plus how frames become class scores.

    pooling: ``attention`` (soft attention over valid frames) or ``average``;
    head: ``linear``, or ``cosine`` (``cosine_scale`` times the cosine to each
    class direction, AM-Softmax's head); head_norm: ``batch`` standardises the
    pooled vector with running statistics (BatchNorm without scale or shift).
    """

    model_type = "ser-study-classifier"

    def __init__(self, encoder: dict | None = None, pooling: str = "attention", head: str = "linear", head_norm: str = "none", cosine_scale: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS or head not in HEADS or head_norm not in HEAD_NORMS:
            raise ValueError(f"pooling must be in {POOLINGS}, head in {HEADS}, head_norm in {HEAD_NORMS}; got {pooling!r}, {head!r}, {head_norm!r}")
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.head = head
        self.head_norm = head_norm
        self.cosine_scale = float(cosine_scale)

    def encoder_config(self) -> PretrainedConfig:
        values = dict(self.encoder)
        return AutoConfig.for_model(values.pop("model_type"), **values)


class SerStudyForAudioClassification(PreTrainedModel):
    config_class = SerStudyConfig
    base_model_prefix = "ser"
    main_input_name = "input_values"

    def __init__(self, config: SerStudyConfig):
        super().__init__(config)
        encoder_config = config.encoder_config()
        hidden = encoder_config.hidden_size
        self.encoder = AutoModel.from_config(encoder_config)
        self.pooling = nn.ModuleDict({"score": nn.Linear(hidden, 1)}) if config.pooling == "attention" else nn.ModuleDict()
        self.norm = nn.BatchNorm1d(hidden, affine=False) if config.head_norm == "batch" else nn.Identity()
        if config.head == "cosine":
            self.classifier = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(config.num_labels, hidden))})
        else:
            self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Every weight comes from the exported checkpoint; a fresh model starts from small random heads."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def frame_mask(self, attention_mask: torch.Tensor, frames: int) -> torch.Tensor:
        """``[B, F]`` bool: the encoder frames that cover real samples."""
        lengths = self.encoder._get_feat_extract_output_lengths(attention_mask.sum(dim=1)).clamp(max=frames)
        return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, F, H]`` frames, ``[B, F]`` mask -> ``[B, H]``."""
        if self.config.pooling == "average":
            weights = mask.to(hidden.dtype)
            return (hidden * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        energy = torch.tanh(self.pooling["score"](hidden).squeeze(-1)).float().masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(energy, dim=1), nan=0.0)
        return torch.einsum("bf,bfh->bh", weights.to(hidden.dtype), hidden)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values, dtype=torch.long)
        hidden = self.encoder(input_values, attention_mask=attention_mask, return_dict=True).last_hidden_state
        pooled = self.norm(self.pool(hidden, self.frame_mask(attention_mask, hidden.shape[1])).float())
        if self.config.head == "cosine":
            logits = self.config.cosine_scale * F.normalize(pooled, dim=-1) @ F.normalize(self.classifier["weight"].float(), dim=-1).T
        else:
            logits = self.classifier(pooled)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
