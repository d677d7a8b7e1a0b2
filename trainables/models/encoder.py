"""HuggingFace speech SSL encoders (HuBERT, wav2vec2, WavLM) behind one small interface.

An encoder is given as a hub id or a local directory; both go through
``transformers.AutoModel.from_pretrained``. Nothing here downloads unless the
user names a hub id on a machine that can reach the hub.

Layer numbering follows transformers' ``hidden_states``: 0 is the CNN feature
projection, 1..N are the transformer layers.
"""

from __future__ import annotations

import json
import re
import logging
import pickle
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
from transformers.utils import logging as hf_logging

from trainables.config import TinyEncoderConfig
from trainables.data.batching import inference_batches
from trainables.models.masked_norm import MaskedGroupNorm, first_group_norm, install_masked_group_norm

logger = logging.getLogger(__name__)

#: On a CPU, the most bytes of the CNN's first activation one inference batch holds (:meth:`SpeechEncoder.inference_batches`).
CPU_BATCH_ACTIVATION_BYTES = 32 * 2**20
#: The audio settings of encoders saved by ser-study before they carried a feature extractor.
LEGACY_AUDIO_CONFIG = "ser_study_audio.json"
DEFAULT_SAMPLE_RATE = 16000


class EncoderError(ValueError):
    """An encoder that cannot be loaded or used as asked; the message says how to fix it."""


@dataclass(frozen=True)
class EncoderInfo:
    """What the study needs to know about an encoder before loading its weights."""

    name_or_path: str
    model_type: str
    num_layers: int
    hidden_size: int
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    sample_rate: int
    normalize: bool
    #: The CNN's first layer normalises each channel over time (``feat_extract_norm="group"``: HuBERT-base,
    #: wav2vec2-base); :class:`SpeechEncoder` makes that norm skip padding (trainables.models.masked_norm).
    group_norm: bool = False
    #: Channels of the CNN's first convolution (512 for HuBERT-base): what an inference batch's activations cost on a CPU.
    first_conv_channels: int = 512

    @classmethod
    def from_config(cls, name_or_path: str | Path, config, sample_rate: int, normalize: bool) -> "EncoderInfo":
        """From a HuggingFace config (``AutoConfig``/``HubertConfig``) and the encoder's audio settings."""
        return cls(
            name_or_path=str(name_or_path),
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            conv_kernel=tuple(config.conv_kernel),
            conv_stride=tuple(config.conv_stride),
            sample_rate=sample_rate,
            normalize=normalize,
            group_norm=getattr(config, "feat_extract_norm", "layer") == "group",
            first_conv_channels=int(getattr(config, "conv_dim", (512,))[0]),
        )

    def check_layer(self, layer: int, field: str = "layer") -> None:
        """Refuse a ``hidden_states`` index the encoder does not have."""
        if not 0 <= layer <= self.num_layers:
            raise EncoderError(
                f"{field}={layer} is outside the encoder {self.name_or_path!r}, which has {self.num_layers} transformer "
                f"layers: choose {field} in 0..{self.num_layers} (0 = CNN output)"
            )

    def frame_lengths(self, sample_lengths: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """Number of encoder frames for waveforms of ``sample_lengths`` samples (the CNN's arithmetic; its first ``layers`` only when given)."""
        lengths = torch.as_tensor(sample_lengths)
        for kernel, stride in list(zip(self.conv_kernel, self.conv_stride))[:layers]:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def frame_count(self, num_samples: int) -> int:
        return int(self.frame_lengths(torch.tensor(num_samples)))

    @property
    def total_stride(self) -> int:
        """Samples between consecutive frames (320 for HuBERT: 20 ms at 16 kHz)."""
        stride = 1
        for s in self.conv_stride:
            stride *= s
        return stride

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees; the shortest waveform that gives one frame."""
        field, jump = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field += (kernel - 1) * jump
            jump *= stride
        return field


#: Between a hub id and its revision in an encoder reference: ``facebook/hubert-base-ls960@<commit>``.
REVISION_SEP = "@"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def with_revision(hub_id: str, revision: str | None) -> str:
    """The encoder reference of ``hub_id`` at ``revision`` (the id alone without one)."""
    return f"{hub_id}{REVISION_SEP}{revision}" if revision else hub_id


def split_revision(name_or_path: str | Path) -> tuple[str, str | None]:
    """``(hub id or local path, revision or None)`` of an encoder reference; a local path is never split."""
    text = str(name_or_path)
    if Path(text).exists() or REVISION_SEP not in text:
        return text, None
    name, _, revision = text.rpartition(REVISION_SEP)
    return name, revision or None


def resolve_hub_revision(hub_id: str, revision: str | None = None) -> str:
    """The commit a hub model's ``revision`` (default: main) points to now.

    A 40-hex commit is returned as it is. Otherwise the hub is asked; offline,
    the local HuggingFace cache's ref for that revision is read. Raises
    :class:`EncoderError` with a fix when neither knows it.
    """
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import HfApi, constants

    try:
        sha = HfApi().model_info(hub_id, revision=revision).sha
        if sha:
            return sha
    except Exception as err:  # no network, no such repo, no access
        problem = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    else:
        problem = "the hub gave no commit"
    ref = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    raise EncoderError(
        f"cannot resolve the hub encoder {hub_id!r} at {revision or 'main'} to a commit ({problem}); pin one with "
        f"encoder_revision: <40-hex commit>, or download it to a local directory and give that as encoder"
    )


def _audio_config(name_or_path: str) -> tuple[int, bool]:
    """Sample rate and per-utterance normalisation, from the encoder's feature extractor (``preprocessor_config.json``).

    Read with ``AutoFeatureExtractor`` for a hub id and a local directory alike.
    A directory saved by an older ser-study carries ``ser_study_audio.json``
    instead; one with neither gets 16 kHz without normalisation.
    """
    name, revision = split_revision(name_or_path)
    try:
        extractor = AutoFeatureExtractor.from_pretrained(name, revision=revision, trust_remote_code=False)
        return int(extractor.sampling_rate), bool(getattr(extractor, "do_normalize", False))
    except (OSError, ValueError):
        legacy = Path(name_or_path) / LEGACY_AUDIO_CONFIG
        if legacy.is_file():
            data = json.loads(legacy.read_text())
            return int(data.get("sample_rate", DEFAULT_SAMPLE_RATE)), bool(data.get("normalize", False))
        return DEFAULT_SAMPLE_RATE, False


def read_encoder_info(name_or_path: str | Path) -> EncoderInfo:
    """Read an encoder's config (not its weights). Raises :class:`EncoderError` with a fix."""
    name_or_path = str(name_or_path)
    name, revision = split_revision(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False)  # no code from a checkpoint runs
    except (OSError, ValueError) as err:
        raise EncoderError(
            f"cannot read the encoder config of {name_or_path!r} ({str(err).splitlines()[0]}); give a local directory "
            f"with config.json (e.g. from `ser-study tiny-encoder DIR`) or a hub id on a machine that can reach the hub"
        ) from None
    needed = ("num_hidden_layers", "hidden_size", "conv_kernel", "conv_stride")
    if not all(hasattr(config, key) for key in needed):
        raise EncoderError(f"{name_or_path!r} ({config.model_type}) is not a wav2vec2-style speech encoder: its config lacks {needed}")
    sample_rate, normalize = _audio_config(name_or_path)
    return EncoderInfo.from_config(name_or_path, config, sample_rate, normalize)


@dataclass
class EncoderOutput:
    """last_hidden: ``[B, F, H]``; hidden_states: N+1 tensors ``[B, F, H]`` (when asked); frame_mask: ``[B, F]`` bool."""

    last_hidden: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    frame_mask: torch.Tensor


class SpeechEncoder(nn.Module):
    """A HuggingFace speech SSL model with its audio front end and frame arithmetic.

    A group-norm CNN's first norm becomes a :class:`MaskedGroupNorm`, so a
    padded utterance's valid frames are those it has alone (``padding_invariant``).
    """

    def __init__(self, model: nn.Module, info: EncoderInfo):
        super().__init__()
        self.model = model
        self.info = info
        self._saved_mask_time_prob = getattr(model.config, "mask_time_prob", 0.0)
        install_masked_group_norm(model)

    @property
    def padding_invariant(self) -> bool:
        """Whether an utterance's valid frames are the same in any zero-padded batch (else inference encodes one at a time)."""
        return not self.info.group_norm or isinstance(first_group_norm(self.model), MaskedGroupNorm)

    def inference_batches(self, durations: Sequence[float], max_batch_seconds: float, device: torch.device) -> list[list[int]]:
        """Batches of dataset indices for a pass without gradients on ``device`` (:func:`~trainables.data.batching.inference_batches`).

        On a CPU a batch also keeps its first CNN activation (float32) under
        :data:`CPU_BATCH_ACTIVATION_BYTES`: past the caches, a batch is slower
        than its utterances one at a time (``bench/results/cpu_batches.md``:
        HuBERT-base's 512 channels reach that in 5 s of audio, the tiny
        encoder's 32 in 80 s).
        """
        if device.type == "cpu":
            per_second = 4 * self.info.first_conv_channels * self.info.sample_rate / self.info.conv_stride[0]
            max_batch_seconds = min(max_batch_seconds, CPU_BATCH_ACTIVATION_BYTES / per_second)
        return inference_batches(durations, max_batch_seconds, one_at_a_time=not self.padding_invariant)

    def set_spec_augment(self, mask_time_prob: float) -> None:
        """SpecAugment's time masking while training (HF reads ``config.mask_time_prob`` at each forward); saving keeps the checkpoint's own."""
        self.model.config.mask_time_prob = mask_time_prob

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN feature extractor (the default in every phase: it is the part SSL learnt best).

        Through HF's own freezing (``freeze_feature_encoder``, which HuBERT's
        base model lacks: its feature encoder's ``_freeze_parameters``), which
        also stops the CNN from building an autograd graph for its input
        (setting ``requires_grad`` on its parameters alone does not).
        """
        freeze = getattr(self.model, "freeze_feature_encoder", None)
        if freeze is not None:
            freeze()
        else:
            self.model.feature_extractor._freeze_parameters()

    def forward(
        self,
        waveforms: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode padded ``waveforms`` ``[B, T]`` with ``attention_mask`` ``[B, T]`` (1 = real sample).

        ``mask_time_indices`` ``[B, F]`` bool replaces those frames' features with
        the learnt mask embedding before the transformer (HuBERT's masking).
        """
        if self.info.normalize:
            mask = attention_mask.to(waveforms.dtype)
            count = mask.sum(dim=1, keepdim=True).clamp(min=1)
            mean = (waveforms * mask).sum(dim=1, keepdim=True) / count
            var = (((waveforms - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
            waveforms = (waveforms - mean) / torch.sqrt(var + 1e-7) * mask
        norm = first_group_norm(self.model)
        valid = norm.valid_lengths(self.info.frame_lengths(attention_mask.sum(dim=1), layers=1)) if isinstance(norm, MaskedGroupNorm) else nullcontext()
        with valid:
            out = self.model(
                waveforms,
                attention_mask=attention_mask,
                mask_time_indices=mask_time_indices,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        frames = out.last_hidden_state.shape[1]
        lengths = self.info.frame_lengths(attention_mask.sum(dim=1)).clamp(max=frames)
        frame_mask = torch.arange(frames, device=waveforms.device)[None, :] < lengths[:, None]
        return EncoderOutput(out.last_hidden_state, out.hidden_states if output_hidden_states else None, frame_mask)

    def save(self, directory: str | Path) -> None:
        """Save weights (safetensors), the HF config and the feature extractor (``preprocessor_config.json``), loadable by :func:`load_encoder`."""
        directory = Path(directory)
        training_value = self.model.config.mask_time_prob
        self.model.config.mask_time_prob = self._saved_mask_time_prob  # a loaded copy keeps its mask embedding (HF drops it at 0)
        try:
            self.model.save_pretrained(directory, safe_serialization=True)
        finally:
            self.model.config.mask_time_prob = training_value
        feature_extractor(self.info).save_pretrained(directory)


def feature_extractor(info: EncoderInfo) -> Wav2Vec2FeatureExtractor:
    """The HF feature extractor of an encoder's audio front end: raw 16 kHz mono samples, normalised per utterance or not."""
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=info.sample_rate, padding_value=0.0, do_normalize=info.normalize, return_attention_mask=True)


# Phases load and save encoders many times per study: no per-call progress bars in the logs.
hf_logging.disable_progress_bar()


def load_encoder(
    name_or_path: str | Path, layerdrop: float = 0.0, freeze_feature_encoder: bool = True, spec_augment: float | None = None, attention_dropout: float | None = None
) -> SpeechEncoder:
    """Load an encoder for training or inference.

    ``layerdrop`` defaults to 0: dropped layers leave parameters without
    gradients, which DDP does not allow. The model always gets a mask embedding
    (created if the checkpoint has none) so continued pretraining can mask frames.
    ``spec_augment`` sets SpecAugment's time masking in training (HF
    ``mask_time_prob``); None keeps the checkpoint's. ``attention_dropout``
    sets the dropout on attention weights in training (HF ``attention_dropout``);
    None keeps the checkpoint's.
    """
    info = read_encoder_info(name_or_path)
    try:
        # safetensors, or a PyTorch .bin read with weights_only=True (tensors only): never an arbitrary pickle.
        name, revision = split_revision(info.name_or_path)
        overrides = {} if attention_dropout is None else {"attention_dropout": attention_dropout}
        model = AutoModel.from_pretrained(name, revision=revision, layerdrop=layerdrop, apply_spec_augment=True, weights_only=True, **overrides)
    except pickle.UnpicklingError as err:
        raise EncoderError(
            f"refused to load the encoder weights of {info.name_or_path!r}: the file holds Python objects, not just tensors "
            f"({str(err).splitlines()[0][:200]}); convert the checkpoint to safetensors with code you trust"
        ) from None
    except (OSError, ValueError) as err:
        raise EncoderError(f"cannot load the encoder weights of {info.name_or_path!r}: {str(err).splitlines()[0]}") from None
    if getattr(model, "masked_spec_embed", None) is None:  # seeded: the same encoder loads the same way every time
        model.masked_spec_embed = nn.Parameter(torch.empty(info.hidden_size).uniform_(generator=torch.Generator().manual_seed(0)))
    encoder = SpeechEncoder(model, info)
    if spec_augment is not None:  # set after loading, so that the checkpoint's mask embedding is kept
        encoder.set_spec_augment(spec_augment)
    if freeze_feature_encoder:
        encoder.freeze_feature_encoder()
    return encoder


def make_tiny_encoder(out: str | Path, config: TinyEncoderConfig = TinyEncoderConfig()) -> Path:
    """Save a randomly initialised tiny HuBERT to ``out`` (safetensors) and return ``out``.

    It keeps HuBERT-base's CNN strides and kernels, so frame arithmetic (20 ms
    frames, 400-sample receptive field) is exactly that of the real model.
    """
    torch.manual_seed(config.seed)
    hf_config = HubertConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        conv_dim=(config.conv_channels,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm=config.feat_extract_norm,
        do_stable_layer_norm=config.feat_extract_norm == "layer",
        mask_time_prob=0.05,
        layerdrop=0.0,
        vocab_size=32,
    )
    return save_random_encoder(out, hf_config, normalize=False)


def save_random_encoder(out: str | Path, hf_config: HubertConfig, normalize: bool, seed: int | None = None) -> Path:
    """Save a randomly initialised HuBERT of ``hf_config`` to ``out`` and return ``out``.

    ``hf_config = HubertConfig()`` is HuBERT-base's exact architecture (the
    real-size path, with nothing downloaded); ``normalize`` is whether its
    feature extractor standardises each waveform (HuBERT-base's does not).
    """
    if seed is not None:
        torch.manual_seed(seed)
    info = EncoderInfo.from_config(out, hf_config, DEFAULT_SAMPLE_RATE, normalize=normalize)
    SpeechEncoder(HubertModel(hf_config), info).save(out)
    return Path(out)
