"""``ser-study plan``: what a study would run, before it runs: candidates, phase artifacts to build or reuse, an estimate.

Every candidate's chain (and every baseline's) is walked per fold and seed with
a cache that only computes keys (:func:`study.cache.chain.plan_fold_chain`), so
the artifacts listed are exactly those a run would look up; each is marked
cached when the study's cache already holds it complete. The estimate adds,
per artifact to build, the median build time of its phase in this cache's
own history (none without one). A TPE study samples ``search.num_trials``
of its candidates: the plan lists the whole grid when the space is finite,
and marks which counts are an upper bound.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
from typing import Any

from study.cache.chain import FoldChain, plan_fold_chain
from study.cache.store import ArtifactCache
from study.config.space import METHOD
from study.config.study import StudyConfig
from study.io import layout
from trainables.data.manifest import read_manifest


@dataclass
class Plan:
    name: str
    algorithm: str
    num_trials: int
    candidates: list[dict[str, Any]]  # every candidate of a finite space (TPE samples num_trials of them)
    baselines: list[str]
    folds: list[int]
    seeds: list[int]
    cache_root: str
    #: (phase, key) -> cached; every distinct artifact the candidates and baselines need
    artifacts: dict[tuple[str, str], bool] = field(default_factory=dict)
    #: phase -> median seconds of a build, from the cache's events
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exhaustive(self) -> bool:
        """True when the run takes every listed candidate (a grid, or a TPE study with at least as many trials)."""
        return self.algorithm == "grid" or self.num_trials >= len(self.candidates)

    def counts(self) -> dict[str, tuple[int, int]]:
        """phase -> (artifacts to build, artifacts cached)."""
        out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for (phase, _), cached in self.artifacts.items():
            out[phase][1 if cached else 0] += 1
        return {phase: (n[0], n[1]) for phase, n in out.items()}

    def estimate_seconds(self) -> tuple[float, list[str]]:
        """Seconds to build what is missing, from the phases' median build times; and the phases with no timing yet."""
        total, unknown = 0.0, set()
        for (phase, _), cached in self.artifacts.items():
            if cached:
                continue
            if phase in self.phase_seconds:
                total += self.phase_seconds[phase]
            else:
                unknown.add(phase)
        return total, sorted(unknown)


def _build_seconds(cache: ArtifactCache) -> dict[str, float]:
    times: dict[str, list[float]] = collections.defaultdict(list)
    for event in cache.events():
        if event.get("event") == "built" and isinstance(event.get("seconds"), (int, float)):
            times[str(event["phase"])].append(float(event["seconds"]))
    return {phase: statistics.median(values) for phase, values in times.items()}


def make_plan(config: StudyConfig) -> Plan:
    """The plan of a validated study (``config.check_inputs()`` first: it refuses bad data, encoders and layers)."""
    utterances = read_manifest(config.data.manifest)
    cache_root = config.storage.cache_dir or layout.own_cache_dir(config.storage.study_dir)
    cache = ArtifactCache(cache_root)
    space = config.search.space
    candidates = space.candidates() if space.grid_size() is not None else []
    plan = Plan(
        name=config.name,
        algorithm=config.search.algorithm,
        num_trials=config.num_trials(),
        candidates=candidates,
        baselines=list(config.baselines),
        folds=config.fold_sessions(utterances),
        seeds=list(config.study.seeds),
        cache_root=str(cache_root),
    )
    chains = [(c[METHOD], {k: v for k, v in c.items() if k != METHOD}) for c in candidates] + [(b, {}) for b in plan.baselines]
    settings, protocol, classes, layers = config.phase_settings(), config.protocol(), config.classes(utterances), config.embedding_layers()
    for method, params in chains:
        for session in plan.folds:
            for seed in plan.seeds:
                chain = FoldChain(utterances, session, protocol, method, params, settings, config.encoder_ref(), classes, embed_layers=layers, seed=seed)
                steps = plan_fold_chain(chain, cache)
                for step in steps.values():
                    plan.artifacts[(step.phase, step.key)] = step.cached
    plan.phase_seconds = _build_seconds(cache)
    return plan


def format_plan(plan: Plan) -> str:
    """The plan as text: candidates, the artifacts per phase (to build / cached), the estimate."""
    lines = [f"Plan of study {plan.name}: {plan.algorithm}, {plan.num_trials} trial(s); folds {plan.folds}; seeds {plan.seeds}; cache {plan.cache_root}"]
    if plan.candidates:
        sampled = "" if plan.exhaustive else f" (TPE samples {plan.num_trials} of them: the counts below are an upper bound)"
        lines.append(f"{len(plan.candidates)} candidate(s){sampled}:")
        lines += [f"  {c}" for c in plan.candidates]
    else:
        lines.append("The space has ranges: its candidates are sampled while the study runs; only the baselines are planned below.")
    lines.append(f"Baselines: {', '.join(plan.baselines) or 'none'}")
    counts = plan.counts()
    lines.append(f"{'phase':<24}{'to build':>10}{'cached':>10}")
    for phase in sorted(counts):
        build, cached = counts[phase]
        lines.append(f"{phase:<24}{build:>10}{cached:>10}")
    to_build = sum(b for b, _ in counts.values())
    cached = sum(c for _, c in counts.values())
    lines.append(f"{'total':<24}{to_build:>10}{cached:>10}")
    seconds, unknown = plan.estimate_seconds()
    if to_build == 0:
        lines.append("Estimate: nothing to build; the run only scores and reports.")
    elif seconds:
        tail = f"; no timing yet for {', '.join(unknown)}" if unknown else ""
        lines.append(f"Estimate: {seconds / 60:.1f} min of phase work (median build time per phase in this cache, one fold at a time{tail})")
    else:
        lines.append("Estimate: no build timings in this cache yet (a first study records them); the counts above are the work.")
    return "\n".join(lines)
