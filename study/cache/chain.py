"""One fold's chain of phases, each through the artifact cache.

tapt(fold) -> embed(fold, layers) -> kmeans(fold, L, K) -> cpt(fold, L, K, mask) -> finetune(..., pooling)

Each phase's cache key holds what determines its output (parameters, upstream
keys, the fingerprint of the utterances it uses, the encoder's content id), so
candidates that share a prefix of the chain share its artifacts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from study.cache.store import ArtifactCache
from trainables.data.folds import Fold, build_fold
from trainables.data.manifest import Utterance, fingerprint
from trainables.executors import PhaseExecutor
from trainables.models.encoder import encoder_fingerprint, read_encoder_info
from trainables.phases.artifacts import encoder_dir, read_record
from trainables.phases.finetune import read_metrics
from trainables.config import Candidate, PhaseSettings
from trainables.data.folds import FoldProtocol

logger = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """What one fold of one candidate produced."""

    test_session: int
    val: dict[str, Any]
    test: dict[str, Any]
    fold: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)  # phase -> cache key
    built: list[str] = field(default_factory=list)  # phases built by this chain (the rest were cached)
    seconds: float = 0.0
    strict: bool = True
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # training phase -> per-epoch metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select(utterances: Sequence[Utterance], ids: Sequence[str]) -> list[Utterance]:
    wanted = set(ids)
    return [u for u in utterances if u.utt_id in wanted]


def run_fold_chain(
    utterances: Sequence[Utterance],
    test_session: int,
    protocol: FoldProtocol,
    candidate: Candidate,
    settings: PhaseSettings,
    encoder: str,
    classes: Sequence[str],
    cache: ArtifactCache,
    executor: PhaseExecutor,
    embed_layers: Sequence[int] | None = None,
) -> FoldResult:
    """Run (or reuse) every phase of ``candidate`` for the fold testing ``test_session``.

    ``embed_layers`` are embedded in one pass (default: just the candidate's
    layer); give a study's whole layer set so its candidates share one pass.
    """
    started = time.perf_counter()
    info = read_encoder_info(encoder)
    layers = sorted(set(embed_layers or [candidate.layer]) | {candidate.layer})
    for layer in layers:
        info.check_layer(layer)
    fold: Fold = build_fold(utterances, protocol.fold_spec(test_session))
    train, val, test = (_select(utterances, split.utt_ids) for split in (fold.train, fold.val, fold.test))
    unsupervised = train + val + (test if protocol.unsupervised_audio == "train+test" else [])
    unsupervised_fp = fingerprint(u.utt_id for u in unsupervised)
    encoder_id = encoder_fingerprint(encoder)
    built: list[str] = []
    keys: dict[str, str] = {}

    def step(phase: str, spec: dict[str, Any], build) -> Path:
        def build_and_count(out: Path) -> None:
            logger.info("fold %d: building %s", test_session, phase)
            build(out)
            built.append(phase)

        keys[phase], path = cache.get_or_build(phase, spec, build_and_count)
        return path

    tapt = step(
        "tapt",
        {"encoder": encoder_id, "train": fold.train.fingerprint, "val": fold.val.fingerprint, "classes": list(classes), "config": settings.tapt},
        lambda out: executor.train("tapt", out, encoder=encoder, train=train, val=val, classes=classes, cfg=settings.tapt),
    )
    embeddings = step(
        "embeddings",
        {"tapt": keys["tapt"], "utterances": unsupervised_fp, "layers": layers},
        lambda out: executor.embed(out, encoder_path=encoder_dir(tapt), utterances=unsupervised, layers=layers, max_batch_seconds=settings.embed_max_batch_seconds),
    )
    kmeans_cfg = settings.kmeans.for_clusters(candidate.clusters)
    clustering = step(
        "clustering",
        {"embeddings": keys["embeddings"], "layer": candidate.layer, "kmeans": kmeans_cfg},
        lambda out: executor.cluster(out, embeddings=embeddings, layer=candidate.layer, cfg=kmeans_cfg),
    )
    init = encoder if settings.cpt.init == "pretrained" else str(encoder_dir(tapt))
    init_id = encoder_id if settings.cpt.init == "pretrained" else keys["tapt"]
    label_set = f"k{candidate.clusters}"
    cpt = step(
        "cpt",
        {"init": init_id, "utterances": unsupervised_fp, "clusterings": {label_set: keys["clustering"]}, "mask_ratio": candidate.mask_ratio, "config": settings.cpt},
        lambda out: executor.train("cpt", out, init_encoder=init, utterances=unsupervised, clusterings={label_set: clustering}, mask_ratio=candidate.mask_ratio, cfg=settings.cpt),
    )
    finetune = step(
        "finetune",
        {"cpt": keys["cpt"], "pooling": candidate.pooling, "train": fold.train.fingerprint, "val": fold.val.fingerprint, "test": fold.test.fingerprint, "classes": list(classes), "config": settings.finetune},
        lambda out: executor.train("finetune", out, encoder=encoder_dir(cpt), pooling=candidate.pooling, train=train, val=val, test=test, classes=classes, cfg=settings.finetune),
    )
    metrics = read_metrics(finetune)
    history = {name: read_record(path)["results"].get("history", []) for name, path in (("tapt", tapt), ("cpt", cpt), ("finetune", finetune))}
    summary = fold.summary()
    summary["unsupervised_audio"] = protocol.unsupervised_audio
    summary["unsupervised_fingerprint"] = unsupervised_fp
    return FoldResult(
        test_session=test_session,
        val=metrics["val"],
        test=metrics["test"],
        fold=summary,
        artifacts=keys,
        built=built,
        seconds=time.perf_counter() - started,
        strict=protocol.strict,
        history=history,
    )
