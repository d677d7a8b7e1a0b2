"""A method is a recipe: a small chain of phases through the artifact cache, plus the parameters a study searches.

A :class:`Recipe` declares its parameters (:class:`Param`: each searched or
fixed by a study, with a default) and builds one fold's chain with
:meth:`Recipe.run`, asking a :class:`FoldContext` for each step. The context
knows the fold's utterances, the fixed phase settings and the executor, and
takes each step through the artifact cache: a step whose key (its phase, its
spec and the keys of the steps it builds on) is cached is not run again, so
recipes that share a prefix (the ``tapt`` baseline and ``alignment``) share
its artifacts. Nothing here imports torch: a study file is checked against the
recipes' parameters before anything heavy loads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from trainables.config import PhaseSettings
from trainables.data.manifest import Utterance, fingerprint
from trainables.phases.artifacts import read_record
from trainables.phases.evaluation import read_metrics

#: The forms a study file may give a parameter of each kind (see :mod:`study.config.space`).
FORMS = {"int": ("fixed", "choice", "int"), "float": ("fixed", "choice", "float"), "str": ("fixed", "choice")}


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its kind (``int``, ``float`` or ``str``), its default, and what values are allowed."""

    kind: str
    default: Any
    help: str
    allowed: Callable[[Any], bool] = field(default=lambda value: True, compare=False)
    rule: str = ""  # the allowed values in words, for error messages

    def __post_init__(self) -> None:
        if self.kind not in FORMS:
            raise ValueError(f"Param kind must be one of {sorted(FORMS)}, got {self.kind!r}")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        python_type = {"int": int, "float": (int, float), "str": str}[self.kind]
        if isinstance(value, bool) or not isinstance(value, python_type):
            return f"{value!r} is not {'an' if self.kind == 'int' else 'a'} {self.kind}"
        if self.kind == "float" and not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if not self.allowed(value):
            return f"{value!r} not allowed: {self.rule}"
        return None


def choice_param(values: Sequence[str], default: str, help: str) -> Param:
    """A ``str`` parameter that takes one of ``values``."""
    return Param("str", default, help, allowed=lambda value: value in values, rule=f"one of {', '.join(values)}")


class FoldContext:
    """One fold of one recipe: its data, settings and executor, and every step taken through the cache.

    ``get_or_build(phase, spec, build)`` is the cache's (it returns the key and
    the local path of the artifact, calling ``build(path)`` if it is missing).
    The context records, for the fold's result and its audit, each step's key
    and phase, the steps it builds on, which steps were built here, and their paths.
    """

    def __init__(
        self,
        *,
        test_session: int,
        seed: int,
        train: Sequence[Utterance],
        val: Sequence[Utterance],
        test: Sequence[Utterance],
        unsupervised: Sequence[Utterance],
        classes: Sequence[str],
        settings: PhaseSettings,
        encoder: str,
        encoder_id: str,
        embed_layers: Sequence[int],
        executor: Any,
        get_or_build: Callable[[str, dict[str, Any], Callable[[Path], None]], tuple[str, Path]],
        log: Callable[[str], None] = lambda message: None,
    ):
        self.test_session = test_session
        self.seed = seed
        self.train, self.val, self.test, self.unsupervised = list(train), list(val), list(test), list(unsupervised)
        self.classes = tuple(classes)
        self.settings = settings
        self.encoder = encoder
        self.encoder_id = encoder_id
        self.embed_layers = tuple(sorted(set(embed_layers)))
        self.executor = executor
        self._get_or_build = get_or_build
        self._log = log
        self.keys: dict[str, str] = {}
        self.phases: dict[str, str] = {}
        self.links: dict[str, list[str]] = {}
        self.paths: dict[str, Path] = {}
        self.built: list[str] = []

    def fingerprint(self, part: str) -> str:
        """The fingerprint of the fold's ``train``, ``val``, ``test`` or ``unsupervised`` utterances, or of all of them (``fold``)."""
        utterances = self.train + self.val + self.test if part == "fold" else getattr(self, part)
        return fingerprint(u.utt_id for u in utterances)

    def step(self, name: str, spec: Mapping[str, Any], build: Callable[[Path], Any], after: Sequence[str] = ()) -> Path:
        """The artifact of step ``name`` (phase ``name`` before any ``@``), built by ``build(path)`` unless cached.

        ``spec`` holds what determines the artifact besides the steps in
        ``after``, whose keys join it. Taking a step twice returns its path.
        """
        if name in self.keys:
            return self.paths[name]
        missing = [s for s in after if s not in self.keys]
        if missing:
            raise ValueError(f"step {name!r} builds on {missing}, which this fold has not taken yet")
        phase = name.split("@", 1)[0]
        full = {**spec, "upstream": {s: self.keys[s] for s in after}}

        def build_and_count(out: Path) -> None:
            self._log(f"fold {self.test_session}: building {name}")
            build(out)
            self.built.append(name)

        self.keys[name], self.paths[name] = self._get_or_build(phase, full, build_and_count)
        self.phases[name] = phase
        self.links[name] = list(after)
        return self.paths[name]

    def history(self) -> dict[str, list[dict[str, Any]]]:
        """The per-epoch metrics of every training step taken (from the artifacts' records)."""
        out = {}
        for name, path in self.paths.items():
            history = read_record(path).get("results", {}).get("history")
            if history:
                out[name] = history
        return out


@dataclass
class FoldOutcome:
    """What one fold of one recipe produced: metrics and how the chain was built."""

    val: dict[str, Any]
    test: dict[str, Any]
    scored: str  # the step whose artifact holds the scored model and metrics.json
    artifacts: dict[str, str]
    phases: dict[str, str]
    links: dict[str, list[str]]
    built: list[str]
    history: dict[str, list[dict[str, Any]]]
    seconds: float


class Recipe:
    """A method of the study: subclass it, set the class attributes and implement :meth:`run`."""

    #: The name a study file uses (``search.space.<name>``, ``baselines: [<name>]``).
    name: ClassVar[str]
    #: One line for reports and MLflow.
    title: ClassVar[str]
    #: Known only from an abstract and rebuilt from it: every report flags it.
    reconstructed: ClassVar[bool] = False
    params: ClassVar[Mapping[str, Param]] = {}

    def defaults(self) -> dict[str, Any]:
        return {name: param.default for name, param in self.params.items()}

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` completed with the defaults; a ``ValueError`` names an unknown or disallowed one."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"method {self.name} has no parameter {', '.join(unknown)}; its parameters: {', '.join(self.params) or 'none'}")
        resolved = {**self.defaults(), **params}
        for name, value in resolved.items():
            problem = self.params[name].problem(value)
            if problem:
                raise ValueError(f"method {self.name}, {name}: {problem}")
        return resolved

    def layers(self, params: Mapping[str, Any]) -> set[int]:
        """The encoder layers (``hidden_states`` indices) this candidate reads: checked against the encoder's depth."""
        return set()

    def max_clusters(self, params: Mapping[str, Any]) -> int:
        """The largest k-means K this candidate fits (0 for none): checked against the frames of the fold."""
        return 0

    def data_problems(self, params: Mapping[str, Any], utterances: Sequence[Utterance]) -> list[tuple[str, str]]:
        """``(parameter, problem)`` for each way this candidate cannot run on ``utterances`` (e.g. a task whose data the manifest lacks)."""
        return []

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        """Take the fold's steps; return the step whose artifact holds ``metrics.json``."""
        raise NotImplementedError

    def run_fold(self, fold: FoldContext, params: Mapping[str, Any]) -> FoldOutcome:
        """:meth:`run`, timed, with its scored step's metrics and the chain's record."""
        started = time.perf_counter()
        final = self.run(fold, self.resolve(params))
        metrics = read_metrics(fold.paths[final])
        return FoldOutcome(
            val=metrics["val"],
            test=metrics["test"],
            scored=final,
            artifacts=dict(fold.keys),
            phases=dict(fold.phases),
            links={k: list(v) for k, v in fold.links.items()},
            built=list(fold.built),
            history=fold.history(),
            seconds=time.perf_counter() - started,
        )
