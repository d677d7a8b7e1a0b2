"""What a fold chain needs besides the data: the protocol, the searched candidate, the fixed phase settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainables.data.folds import FoldSpec, Validation
from trainables.kmeans import KMEANS_BACKENDS, KMeansConfig
from trainables.models.pooling import POOLINGS
from trainables.phases.classifier import ClassifierConfig
from trainables.phases.cpt import CptConfig
from trainables.training import TrainConfig

UNSUPERVISED_AUDIO = ("train", "train+test")


@dataclass(frozen=True)
class Protocol:
    """How folds are split and which audio the unsupervised phases may see."""

    validation: Validation = Validation.STRATIFIED
    val_fraction: float = 0.1
    val_speaker: str | None = None
    # "train": embeddings, k-means and CPT see the training sessions only (strict).
    # "train+test": they also see the test session's audio, without labels (the published code).
    unsupervised_audio: str = "train"
    seed: int = 0

    def validate(self) -> None:
        if self.unsupervised_audio not in UNSUPERVISED_AUDIO:
            raise ValueError(f"protocol.unsupervised_audio must be one of {UNSUPERVISED_AUDIO}, got {self.unsupervised_audio!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"protocol.val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def strict(self) -> bool:
        return self.unsupervised_audio == "train" and self.validation is not Validation.TEST_SESSION_SPEAKER

    def fold_spec(self, test_session: int) -> FoldSpec:
        return FoldSpec(test_session, Validation(self.validation), self.val_fraction, self.val_speaker, self.seed)

    def describe(self) -> str:
        if self.strict:
            return f"strict (validation: {Validation(self.validation).value}; the test session enters no phase but the test)"
        loose = []
        if self.unsupervised_audio == "train+test":
            loose.append("test-session audio (no labels) in embeddings, k-means and CPT")
        if Validation(self.validation) is Validation.TEST_SESSION_SPEAKER:
            loose.append("validation on a speaker of the test session")
        return "NOT strict: " + "; ".join(loose)


@dataclass(frozen=True)
class Candidate:
    """One point of the search: the method's four searched hyperparameters."""

    layer: int
    clusters: int
    mask_ratio: float
    pooling: str

    def validate(self) -> None:
        if self.clusters < 2:
            raise ValueError(f"clusters must be at least 2, got {self.clusters}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


@dataclass(frozen=True)
class KMeansSettings:
    """k-means settings fixed per study (K is searched)."""

    backend: str = "sklearn"
    max_fit_frames: int = 200_000  # about 1.1 h of 20 ms frames: plenty for K <= 150, bounded memory and time
    n_init: int = 3
    max_iter: int = 100
    seed: int = 0

    def for_clusters(self, clusters: int) -> KMeansConfig:
        return KMeansConfig(n_clusters=clusters, max_fit_frames=self.max_fit_frames, n_init=self.n_init, max_iter=self.max_iter, seed=self.seed, backend=self.backend)

    def validate(self) -> None:
        if self.backend not in KMEANS_BACKENDS:
            raise ValueError(f"kmeans.backend must be one of {KMEANS_BACKENDS}, got {self.backend!r}")


@dataclass(frozen=True)
class PhaseSettings:
    """Every fixed hyperparameter of the five phases."""

    tapt: ClassifierConfig = field(default_factory=ClassifierConfig)
    embed_max_batch_seconds: float = 320.0
    kmeans: KMeansSettings = field(default_factory=KMeansSettings)
    cpt: CptConfig = field(default_factory=CptConfig)
    finetune: ClassifierConfig = field(default_factory=ClassifierConfig)

    def validate(self) -> None:
        self.tapt.validate("phases.tapt")
        self.cpt.validate("phases.cpt")
        self.finetune.validate("phases.finetune")
        self.kmeans.validate()


def smoke_settings(epochs: int = 8) -> PhaseSettings:
    """Settings for the tiny encoder on the generated corpus: minutes on a laptop CPU.

    A randomly initialised tiny encoder needs far higher learning rates than a
    pretrained HuBERT, and short batches keep a 2-core CPU busy without swapping.
    """
    train = TrainConfig(epochs=epochs, lr=1e-3, head_lr=3e-3, max_batch_seconds=40.0, max_train_seconds=6.0, warmup_fraction=0.1)
    return PhaseSettings(
        tapt=ClassifierConfig(train=train),
        embed_max_batch_seconds=80.0,
        kmeans=KMeansSettings(max_fit_frames=50_000, n_init=2),
        cpt=CptConfig(train=train),
        finetune=ClassifierConfig(train=train),
    )
