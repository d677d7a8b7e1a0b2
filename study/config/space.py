"""The search space of a study file: each searched hyperparameter fixed, a choice, or a range.

``search.space`` names the method's four hyperparameters (:data:`SEARCHED_PARAMS`);
``search`` adds how they are searched (:class:`SearchSection`).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, Mapping, TypeVar, Union

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from study.config.base import Invalid, Strict
from trainables.config import POOLINGS

#: The searched hyperparameters, in the order the method names them.
SEARCHED_PARAMS = ("layer", "clusters", "mask_ratio", "pooling")

T = TypeVar("T")


class Choice(Strict, Generic[T]):
    """``{choice: [v1, v2, ...]}``: one of the listed values (a categorical parameter)."""

    choice: list[T] = Field(min_length=1)

    @field_validator("choice")
    @classmethod
    def _distinct(cls, values: list[T]) -> list[T]:
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; list each value once")
        return values


class IntRange(Strict):
    """``{int: [low, high], log: false, step: 1}``: an integer in ``[low, high]`` (both included)."""

    bounds: tuple[int, int] = Field(alias="int")
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "IntRange":
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"int: [{low}, {high}] needs low < high; write a single value without a range")
        if self.log and self.step != 1:
            raise ValueError("log: true needs step: 1 (log-scaled integers take no step)")
        if self.log and low < 1:
            raise ValueError(f"log: true needs low >= 1, got {low}")
        if (high - low) % self.step:
            raise ValueError(f"step {self.step} does not divide high - low = {high - low}; choose a step that reaches high")
        return self

    def values(self) -> list[int]:
        return list(range(self.bounds[0], self.bounds[1] + 1, self.step))


class FloatRange(Strict):
    """``{float: [low, high], log: false}``: a real number in ``[low, high]``."""

    bounds: tuple[float, float] = Field(alias="float")
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "FloatRange":
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"float: [{low}, {high}] needs low < high; write a single value without a range")
        if self.log and low <= 0:
            raise ValueError(f"log: true needs low > 0, got {low}")
        return self


TAG_MODELS: dict[str, type[BaseModel]] = {"choice": Choice, "int": IntRange, "float": FloatRange}
PARAM_FORMS = {
    "fixed": "a fixed value",
    "choice": "{choice: [...]}",
    "int": "{int: [low, high], log: false, step: 1}",
    "float": "{float: [low, high], log: false}",
}
PARAM_TAGS = {"layer": ("fixed", "choice", "int"), "clusters": ("fixed", "choice", "int"), "mask_ratio": ("fixed", "choice", "float"), "pooling": ("fixed", "choice")}


def spec_tag(value: Any) -> str | None:
    """Which form a parameter is written in: fixed, choice, int or float (None: none of them)."""
    for tag, model in TAG_MODELS.items():
        if isinstance(value, model):
            return tag
    if isinstance(value, Mapping):
        present = [tag for tag in ("choice", "int", "float") if tag in value]
        return present[0] if len(present) == 1 else None
    if isinstance(value, (list, tuple, set)):
        return None
    return "fixed"


def _param_spec(fixed: type, *ranges: type) -> Any:
    members = [Annotated[fixed, Tag("fixed")], Annotated[Choice[fixed], Tag("choice")]]  # type: ignore[valid-type]
    members += [Annotated[r, Tag("int" if r is IntRange else "float")] for r in ranges]
    return Annotated[Union[tuple(members)], Discriminator(spec_tag, custom_error_type="param_spec", custom_error_message="not a parameter form")]


LayerSpec = _param_spec(int, IntRange)
ClustersSpec = _param_spec(int, IntRange)
MaskRatioSpec = _param_spec(float, FloatRange)
PoolingSpec = _param_spec(str)
ParamSpec = Union[int, float, str, Choice, IntRange, FloatRange]


def spec_values(spec: ParamSpec) -> list[Any] | None:
    """The values a fixed or choice parameter takes; None for a range."""
    if isinstance(spec, Choice):
        return list(spec.choice)
    if isinstance(spec, (IntRange, FloatRange)):
        return None
    return [spec]


def spec_extremes(spec: ParamSpec) -> list[Any]:
    """The values to check a parameter's rules on: every listed value, or a range's two ends."""
    values = spec_values(spec)
    return list(spec.bounds) if values is None else values  # type: ignore[union-attr]


def _require(spec: ParamSpec, ok, rule: str) -> ParamSpec:
    bad = [v for v in spec_extremes(spec) if not ok(v)]
    if bad:
        raise ValueError(f"{', '.join(repr(v) for v in bad)} not allowed: {rule}")
    return spec


class SearchSpace(Strict):
    """The four searched hyperparameters of the method; each fixed or searched."""

    layer: LayerSpec
    clusters: ClustersSpec
    mask_ratio: MaskRatioSpec
    pooling: PoolingSpec

    @field_validator("layer")
    @classmethod
    def _layer(cls, spec: ParamSpec) -> ParamSpec:
        return _require(spec, lambda v: v >= 0, "layer is a hidden_states index >= 0 (0 = CNN output, 1..N = transformer layers)")

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, spec: ParamSpec) -> ParamSpec:
        return _require(spec, lambda v: v >= 2, "clusters (k-means K) must be at least 2")

    @field_validator("mask_ratio")
    @classmethod
    def _mask_ratio(cls, spec: ParamSpec) -> ParamSpec:
        return _require(spec, lambda v: 0.0 < v < 1.0, "mask_ratio is a fraction of frames, strictly between 0 and 1")

    @field_validator("pooling")
    @classmethod
    def _pooling(cls, spec: ParamSpec) -> ParamSpec:
        return _require(spec, lambda v: v in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}")

    def params(self) -> dict[str, ParamSpec]:
        """``{name: spec}`` in :data:`SEARCHED_PARAMS` order."""
        return {name: getattr(self, name) for name in SEARCHED_PARAMS}

    def grid(self) -> dict[str, list[Any]] | None:
        """``{name: values}`` when every parameter is fixed or a choice; None when one is a range."""
        grid = {name: spec_values(spec) for name, spec in self.params().items()}
        return None if any(values is None for values in grid.values()) else grid  # type: ignore[return-value]

    def grid_size(self) -> int | None:
        """Number of grid points (product of the choices); None when a parameter is a range."""
        grid = self.grid()
        if grid is None:
            return None
        size = 1
        for values in grid.values():
            size *= len(values)
        return size

    def layers(self) -> list[int]:
        """Every layer the space can produce, sorted."""
        spec = self.layer
        return sorted(set(spec.values() if isinstance(spec, IntRange) else spec_values(spec)))  # type: ignore[arg-type]

    def max_clusters(self) -> int:
        return int(max(spec_extremes(self.clusters)))


class SearchSection(Strict):
    """How the space is searched: the algorithm, the budget, the concurrency and early stopping."""

    space: SearchSpace
    algorithm: Literal["tpe", "grid"] = "tpe"
    seed: int = Field(0, ge=0)
    num_trials: int | None = Field(None, ge=1)
    max_concurrent: int = Field(2, ge=1)
    early_stopping: Literal["none", "median"] = "none"
    grace_folds: int = Field(2, ge=1)
    min_trials: int = Field(3, ge=1)
    startup_trials: int = Field(10, ge=0)
    #: Run the next trial in a finished trial's actor (a new actor is a new process importing torch and Ray,
    #: seconds each). A reused actor's memory grows by 1-3 MiB per trial (bench/results/soak.md): turn this
    #: off for studies of many hundreds of trials.
    reuse_actors: bool = True

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _none_is_none(cls, value: Any) -> Any:
        return "none" if value is None or value is False else value

    @model_validator(mode="after")
    def _check(self) -> "SearchSection":
        if self.algorithm == "grid":
            for name, spec in self.space.params().items():
                if isinstance(spec, (IntRange, FloatRange)):
                    kind = "an int" if isinstance(spec, IntRange) else "a float"
                    raise Invalid(
                        f"space.{name}",
                        f"is {kind} range, but algorithm grid needs every parameter fixed or a choice: "
                        f"list its values as {{choice: [...]}} or use algorithm: tpe",
                    )
            size = self.space.grid_size()
            if self.num_trials is not None and size is not None and self.num_trials > size:
                raise Invalid("num_trials", f"{self.num_trials} is more than the {size} points of the grid; leave num_trials out to run every point once")
        elif self.num_trials is None:
            raise Invalid("num_trials", "is required with algorithm tpe: how many trials to run (e.g. 60)")
        return self

    def trial_count(self) -> int:
        """Trials the study runs: ``num_trials``, or for grid the whole grid by default."""
        if self.num_trials is not None:
            return self.num_trials
        return int(self.space.grid_size() or 0)
