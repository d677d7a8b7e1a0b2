"""The steps recipes share, each with one spec: two recipes taking the same step on a fold share its artifact.

Every function takes a :class:`~trainables.recipes.base.FoldContext`, asks it
for one step (built through the executor when not cached) and returns the
step's name, for the steps that build on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from trainables.config import CptConfig, UtteranceObjective
from trainables.phases.artifacts import classifier_dir, encoder_dir, read_record
from trainables.recipes.base import FoldContext

TAPT = "tapt"
EMBEDDINGS = "embeddings"
CPT = "cpt"
EGEMAPS_FEATURES = "egemaps_features"


def encoder_of(fold: FoldContext, step: str | None) -> str:
    """The encoder a step starts from: the pretrained one (``step`` None) or the one saved by ``step``."""
    return fold.encoder if step is None else str(encoder_dir(fold.paths[step]))


def _objective_spec(objective: UtteranceObjective | None) -> dict:
    """The spec entry of a classifier's objective: none for the default, so plain steps keep their keys."""
    return {} if objective is None or objective.is_default else {"objective": objective}


def tapt(fold: FoldContext, objective: UtteranceObjective | None = None, name: str = TAPT) -> str:
    """TAPT: task-adaptive pretraining on the fold's audio (``tapt.pretrain: masked``), then fine-tuning on its training labels.

    The pretraining is masked prediction of the k-means clusters of the
    pretrained encoder's ``tapt.pretrain_layer``: its own embeddings,
    clustering and CPT steps (``@tapt``), shared by every recipe's TAPT. The
    supervised step learns ``objective`` (default: the emotion alone; GMP-TL
    adds gender), selects its checkpoint on validation and saves the whole classifier.
    """
    cfg = fold.settings.tapt
    start = None
    if cfg.pretrain == "masked":
        frames = embeddings(fold, None, [cfg.pretrain_layer], name=f"{EMBEDDINGS}@{TAPT}", study_layers=False)
        targets = clustering(fold, frames, cfg.pretrain_layer, cfg.pretrain_clusters, name=f"clustering@{TAPT}")
        start = cpt(fold, {f"k{cfg.pretrain_clusters}": targets}, cfg.pretrain_mask_ratio, None, name=f"{CPT}@{TAPT}", cfg=cfg.pretrain_cpt)
    spec = {"train": fold.fingerprint("train"), "val": fold.fingerprint("val"), "classes": list(fold.classes), "config": cfg, **_objective_spec(objective)}
    if start is None:
        spec["encoder"] = fold.encoder_id
    fold.step(
        name,
        spec,
        lambda out: fold.executor.train(
            "tapt", out, encoder=encoder_of(fold, start), train=fold.train, val=fold.val, classes=fold.classes, cfg=cfg,
            objective=objective or UtteranceObjective(),
        ),
        after=[start] if start else [],
    )
    return name


def embeddings(fold: FoldContext, encoder_step: str | None, layers: Sequence[int], name: str = EMBEDDINGS, study_layers: bool = True) -> str:
    """Frame embeddings of the fold's unsupervised audio at ``layers`` (with every layer the study embeds, unless
    ``study_layers`` is false: one pass serves all the study's candidates)."""
    layers = sorted(set(layers) | (set(fold.embed_layers) if study_layers else set()))
    spec = {"utterances": fold.fingerprint("unsupervised"), "layers": layers, **({"encoder": fold.encoder_id} if encoder_step is None else {})}
    fold.step(
        name,
        spec,
        lambda out: fold.executor.task(
            "embeddings", out, encoder_path=encoder_of(fold, encoder_step), utterances=fold.unsupervised, layers=layers,
            max_batch_seconds=fold.settings.embed_max_batch_seconds,
        ),
        after=[encoder_step] if encoder_step else [],
    )
    return name


def clustering(fold: FoldContext, embeddings_step: str, layer: int, clusters: int, name: str = "clustering") -> str:
    """k-means with ``clusters`` centroids over ``layer`` of the embeddings: every frame's pseudo label."""
    cfg = fold.settings.kmeans.for_clusters(clusters)
    fold.step(
        name,
        {"layer": layer, "kmeans": cfg},
        lambda out: fold.executor.task("clustering", out, embeddings=fold.paths[embeddings_step], layer=layer, cfg=cfg),
        after=[embeddings_step],
    )
    return name


def cpt(fold: FoldContext, clusterings: Mapping[str, str], mask_ratio: float, init_step: str | None, name: str = CPT, cfg: CptConfig | None = None) -> str:
    """Continued pretraining: predict the pseudo labels of masked frames, one head per label set (``{set name: clustering step}``).

    From ``init_step``'s encoder (None: the pretrained one), trained as ``cfg`` (default: the study's ``phases.cpt``).
    """
    cfg = cfg or fold.settings.cpt
    spec = {"utterances": fold.fingerprint("unsupervised"), "label_sets": sorted(clusterings), "mask_ratio": mask_ratio, "config": cfg}
    if init_step is None:
        spec["init"] = fold.encoder_id
    fold.step(
        name,
        spec,
        lambda out: fold.executor.train(
            "cpt", out, init_encoder=encoder_of(fold, init_step), utterances=fold.unsupervised,
            clusterings={label_set: fold.paths[step] for label_set, step in clusterings.items()}, mask_ratio=mask_ratio, cfg=cfg,
        ),
        after=[*sorted(clusterings.values()), *([init_step] if init_step else [])],
    )
    return name


def finetune(fold: FoldContext, encoder_step: str | None, pooling: str, name: str = "finetune", objective: UtteranceObjective | None = None) -> str:
    """Fine-tuning for SER (pooling + heads for ``objective``, default a linear emotion head) from ``encoder_step``'s
    encoder (the pretrained one for None), scored on the test session."""
    cfg = fold.settings.finetune
    spec = {
        "pooling": pooling, "train": fold.fingerprint("train"), "val": fold.fingerprint("val"), "test": fold.fingerprint("test"),
        "classes": list(fold.classes), "config": cfg, **({"encoder": fold.encoder_id} if encoder_step is None else {}),
        **_objective_spec(objective),
    }
    fold.step(
        name,
        spec,
        lambda out: fold.executor.train(
            "finetune", out, encoder=encoder_of(fold, encoder_step), pooling=pooling, train=fold.train, val=fold.val, test=fold.test,
            classes=fold.classes, cfg=cfg, objective=objective or UtteranceObjective(),
        ),
        after=[encoder_step] if encoder_step else [],
    )
    return name


def score(fold: FoldContext, classifier_step: str, name: str = "score") -> str:
    """The classifier a training step saved, scored on the test session (its validation metrics kept)."""

    def build(out: Path) -> None:
        path = fold.paths[classifier_step]
        classifier = path if (path / "classifier.json").is_file() else classifier_dir(path)
        best = read_record(path)["results"]["best"]
        val = {key.removeprefix("val_"): value for key, value in best.items() if key.startswith("val_")}
        fold.executor.task("score", out, classifier=classifier, val_metrics=val, test=fold.test, classes=fold.classes,
                           eval_max_batch_seconds=fold.settings.finetune.eval_max_batch_seconds)

    fold.step(name, {"test": fold.fingerprint("test"), "classes": list(fold.classes)}, build, after=[classifier_step])
    return name


def egemaps_features(fold: FoldContext) -> str:
    """eGeMAPS functionals of every utterance of the fold (a fixed function: shared by every fold with the same utterances)."""
    everyone = sorted(fold.train + fold.val + fold.test, key=lambda u: u.utt_id)
    fold.step(EGEMAPS_FEATURES, {"utterances": fold.fingerprint("fold")}, lambda out: fold.executor.task("egemaps_features", out, utterances=everyone))
    return EGEMAPS_FEATURES
