"""The settings of every phase, as validated data that imports no torch.

The study config (:mod:`study.config`) validates a study file's ``phases:`` and
``resources:`` sections straight into these dataclasses (pydantic dataclasses:
a wrong value raises at construction, unknown fields are refused), and phase
code reads them. Nothing here imports torch, Ray or transformers, so that
reading and checking a study file, and ``ser-study --help``, stay fast.

Presets (:data:`PRESETS`) are the fixed settings a study starts from:
``hubert`` for HuBERT-base on a GPU, ``smoke`` for the tiny encoder on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass as stdlib_dataclass
from dataclasses import field, replace
from typing import Literal, get_args

import numpy as np

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

#: Utterance poolings (trainables.models.pooling): attention, the mean, or the mean and standard deviation.
POOLINGS = ("attention", "average", "stats")
#: Which encoder layers a classifier reads: the last, or a learnt softmax-weighted sum of all (SUPERB).
ClassifierLayers = Literal["last", "weighted"]
CLASSIFIER_LAYERS = get_args(ClassifierLayers)
FRAME_HEADS = ("cosine", "linear")
KMEANS_BACKENDS = ("faiss", "cuml", "sklearn")

_STRICT = ConfigDict(extra="forbid")


class FieldError(ValueError):
    """A setting out of range: ``field`` (relative to the dataclass checked) and the ``problem``."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _check(checks: list[tuple[bool, str, str]]) -> None:
    """Raise :class:`FieldError` for the first ``(ok, field, problem)`` that is not ok."""
    for ok, field_name, problem in checks:
        if not ok:
            raise FieldError(field_name, problem)


@dataclass(frozen=True, config=_STRICT)
class TrainConfig:
    """Optimisation settings of one training phase."""

    epochs: int = 10
    lr: float = 5e-5  # encoder learning rate: the usual HuBERT fine-tuning rate
    head_lr: float = 1e-3  # new layers (pooling, heads) start from scratch and learn faster
    weight_decay: float = 0.01  # AdamW's, on weight matrices only (never on norms, biases or the mask embedding)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's; HuBERT's pretraining uses (0.9, 0.98)
    warmup_fraction: float = 0.1  # linear warm-up over this share of steps, then linear decay
    #: A budget in optimizer updates: training stops after ``epochs`` or ``max_updates``, whichever comes first,
    #: and the learning-rate schedule spans that. None: epochs alone.
    max_updates: int | None = None
    max_batch_seconds: float = 160.0  # padded audio per batch and rank: fits HuBERT-base on a 24 GB GPU in bf16
    #: Gradient accumulation: each batch runs as forward/backward passes of at most this much padded audio, one
    #: optimizer update per batch (the same updates in less memory: a CPU, or a smaller GPU). None: the whole batch at once.
    micro_batch_seconds: float | None = None
    max_train_seconds: float | None = 15.0  # random crop of longer training utterances (IEMOCAP has a few > 30 s)
    grad_clip: float = 1.0
    patience: int | None = None  # stop after this many epochs without a better selection score; None = run all
    loader_workers: int = 0  # DataLoader processes; soundfile reads are cheap next to the encoder
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            [
                (self.epochs >= 1, "epochs", "epochs must be at least 1"),
                (self.lr > 0 and self.head_lr > 0, "lr", "lr and head_lr must be positive"),
                (0 <= self.warmup_fraction < 1, "warmup_fraction", "warmup_fraction must be in [0, 1)"),
                (self.max_batch_seconds > 0, "max_batch_seconds", "max_batch_seconds must be positive"),
                (self.micro_batch_seconds is None or self.micro_batch_seconds > 0, "micro_batch_seconds", "micro_batch_seconds must be positive or null"),
                (self.max_train_seconds is None or self.max_train_seconds > 0.05, "max_train_seconds", "max_train_seconds must be > 0.05 or null"),
                (self.patience is None or self.patience >= 1, "patience", "patience must be at least 1 or null"),
                (self.loader_workers >= 0, "loader_workers", "loader_workers must not be negative"),
                (all(0 <= b < 1 for b in self.betas), "betas", "betas must be in [0, 1)"),
                (self.max_updates is None or self.max_updates >= 1, "max_updates", "max_updates must be at least 1 or null"),
            ]
        )


@dataclass(frozen=True, config=_STRICT)
class ClassifierConfig:
    """A supervised utterance-classification phase (TAPT or fine-tuning)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    class_weighting: bool = True  # inverse-frequency class weights: IEMOCAP's hap+exc and neu outnumber the rest
    dropout: float = 0.1
    freeze_feature_encoder: bool = True  # the CNN is what SSL learnt best; fine-tuning it rarely helps on 7 h of data
    eval_max_batch_seconds: float = 320.0  # no gradients at evaluation: twice the training batch fits
    #: SpecAugment's share of masked time spans while training (HF ``mask_time_prob``); None keeps the encoder's own.
    #: A small encoder's pooled frames shift far more with it than its classes differ: 0 turns it off.
    spec_augment: float | None = None
    #: Dropout on the encoder's attention weights while training (HF ``attention_dropout``); None keeps the encoder's own.
    #: 0 also lets PyTorch's CPU attention take its fused path, several times faster than with dropout on.
    attention_dropout: float | None = None
    #: "batch": standardise the pooled vector over the batch before the heads (see trainables.models.heads); "none": as is.
    head_norm: Literal["none", "batch"] = "none"
    #: Which encoder layers the pooling reads: "last", or "weighted": a learnt softmax-weighted sum of all (SUPERB's SER head).
    layers: ClassifierLayers = "last"
    #: Append the utterance's loudness level (mean and spread of its frames' log energy, from the raw samples) to the
    #: pooled vector: a HuBERT-style encoder's normalised CNN cannot hear it (trainables.models.loudness).
    loudness: bool = False
    #: Append the utterance's spectral balance (its long-term average spectrum in 8 log-spaced bands, shape only) to the
    #: pooled vector: a group-norm CNN standardises each band filter over the utterance (trainables.models.spectral_balance).
    spectral_balance: bool = False
    #: How a linear emotion head starts: "random", or "probe": a class-balanced logistic regression (inverse regularisation
    #: ``probe_c``) solved on the starting encoder's pooled vectors of the whole training utterances (LP-FT, Kumar et al. 2022).
    #: AM-Softmax's cosine head (GMP-TL's stage 2) starts at random either way.
    head_init: Literal["random", "probe"] = "random"
    probe_c: float = 0.1

    def __post_init__(self) -> None:
        _check(
            [
                (0 <= self.dropout < 1, "dropout", "dropout must be in [0, 1)"),
                (self.eval_max_batch_seconds > 0, "eval_max_batch_seconds", "eval_max_batch_seconds must be positive"),
                (self.spec_augment is None or 0 <= self.spec_augment < 1, "spec_augment", "spec_augment must be in [0, 1) or null"),
                (self.attention_dropout is None or 0 <= self.attention_dropout < 1, "attention_dropout", "attention_dropout must be in [0, 1) or null"),
                (self.probe_c > 0, "probe_c", "probe_c (the head's logistic regression's inverse regularisation) must be positive"),
            ]
        )


EMOTION_HEADS = ("linear", "am_softmax")
#: The utterance-level metadata tasks a classifier can learn beside the emotion (see trainables.data.metadata).
AUX_TASKS = ("gender", "style")


@dataclass(frozen=True, config=_STRICT)
class UtteranceObjective:
    """What an utterance classifier learns: its emotion head and loss, and auxiliary metadata tasks.

    ``emotion_head: am_softmax`` (GMP-TL's stage 2) scores classes by the
    cosine of the pooled vector and a class weight, times ``am_scale``; in
    training the target class's cosine is lowered by ``am_margin`` first
    (additive-margin softmax). ``aux`` gives each metadata task (``gender``,
    ``style``) its loss weight: loss = CE_emotion + sum weight x CE_task.
    The default is plain cross-entropy on the emotion alone.
    """

    emotion_head: Literal["linear", "am_softmax"] = "linear"
    am_scale: float = 30.0
    am_margin: float = 0.2
    aux: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(
            [
                (self.am_scale > 0, "am_scale", "am_scale must be positive"),
                (0 <= self.am_margin < 1, "am_margin", "am_margin must be in [0, 1): a cosine margin"),
                (all(task in AUX_TASKS for task in self.aux), "aux", f"aux tasks must be among {AUX_TASKS}, got {sorted(self.aux)}"),
                (all(weight > 0 for weight in self.aux.values()), "aux", "aux task weights must be positive"),
            ]
        )

    @property
    def is_default(self) -> bool:
        return self == UtteranceObjective()


INTEGRATIONS = ("ari", "layer_sum", "none")


@dataclass(frozen=True, config=_STRICT)
class MultitaskObjective:
    """What a stage of the metadata-enhanced method learns (see trainables.models.multitask).

    Loss = CE_emotion + sum ``aux[task]`` x CE_task + ``transcript_weight`` x CTC
    (character CTC on ``ctc_layer``, -1 the last; 0 turns it off).
    ``integration`` (``ari``, ``layer_sum`` or ``none``) and ``coattention``
    shape the SER branch; ``encoder_lr_scale`` multiplies the encoder's
    learning rate (0 freezes it).
    """

    aux: dict[str, float] = field(default_factory=dict)
    transcript_weight: float = 0.0
    ctc_layer: int = -1
    integration: Literal["ari", "layer_sum", "none"] = "none"
    coattention: bool = False
    encoder_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _check(
            [
                (all(task in AUX_TASKS for task in self.aux), "aux", f"aux tasks must be among {AUX_TASKS}, got {sorted(self.aux)}"),
                (all(weight > 0 for weight in self.aux.values()), "aux", "aux task weights must be positive (leave a task out to turn it off)"),
                (self.transcript_weight >= 0, "transcript_weight", "transcript_weight must be >= 0 (0: no CTC task)"),
                (self.ctc_layer >= -1, "ctc_layer", "ctc_layer must be a hidden_states index >= 0, or -1 for the last layer"),
                (self.encoder_lr_scale >= 0, "encoder_lr_scale", "encoder_lr_scale must be >= 0 (0 freezes the encoder)"),
            ]
        )


@dataclass(frozen=True, config=_STRICT)
class CptConfig:
    """Continued pretraining: masked prediction of frame pseudo labels."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=5e-5, head_lr=5e-4))
    head: str = "cosine"  # HuBERT's projection + cosine logits (temperature 0.1), as the reference code
    span: int = 10  # HuBERT masks spans of 10 frames (200 ms)
    init: Literal["pretrained", "tapt"] = "pretrained"  # or "tapt": start from the TAPT encoder
    freeze_feature_encoder: bool = True
    #: Weight of the loss on the frames left unmasked (HuBERT's alpha is 1 on masked frames and this on the others;
    #: fairseq's pred_nomask_weight, 0 in HuBERT-base). > 0 also teaches each frame's own features to the CNN.
    unmasked_weight: float = 0.0
    #: Dropout on the encoder's attention weights while training; None keeps the encoder's own (as ClassifierConfig's).
    attention_dropout: float | None = None

    def __post_init__(self) -> None:
        _check([(self.head in FRAME_HEADS, "head", f"head must be one of {FRAME_HEADS}, got {self.head!r}"), (self.span >= 1, "span", "span must be at least 1"),
                (self.unmasked_weight >= 0, "unmasked_weight", f"unmasked_weight must not be negative, got {self.unmasked_weight}"),
                (self.attention_dropout is None or 0 <= self.attention_dropout < 1, "attention_dropout", "attention_dropout must be in [0, 1) or null")])


@dataclass(frozen=True, config=_STRICT)
class TaptConfig(ClassifierConfig):
    """TAPT, task-adaptive pretraining: the encoder's own masked prediction on the fold's audio, then fine-tuning on its labels.

    ``pretrain: masked`` (the paper's TAPT) first continues the encoder's
    self-supervised objective on the fold's unsupervised audio: masked
    prediction of the k-means clusters (``pretrain_clusters``) of the
    pretrained encoder's ``pretrain_layer`` frames, ``pretrain_mask_ratio`` of
    the frames masked, trained as ``pretrain_cpt`` says. ``pretrain: none`` is
    the cheaper supervised step alone.
    """

    pooling: str = "attention"  # the reference code's TAPT pools with attention
    pretrain: Literal["masked", "none"] = "masked"
    pretrain_layer: int = 9  # the reference: HuBERT-base layer 9
    pretrain_clusters: int = 500  # the reference: 500 clusters
    pretrain_mask_ratio: float = 0.5  # HuBERT masks about half of the frames in pretraining
    pretrain_cpt: CptConfig = field(default_factory=CptConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            [
                (self.pooling in POOLINGS, "pooling", f"pooling must be one of {', '.join(POOLINGS)}"),
                (self.pretrain_layer >= 0, "pretrain_layer", "pretrain_layer is a hidden_states index >= 0"),
                (self.pretrain_clusters >= 2, "pretrain_clusters", "pretrain_clusters must be at least 2"),
                (0 < self.pretrain_mask_ratio < 1, "pretrain_mask_ratio", "pretrain_mask_ratio must be in (0, 1)"),
            ]
        )


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@stdlib_dataclass(frozen=True)
class KMeansConfig:
    """Settings of one k-means fit; ``validate`` checks them."""

    n_clusters: int
    # k-means cost grows linearly with the fit frames while 200k frames (~1 h of
    # 50 Hz audio) already pin down 50-150 centroids: fit on a seeded sample.
    max_fit_frames: int = 200_000
    n_init: int = 3
    max_iter: int = 100
    seed: int = 0
    backend: str = "faiss"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field and its allowed values."""
        for name, minimum in (("n_clusters", 1), ("max_fit_frames", 1), ("n_init", 1), ("max_iter", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < minimum:
                raise ValueError(f"KMeansConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"KMeansConfig.seed must be an integer in [0, 2**32), got {self.seed!r}")
        if self.backend not in KMEANS_BACKENDS:
            raise ValueError(f"KMeansConfig.backend must be one of {KMEANS_BACKENDS}, got {self.backend!r}")
        if self.max_fit_frames < self.n_clusters:
            raise ValueError(
                f"KMeansConfig.max_fit_frames ({self.max_fit_frames}) must be >= n_clusters "
                f"({self.n_clusters}): a fit needs at least one frame per cluster"
            )


@dataclass(frozen=True, config=_STRICT)
class KMeansSettings:
    """k-means settings fixed per study (K is searched)."""

    backend: str = "faiss"  # CPU default; "cuml" on a GPU worker, "sklearn" as the reference
    max_fit_frames: int = 200_000  # about 1.1 h of 20 ms frames: plenty for K <= 150, bounded memory and time
    n_init: int = 3
    max_iter: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            [
                (self.backend in KMEANS_BACKENDS, "backend", f"backend must be one of {KMEANS_BACKENDS}, got {self.backend!r}"),
                (self.max_fit_frames >= 1, "max_fit_frames", "max_fit_frames must be at least 1"),
                (self.n_init >= 1, "n_init", "n_init must be at least 1"),
                (self.max_iter >= 1, "max_iter", "max_iter must be at least 1"),
                (0 <= self.seed < 2**32, "seed", "seed must be in [0, 2**32)"),
            ]
        )

    def for_clusters(self, clusters: int) -> KMeansConfig:
        """The :class:`KMeansConfig` of one fit with ``clusters`` centroids."""
        return KMeansConfig(n_clusters=clusters, max_fit_frames=self.max_fit_frames, n_init=self.n_init, max_iter=self.max_iter, seed=self.seed, backend=self.backend)


@dataclass(frozen=True, config=_STRICT)
class PhaseSettings:
    """Every fixed hyperparameter of the phases."""

    tapt: TaptConfig = field(default_factory=TaptConfig)
    embed_max_batch_seconds: float = 320.0
    kmeans: KMeansSettings = field(default_factory=KMeansSettings)
    cpt: CptConfig = field(default_factory=CptConfig)
    finetune: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        _check([(self.embed_max_batch_seconds > 0, "embed_max_batch_seconds", "embed_max_batch_seconds must be positive")])

    def _each_training(self, change) -> "PhaseSettings":
        """These settings with ``change(train config)`` applied to every training phase (TAPT's pretraining included)."""
        retrain = lambda cfg: replace(cfg, train=change(cfg.train))  # noqa: E731
        tapt = replace(retrain(self.tapt), pretrain_cpt=retrain(self.tapt.pretrain_cpt))
        return replace(self, tapt=tapt, cpt=retrain(self.cpt), finetune=retrain(self.finetune))

    def with_training(self, **changes) -> "PhaseSettings":
        """These settings with ``changes`` (e.g. ``epochs``, ``seed``) applied to every training phase's :class:`TrainConfig`."""
        return self._each_training(lambda train: replace(train, **changes)) if changes else self


    def reseeded(self, offset: int) -> "PhaseSettings":
        """These settings with every training phase's seed moved by ``offset`` (a study's repeat seed; 0 changes nothing)."""
        return self._each_training(lambda train: replace(train, seed=train.seed + offset)) if offset else self


def hubert_settings() -> PhaseSettings:
    """HuBERT-base on a GPU (bf16), as the reference code (ASolitaryMan/HFLEA) trains it; see docs/settings.md.

    Fine-tuning and TAPT's supervised step: AdamW lr 1e-4 (heads 1e-3), weight
    decay 1e-5, 40 epochs, SpecAugment 0.08, 6 s training crops, the CNN frozen.
    CPT and TAPT's masked pretraining: AdamW lr 5e-4, betas (0.9, 0.98), weight
    decay 0.01, 20 % warm-up then linear decay over 20k updates of 160 s of
    audio (the reference: 20k updates of 4 x 87.5 s; one GPU sees 46 % of that
    audio in the same number of updates). TAPT pretrains on k-means (K 500) of
    the pretrained encoder's layer 9, then fine-tunes with attention pooling.
    """
    supervised = TrainConfig(epochs=40, lr=1e-4, head_lr=1e-3, weight_decay=1e-5, warmup_fraction=0.1, max_batch_seconds=160.0, max_train_seconds=6.0)
    masked = TrainConfig(epochs=400, max_updates=20_000, lr=5e-4, head_lr=5e-4, weight_decay=0.01, betas=(0.9, 0.98), warmup_fraction=0.2,
                         max_batch_seconds=160.0, max_train_seconds=15.0)
    cpt = CptConfig(train=masked)
    return PhaseSettings(
        tapt=TaptConfig(train=supervised, spec_augment=0.08, pooling="attention", pretrain="masked", pretrain_layer=9, pretrain_clusters=500, pretrain_cpt=cpt),
        cpt=cpt,
        finetune=ClassifierConfig(train=supervised, spec_augment=0.08),
    )


def smoke_settings(epochs: int = 8) -> PhaseSettings:
    """Settings for the tiny encoder on the generated corpus: minutes on a laptop CPU (``bench/results/learning.md``).

    A small encoder needs far higher learning rates than a pretrained HuBERT.
    Its pooled frames vary little between utterances next to their mean, so
    the classifiers standardise them (``head_norm: batch``); SpecAugment is
    off, because a few masked spans shift a small encoder's pooled frames far
    more than its classes differ. The classifiers read a learnt mix of all
    layers (``layers: weighted``): a tiny encoder's emotion is not in its last
    layer more than in its first (``bench/encoder_probe.py``), and TAPT pools
    the mean and spread of the frames (``stats``). Both read the utterance's
    loudness level and spectral balance beside the pooled frames (``loudness``,
    ``spectral_balance``), which the encoder's normalised CNN cannot hear, and
    start their emotion head from a logistic regression on the starting
    encoder's pooled vectors (``head_init: probe``, LP-FT). Short batches keep a
    2-core CPU busy without swapping.
    """
    train = TrainConfig(epochs=epochs, lr=1e-3, head_lr=3e-3, max_batch_seconds=40.0, max_train_seconds=6.0, warmup_fraction=0.1)
    reads = {"head_norm": "batch", "layers": "weighted", "loudness": True, "spectral_balance": True, "head_init": "probe", "attention_dropout": 0.0}
    cpt = CptConfig(train=train, attention_dropout=0.0)
    return PhaseSettings(
        tapt=TaptConfig(train=train, spec_augment=0.0, **reads, pooling="stats", pretrain="none", pretrain_layer=2, pretrain_clusters=50, pretrain_cpt=cpt),
        embed_max_batch_seconds=80.0,
        kmeans=KMeansSettings(max_fit_frames=50_000, n_init=2),
        cpt=cpt,
        finetune=ClassifierConfig(train=train, spec_augment=0.0, **reads),
    )


#: The fixed phase settings a study or ``run-fold`` starts from, by name.
PRESETS = {"hubert": hubert_settings, "smoke": smoke_settings}


@dataclass(frozen=True, config=_STRICT)
class RayResources:
    """Resources of each phase on the Ray cluster (``resources.train`` of a study, for the Ray executor)."""

    workers: int = 1  # Ray Train workers (DDP ranks) per training phase
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    embed_gpus: float = 0.0  # the embedding pass: one task
    kmeans_gpus: float = 0.0  # > 0 with the cuML backend
    max_failures: int = 2  # worker-group restarts per training phase, each resuming from the last epoch

    def __post_init__(self) -> None:
        _check([(self.workers >= 1, "workers", f"workers must be at least 1, got {self.workers}"), (self.max_failures >= 0, "max_failures", "max_failures must not be negative")])
        for name in ("gpus_per_worker", "cpus_per_worker", "embed_gpus", "kmeans_gpus"):
            _check([(getattr(self, name) >= 0, name, f"{name} must not be negative")])

    def task_gpus(self, phase: str) -> float:
        """GPUs of the Ray task running a task phase: k-means takes ``kmeans_gpus``, encoder passes ``embed_gpus``."""
        return {"clustering": self.kmeans_gpus, "egemaps_features": 0.0, "egemaps": 0.0}.get(phase, self.embed_gpus)


@dataclass(frozen=True, config=_STRICT)
class TinyEncoderConfig:
    """A HuBERT-shaped encoder small enough to train on a laptop CPU in minutes."""

    hidden_size: int = 64
    num_layers: int = 4  # enough to choose a middle layer, as the method does with HuBERT's 12
    num_heads: int = 4
    intermediate_size: int = 128
    conv_channels: int = 32
    #: How the CNN normalises: "group" (HuBERT-base: each channel over time, so padding changes features) or
    #: "layer" (HuBERT-large: each frame over channels, with a pre-norm transformer). `ser-study tiny-encoder`
    #: builds "group", whose CNN learns pitch in pretraining (docs/learning.md); "layer" keeps a random
    #: encoder's features independent of padding, for tests that batch utterances.
    feat_extract_norm: Literal["group", "layer"] = "layer"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            [
                (self.num_layers >= 1, "num_layers", "num_layers must be at least 1"),
                (self.hidden_size >= 8 and self.hidden_size % self.num_heads == 0, "hidden_size", f"hidden_size must be at least 8 and a multiple of num_heads ({self.num_heads})"),
            ]
        )
