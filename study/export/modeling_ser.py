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

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("attention", "average", "stats")
LAYERS = ("last", "weighted")
HEADS = ("linear", "cosine")
HEAD_NORMS = ("none", "batch")
LOUDNESS_FEATURES = 2
#: The spectral balance: log-spaced bands, 80 Hz to 7.6 kHz (or 95 % of Nyquist), analysed in 32 ms windows every 10 ms.
SPECTRAL_BANDS = 8
SPECTRAL_RANGE_HZ = (80.0, 7600.0)
SPECTRAL_WINDOW_SECONDS, SPECTRAL_HOP_SECONDS = 0.032, 0.010


class SerStudyConfig(PretrainedConfig):
    """The encoder's own config (a dict with its ``model_type``) plus how frames become class scores.

    layers: ``last`` (the encoder's last layer) or ``weighted`` (a learnt
    softmax-weighted sum of all its hidden states); pooling: ``attention``
    (soft attention over valid frames), ``average``, or ``stats`` (mean and
    standard deviation, ``[B, 2H]``); head: ``linear``, or ``cosine`` (``cosine_scale`` times the cosine to each
    class direction, AM-Softmax's head); head_norm: ``batch`` standardises the
    pooled vector with running statistics (BatchNorm without scale or shift);
    loudness: the mean and standard deviation of the log energy of the
    encoder's frames, read from ``input_values`` (which must then be raw
    samples, not normalised), standardised the same way and appended to the
    pooled vector; spectral_balance: the shape of the utterance's average power
    spectrum in 8 log-spaced bands (log, minus its mean over the bands), at the
    encoder's ``sampling_rate``, standardised and appended after it.
    """

    model_type = "ser-study-classifier"

    def __init__(self, encoder: dict | None = None, pooling: str = "attention", head: str = "linear", head_norm: str = "none", cosine_scale: float = 30.0,
                 layers: str = "last", loudness: bool = False, spectral_balance: bool = False, sampling_rate: int = 16000, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS or head not in HEADS or head_norm not in HEAD_NORMS or layers not in LAYERS:
            raise ValueError(
                f"pooling must be in {POOLINGS}, head in {HEADS}, head_norm in {HEAD_NORMS}, layers in {LAYERS}; "
                f"got {pooling!r}, {head!r}, {head_norm!r}, {layers!r}"
            )
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.head = head
        self.head_norm = head_norm
        self.cosine_scale = float(cosine_scale)
        self.layers = layers
        self.loudness = bool(loudness)
        self.spectral_balance = bool(spectral_balance)
        self.sampling_rate = int(sampling_rate)

    def encoder_config(self) -> PretrainedConfig:
        values = dict(self.encoder)
        return AutoConfig.for_model(values.pop("model_type"), **values)


class ValidGroupNorm(nn.GroupNorm):
    """The encoder CNN's first group norm, with statistics over each row's first ``lengths[b]`` positions when set.

    As ser-study trains (its ``trainables.models.masked_norm``): a padded
    utterance's frames are those it has alone. Without lengths it is ``nn.GroupNorm``.
    """

    lengths: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lengths is None:
            return super().forward(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            return self._masked(hidden)

    def _masked(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, channels, time = hidden.shape
        x = hidden.float()
        per_group = channels // self.num_groups
        valid = (torch.arange(time, device=x.device)[None, :] < self.lengths.to(x.device)[:, None]).to(x.dtype)
        count = (valid.sum(dim=1, keepdim=True) * per_group).clamp(min=1)

        def channel_means(values: torch.Tensor) -> torch.Tensor:
            sums = torch.bmm(values, valid[:, :, None]).reshape(batch, self.num_groups, per_group).sum(dim=-1)
            return (sums / count).repeat_interleave(per_group, dim=1)[:, :, None]

        centered = x - channel_means(x)
        scale = torch.rsqrt(channel_means(centered.square()) + self.eps)
        if not self.affine:
            return (centered * scale).to(hidden.dtype)
        return torch.addcmul(self.bias.float()[None, :, None], centered, scale * self.weight.float()[None, :, None]).to(hidden.dtype)


class SerStudyForAudioClassification(PreTrainedModel):
    config_class = SerStudyConfig
    base_model_prefix = "ser"
    main_input_name = "input_values"

    def __init__(self, config: SerStudyConfig):
        super().__init__(config)
        encoder_config = config.encoder_config()
        hidden = encoder_config.hidden_size
        self.encoder = AutoModel.from_config(encoder_config)
        norm = self.first_norm()
        if norm is not None:  # the same parameters, under the same names
            valid = ValidGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
            if norm.affine:
                valid.weight, valid.bias = norm.weight, norm.bias
            self.encoder.feature_extractor.conv_layers[0].layer_norm = valid
        states = encoder_config.num_hidden_layers + 1
        self.layer_mix = nn.ParameterDict({"logits": nn.Parameter(torch.zeros(states))}) if config.layers == "weighted" else nn.ParameterDict()
        self.pooling = nn.ModuleDict({"score": nn.Linear(hidden, 1)}) if config.pooling == "attention" else nn.ModuleDict()
        width = 2 * hidden if config.pooling == "stats" else hidden
        self.norm = nn.BatchNorm1d(width, affine=False) if config.head_norm == "batch" else nn.Identity()
        self.loudness_norm = nn.BatchNorm1d(LOUDNESS_FEATURES, affine=False) if config.loudness else None
        width += LOUDNESS_FEATURES if config.loudness else 0
        self.spectral_norm = nn.BatchNorm1d(SPECTRAL_BANDS, affine=False) if config.spectral_balance else None
        width += SPECTRAL_BANDS if config.spectral_balance else 0
        if config.head == "cosine":
            self.classifier = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(config.num_labels, width))})
        else:
            self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def first_norm(self) -> nn.GroupNorm | None:
        """The group norm of the encoder CNN's first layer (HuBERT-base's, wav2vec2-base's), or None."""
        layers = getattr(getattr(self.encoder, "feature_extractor", None), "conv_layers", None)
        norm = getattr(layers[0], "layer_norm", None) if layers else None
        return norm if isinstance(norm, nn.GroupNorm) else None

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
        """``[B, F, H]`` frames, ``[B, F]`` mask -> ``[B, H]`` (``[B, 2H]`` for ``stats``)."""
        if self.config.pooling in ("average", "stats"):
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            count = weights.sum(dim=1).clamp(min=1.0)
            mean = (hidden * weights).sum(dim=1) / count
            if self.config.pooling == "average":
                return mean
            variance = (((hidden - mean.unsqueeze(1)) * weights) ** 2).sum(dim=1) / count
            return torch.cat([mean, torch.sqrt(variance + 1e-6)], dim=-1)
        energy = torch.tanh(self.pooling["score"](hidden).squeeze(-1)).float().masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(energy, dim=1), nan=0.0)
        return torch.einsum("bf,bfh->bh", weights.to(hidden.dtype), hidden)

    def loudness(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` raw samples -> ``[B, 2]``: mean and standard deviation of each encoder frame's log mean square over the valid frames."""
        encoder_config = self.encoder.config
        window, hop = 1, 1
        for kernel, stride in zip(reversed(encoder_config.conv_kernel), reversed(encoder_config.conv_stride)):
            window, hop = (window - 1) * stride + kernel, hop * stride
        samples = input_values.float() * attention_mask.float()
        if samples.shape[1] < window:
            samples = F.pad(samples, (0, window - samples.shape[1]))
        energy = torch.log(samples.unfold(1, window, hop).pow(2).mean(dim=-1) + 1e-8)
        mask = self.frame_mask(attention_mask, energy.shape[1]).float()
        mask[:, 0] = 1.0  # an utterance shorter than one frame still has its one padded frame
        count = mask.sum(dim=1)
        mean = (energy * mask).sum(dim=1) / count
        spread = (((energy - mean[:, None]) * mask) ** 2).sum(dim=1) / count
        return torch.stack([mean, torch.sqrt(spread + 1e-6)], dim=-1)

    def spectral_balance(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` samples -> ``[B, 8]``: log power per band of the spectrum averaged over the windows wholly within the valid samples, minus its mean over the bands."""
        rate = self.config.sampling_rate
        length, hop = round(SPECTRAL_WINDOW_SECONDS * rate), round(SPECTRAL_HOP_SECONDS * rate)
        top = min(SPECTRAL_RANGE_HZ[1], 0.95 * rate / 2)
        edges = torch.logspace(math.log10(SPECTRAL_RANGE_HZ[0]), math.log10(top), SPECTRAL_BANDS + 1, dtype=torch.float64)
        freqs = torch.arange(length // 2 + 1, dtype=torch.float64) * rate / length
        bands = ((freqs[None, :] >= edges[:-1, None]) & (freqs[None, :] < edges[1:, None])).float().to(input_values.device)
        samples = input_values.float() * attention_mask.float()
        if samples.shape[1] < length:
            samples = F.pad(samples, (0, length - samples.shape[1]))
        window = torch.hann_window(length, device=samples.device)
        power = torch.fft.rfft(samples.unfold(1, length, hop) * window, dim=-1).abs().pow(2)
        count = (torch.div(attention_mask.sum(dim=1) - length, hop, rounding_mode="floor") + 1).clamp(min=1, max=power.shape[1])
        valid = (torch.arange(power.shape[1], device=power.device)[None, :] < count[:, None]).float()
        average = (power * valid[..., None]).sum(dim=1) / count[:, None].float()
        level = torch.log(average @ bands.T + 1e-10)
        return level - level.mean(dim=1, keepdim=True)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values, dtype=torch.long)
        weighted = self.config.layers == "weighted"
        norm = self.first_norm()
        if norm is not None:
            kernel, stride = self.encoder.config.conv_kernel[0], self.encoder.config.conv_stride[0]
            norm.lengths = (torch.div(attention_mask.sum(dim=1) - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)
        try:
            out = self.encoder(input_values, attention_mask=attention_mask, output_hidden_states=weighted, return_dict=True)
        finally:
            if norm is not None:
                norm.lengths = None
        hidden = out.last_hidden_state
        if weighted:
            weights = torch.softmax(self.layer_mix["logits"], dim=0).to(hidden.dtype)
            hidden = torch.einsum("l,lbfh->bfh", weights, torch.stack(out.hidden_states))
        pooled = self.norm(self.pool(hidden, self.frame_mask(attention_mask, hidden.shape[1])).float())
        if self.loudness_norm is not None:
            pooled = torch.cat([pooled, self.loudness_norm(self.loudness(input_values, attention_mask))], dim=-1)
        if self.spectral_norm is not None:
            pooled = torch.cat([pooled, self.spectral_norm(self.spectral_balance(input_values, attention_mask))], dim=-1)
        if self.config.head == "cosine":
            logits = self.config.cosine_scale * F.normalize(pooled, dim=-1) @ F.normalize(self.classifier["weight"].float(), dim=-1).T
        else:
            logits = self.classifier(pooled)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
