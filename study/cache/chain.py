"""One fold of one method: its recipe's chain of phases, each step through the artifact cache.

Each step's cache key holds what determines its output (its phase and spec,
the keys of the steps it builds on, the fingerprints of the utterances it uses,
the encoder's content id), so candidates and methods that share a prefix of a
chain share its artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from study.cache.store import ArtifactCache, artifact_key
from trainables.config import PhaseSettings
from trainables.data.folds import Fold, FoldProtocol, build_fold
from trainables.data.manifest import Utterance, fingerprint
from trainables.phases.artifacts import encoder_fingerprint
from trainables.recipes.base import FoldContext
from trainables.recipes.registry import get_recipe

logger = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """What one fold of one candidate produced (a trial record holds one per fold and seed)."""

    test_session: int
    seed: int
    method: str
    val: dict[str, Any]
    test: dict[str, Any]
    fold: dict[str, Any]
    scored: str = ""  # the step whose artifact holds the scored model (predict loads it)
    artifacts: dict[str, str] = field(default_factory=dict)  # step -> cache key
    phases: dict[str, str] = field(default_factory=dict)  # step -> phase
    links: dict[str, list[str]] = field(default_factory=dict)  # step -> the steps it builds on
    built: list[str] = field(default_factory=list)  # steps built by this chain (the rest were cached)
    seconds: float = 0.0
    strict: bool = True
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # training step -> per-epoch metrics
    node: str = ""  # the host (and Ray node id) that ran the chain

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select(utterances: Sequence[Utterance], ids: Sequence[str]) -> list[Utterance]:
    wanted = set(ids)
    return [u for u in utterances if u.utt_id in wanted]


@dataclass(frozen=True)
class FoldChain:
    """One fold of one method with its parameters: what :func:`plan_fold_chain` plans and :func:`run_fold_chain` runs.

    ``embed_layers`` are embedded in one pass with the candidate's own layers;
    give a study's whole layer set so its candidates share one pass. ``seed``
    moves every training phase's seed (a study's repeats: ``study.seeds``); the
    split depends only on the protocol's seed, so every repeat trains on the same split.
    """

    utterances: Sequence[Utterance]
    test_session: int
    protocol: FoldProtocol
    method: str
    params: Mapping[str, Any]
    settings: PhaseSettings
    encoder: str
    classes: Sequence[str]
    embed_layers: Sequence[int] = ()
    seed: int = 0


def _fold_context(chain: FoldChain, executor: Any, get_or_build: Any) -> tuple[Fold, FoldContext]:
    """The fold testing ``chain.test_session`` and the context its recipe takes its steps in."""
    utterances = chain.utterances
    fold: Fold = build_fold(utterances, chain.protocol.fold_spec(chain.test_session))
    train, val, test = (_select(utterances, split.utt_ids) for split in (fold.train, fold.val, fold.test))
    context = FoldContext(
        test_session=chain.test_session,
        seed=chain.seed,
        train=train,
        val=val,
        test=test,
        unsupervised=_select(utterances, chain.protocol.unsupervised_ids(fold)),
        classes=chain.classes,
        settings=chain.settings.reseeded(chain.seed),
        encoder=chain.encoder,
        encoder_id=encoder_fingerprint(chain.encoder),
        embed_layers=chain.embed_layers,
        executor=executor,
        get_or_build=get_or_build,
        log=logger.info,
    )
    return fold, context


@dataclass(frozen=True)
class PlannedStep:
    """One artifact a fold's chain needs: its phase, cache key and whether the cache already has it complete."""

    phase: str
    key: str
    cached: bool


def plan_fold_chain(chain: FoldChain, cache: ArtifactCache) -> dict[str, PlannedStep]:
    """The steps :func:`run_fold_chain` would take for ``chain`` (step -> planned artifact), building nothing.

    The recipe walks its chain with a cache that only computes keys: a step's
    build is never called, so the keys are exactly those a run would use.
    """
    recipe = get_recipe(chain.method)

    def key_only(phase: str, spec: dict[str, Any], build: Any) -> tuple[str, Any]:
        key = artifact_key(phase, spec)
        return key, cache.path(phase, key)

    _, context = _fold_context(chain, None, key_only)
    recipe.run(context, recipe.resolve(chain.params))
    return {step: PlannedStep(context.phases[step], key, cache.has(context.phases[step], key)) for step, key in context.keys.items()}


def run_fold_chain(chain: FoldChain, cache: ArtifactCache, executor: Any) -> FoldResult:
    """Run (or reuse) every step of ``chain.method`` with ``chain.params`` for the fold testing ``chain.test_session``."""
    recipe = get_recipe(chain.method)
    fold, context = _fold_context(chain, executor, cache.get_or_build)
    unsupervised = context.unsupervised
    train, val, test = context.train, context.val, context.test
    outcome = recipe.run_fold(context, chain.params)
    summary = fold.summary()
    summary["unsupervised_audio"] = chain.protocol.unsupervised_audio
    summary["unsupervised_fingerprint"] = fingerprint(u.utt_id for u in unsupervised)
    summary["fold_fingerprint"] = fingerprint(u.utt_id for u in train + val + test)
    return FoldResult(
        test_session=chain.test_session,
        seed=chain.seed,
        method=chain.method,
        val=outcome.val,
        test=outcome.test,
        fold=summary,
        scored=outcome.scored,
        artifacts=outcome.artifacts,
        phases=outcome.phases,
        links=outcome.links,
        built=outcome.built,
        seconds=outcome.seconds,
        strict=chain.protocol.strict,
        history=outcome.history,
    )
