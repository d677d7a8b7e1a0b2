"""The search space of a study file: the methods compared, and each parameter fixed, a choice, or a range.

``search.space.method`` names the study's methods (recipes, see
:mod:`trainables.recipes`): one, or ``{choice: [...]}``; default ``alignment``.
Every other key of ``search.space`` is a parameter of at least one of them,
written as a fixed value, ``{choice: [...]}``, ``{int: [low, high], log, step}``
or ``{float: [low, high], log}`` as its kind allows. A method samples only its
own parameters (those left out take the method's default), so two candidates
differ only where their method differs. ``search`` adds how the space is
searched (:class:`SearchSection`).
"""

from __future__ import annotations

import difflib
import itertools
from typing import TYPE_CHECKING, Annotated, Any, Generic, Iterator, Literal, Mapping, Sequence, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, TypeAdapter, ValidationError, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from study.config.base import Invalid, Strict
from trainables.recipes.base import FORMS
from trainables.recipes.registry import get_recipe, recipe_names

if TYPE_CHECKING:
    from trainables.data.manifest import Utterance

#: The parameter naming a study's methods.
METHOD = "method"
#: A grid point's index: the one parameter Optuna's grid sampler walks through (see study.tune.search).
CANDIDATE = "candidate"
DEFAULT_METHOD = "alignment"
#: Beyond this many values an integer range is checked at its ends only.
_ENUMERATE_INT_RANGE = 64

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


#: The spec of a parameter of each kind (see :data:`trainables.recipes.base.FORMS`).
SPEC_TYPES = {"int": _param_spec(int, IntRange), "float": _param_spec(float, FloatRange), "str": _param_spec(str)}
_SPEC_ADAPTERS = {kind: TypeAdapter(spec) for kind, spec in SPEC_TYPES.items()}
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


def _values(spec: ParamSpec) -> list[Any]:
    """The values to check rules and needs on: listed values, an integer range's every value (or its ends when long), a float range's ends."""
    if isinstance(spec, IntRange) and len(spec.values()) <= _ENUMERATE_INT_RANGE:
        return spec.values()
    return spec_extremes(spec)


def _relocated(error: Mapping[str, Any], loc: tuple[str, ...]) -> dict[str, Any]:
    """A parameter's validation error as a line of the space's own, at ``<loc>.<its loc>`` (its type and message kept)."""
    line = {"loc": (*loc, *error["loc"]), "input": error["input"]}
    try:
        ValidationError.from_exception_data("probe", [{"type": error["type"], **line, "ctx": error.get("ctx") or {}}])
        return {"type": error["type"], **line, "ctx": error.get("ctx") or {}}
    except KeyError:  # a custom error type (e.g. the parameter-form discriminator's): carried as such
        return {"type": PydanticCustomError(error["type"], error["msg"]), **line}


def param_forms(name: str, methods: list[str] | None = None) -> tuple[str, ...]:
    """The forms parameter ``name`` may take, from the first of ``methods`` (default: every known method) that has it."""
    for method in methods or recipe_names():
        param = get_recipe(method).params.get(name)
        if param is not None:
            return FORMS[param.kind]
    return ()


class SearchSpace(BaseModel):
    """The methods of the study (``method``) and their parameters, each fixed or searched."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    method: Annotated[Union[Annotated[str, Tag("fixed")], Annotated[Choice[str], Tag("choice")]], Discriminator(spec_tag)] = DEFAULT_METHOD

    _sections: dict[str, dict[str, ParamSpec]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _parameters(cls, data: Any, handler: Any) -> "SearchSpace":
        """Each parameter validated as its kind allows (errors at ``search.space.<name>``), and against every method that has it.

        A key named after a method is that method's own section (``search.space.gmp_tl: {mask_ratio: 0.3}``),
        whose parameters win over the shared ones for it. A shared parameter or a section of a known method that
        the study does not search is kept aside, not an error, so that ``--set search.space.method=...`` restricts a study.
        """
        if not isinstance(data, Mapping):
            return handler(data)
        space = handler({key: value for key, value in data.items() if key == METHOD})
        methods = space.methods()
        unknown = [m for m in methods if m not in recipe_names()]
        if unknown:
            raise Invalid(METHOD, f"unknown method {', '.join(map(repr, unknown))}; known methods: {', '.join(recipe_names())}")
        errors: list[dict[str, Any]] = []
        shared = {name: value for name, value in data.items() if name != METHOD and name not in recipe_names()}
        sections = {name: value for name, value in data.items() if name in recipe_names()}
        known = {p for m in recipe_names() for p in get_recipe(m).params}
        for name in shared:
            if name not in known:
                allowed = sorted({p for m in methods for p in get_recipe(m).params})
                close = difflib.get_close_matches(name, sorted(known), n=1)
                raise Invalid(name, f"unknown field {name!r}: no method has such a parameter; the parameters of this study's methods "
                                    f"({', '.join(methods)}): {', '.join(allowed) or 'none'}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        parsed = {name: cls._spec(name, value, [m for m in recipe_names() if name in get_recipe(m).params], errors, (name,)) for name, value in shared.items()}
        own: dict[str, dict[str, ParamSpec]] = {}
        for method, section in sections.items():
            if not isinstance(section, Mapping):
                raise Invalid(method, f"a method's section maps its parameters to their values, e.g. {{{next(iter(get_recipe(method).params), 'name')}: ...}}")
            for name, value in section.items():
                if name not in get_recipe(method).params:
                    raise Invalid(f"{method}.{name}", f"method {method} has no parameter {name!r}; its parameters: {', '.join(get_recipe(method).params) or 'none'}")
            own[method] = {name: cls._spec(name, value, [method], errors, (method, name)) for name, value in section.items()}
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        for name, spec in parsed.items():
            setattr(space, name, spec)
        space._sections = own
        return space

    @model_serializer(mode="wrap")
    def _with_sections(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        dump = lambda spec: spec.model_dump(mode="json", by_alias=True) if isinstance(spec, BaseModel) else spec  # noqa: E731
        return {**data, **{method: {name: dump(spec) for name, spec in section.items()} for method, section in self._sections.items()}}

    @staticmethod
    def _spec(name: str, value: Any, owners: list[str], errors: list[dict[str, Any]], loc: tuple[str, ...]) -> ParamSpec | None:
        """``value`` validated as the kind of parameter ``name`` of the methods ``owners``, and against each of their rules."""
        param = get_recipe(owners[0]).params[name]
        try:
            spec = _SPEC_ADAPTERS[param.kind].validate_python(value)
        except ValidationError as err:
            errors += [_relocated(e, loc) for e in err.errors()]
            return None
        for method in owners:
            bad = [problem for v in _values(spec) if (problem := get_recipe(method).params[name].problem(v))]
            if bad:
                raise Invalid(".".join(loc), bad[0])
        return spec

    def methods(self) -> list[str]:
        """The study's methods, in the order the file lists them."""
        return list(self.method.choice) if isinstance(self.method, Choice) else [self.method]

    def params(self) -> dict[str, ParamSpec]:
        """Every shared parameter written in the space, by name."""
        return {name: spec for name, spec in (self.__pydantic_extra__ or {}).items() if name not in recipe_names()}

    def ignored(self) -> list[str]:
        """Parameters and sections the space writes for methods the study does not search (what ``--set search.space.method`` set aside)."""
        methods = self.methods()
        shared = [name for name in self.params() if not any(name in get_recipe(m).params for m in methods)]
        return shared + [name for name in self._sections if name not in methods]

    def method_params(self, method: str) -> dict[str, ParamSpec]:
        """The parameters of ``method``: its own section's, else the shared ones, else fixed at the method's default."""
        written = {**self.params(), **self._sections.get(method, {})}
        return {name: written.get(name, param.default) for name, param in get_recipe(method).params.items()}

    def grid(self, method: str) -> dict[str, list[Any]] | None:
        """``{name: values}`` of ``method`` when every parameter of it is fixed or a choice; None when one is a range."""
        grid = {name: spec_values(spec) for name, spec in self.method_params(method).items()}
        return None if any(values is None for values in grid.values()) else grid  # type: ignore[return-value]

    def candidates(self) -> list[dict[str, Any]]:
        """Every point of the grid, each ``{"method": ..., <its parameters>}``: the methods' grids one after the other."""
        points = []
        for method in self.methods():
            grid = self.grid(method)
            if grid is None:
                raise ValueError(f"method {method} has a range among its parameters: it has no grid")
            points += [{METHOD: method, **dict(zip(grid, values))} for values in itertools.product(*grid.values())]
        return points

    def grid_size(self) -> int | None:
        """Number of grid points (the sum over methods of the product of their choices); None when a parameter is a range."""
        sizes = []
        for method in self.methods():
            grid = self.grid(method)
            if grid is None:
                return None
            size = 1
            for values in grid.values():
                size *= len(values)
            sizes.append(size)
        return sum(sizes)

    def _combinations(self, method: str) -> Iterator[dict[str, Any]]:
        params = {name: _values(spec) if isinstance(spec, (Choice, IntRange, FloatRange)) else [spec] for name, spec in self.method_params(method).items()}
        for values in itertools.product(*params.values()):
            yield dict(zip(params, values))

    def layers(self) -> list[int]:
        """Every encoder layer a candidate of the space can read, sorted."""
        return sorted({layer for method in self.methods() for combo in self._combinations(method) for layer in get_recipe(method).layers(combo)})

    def data_problems(self, utterances: Sequence[Utterance]) -> list[tuple[str, str]]:
        """``(parameter, problem)`` of the candidates whose method cannot run on ``utterances``, each once."""
        problems: list[tuple[str, str]] = []
        for method in self.methods():
            recipe = get_recipe(method)
            for combo in self._combinations(method):
                problems += [p for p in recipe.data_problems(recipe.resolve(combo), utterances) if p not in problems]
        return problems

    def max_clusters(self) -> int:
        """The largest k-means K a candidate of the space can fit (0 when no method clusters)."""
        return max((get_recipe(method).max_clusters(combo) for method in self.methods() for combo in self._combinations(method)), default=0)


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
                if isinstance(spec, (IntRange, FloatRange)) and any(name in get_recipe(m).params for m in self.space.methods()):
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
