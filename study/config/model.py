"""The study file's schema: pydantic models of every section, their checks against the data and the encoder.

The file format is described in :mod:`study.config`; reading a file and
turning validation errors into messages is :mod:`study.config.loading`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import typing
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, Mapping, Sequence, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from study.errors import UserError
from study.mlflow_store import sqlite_uri
from trainables.data.folds import FoldError, Validation, build_fold
from trainables.data.labels import LABEL_SETS
from trainables.data.manifest import ManifestError, Utterance, fingerprint, read_manifest
from trainables.models.encoder import EncoderError, EncoderInfo, read_encoder_info
from trainables.models.pooling import POOLINGS
from trainables.phases.artifacts import PHASE_CODE_VERSION
from trainables.phases.classifier import ClassifierConfig
from trainables.phases.cpt import CptConfig
from trainables.phases.settings import UNSUPERVISED_AUDIO, KMeansSettings, PhaseSettings, Protocol, smoke_settings
from trainables.ray_train import RayResources

logger = logging.getLogger(__name__)

#: The fixed phase settings a study starts from (``phases.preset``).
PRESETS = {"hubert": PhaseSettings, "smoke": smoke_settings}
#: The searched hyperparameters, in the order the method names them.
SEARCHED_PARAMS = ("layer", "clusters", "mask_ratio", "pooling")
#: What a trial reports at its end and a study may optimise (fold means).
OBJECTIVE_METRICS = ("val_ua_mean", "val_wa_mean", "test_ua_mean", "test_wa_mean", "test_macro_f1_mean")
#: Beyond this many clusters a study is far outside the method's range (the paper: 50-150).
SANE_MAX_CLUSTERS = 1000
#: Fewer fit frames per cluster than this gives noisy centroids.
MIN_FRAMES_PER_CLUSTER = 20
#: The file of the resolved study inside a study directory (study.paths.study_file).
RESOLVED_STUDY_FILE = "study.yaml"

_PATH_PREFIXES = ("/", "./", "../", "~")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StudyConfigError(UserError):
    """A study file (or ``--set`` override) that cannot be used; the message says where and how to fix it."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        super().__init__(message)
        self.source = source
        self.field = field


class Invalid(ValueError):
    """A problem found by a model validator at ``field`` (dotted, relative to the model validated)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class _Strict(BaseModel):
    """Base of every section: unknown keys are errors; numbers are accepted where text is expected."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


# ----------------------------------------------------------------------------
# Search space parameters
# ----------------------------------------------------------------------------

T = TypeVar("T")


class Choice(_Strict, Generic[T]):
    """``{choice: [v1, v2, ...]}``: one of the listed values (a categorical parameter)."""

    choice: list[T] = Field(min_length=1)

    @field_validator("choice")
    @classmethod
    def _distinct(cls, values: list[T]) -> list[T]:
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; list each value once")
        return values


class IntRange(_Strict):
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


class FloatRange(_Strict):
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


class SearchSpace(_Strict):
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


class SearchSettings(_Strict):
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
    def _check(self) -> "SearchSettings":
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


# ----------------------------------------------------------------------------
# Fixed settings: phases, protocol, objective, resources, storage
# ----------------------------------------------------------------------------


class _Override(_Strict):
    """Base of the generated phase-override sections: only the fields written in the file count."""

    @model_serializer(mode="wrap")
    def _only_set(self, handler):
        data = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}


def _dataclass_model(cls: type, name: str, override: bool) -> type[BaseModel]:
    """A pydantic section with the fields of dataclass ``cls``.

    ``override``: every field optional, applied only where written (nested
    dataclasses become nested overrides); else the dataclass defaults.
    """
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            hint = _dataclass_model(hint, f"{name}_{item.name}", override)
        if override:
            fields[item.name] = (hint, None)  # the default is never validated; an explicit null must fit the type
        elif item.default is not dataclasses.MISSING:
            fields[item.name] = (hint, item.default)
        else:
            fields[item.name] = (hint, Field(default_factory=item.default_factory))  # type: ignore[arg-type]
    doc = f"{'Overrides of' if override else 'The fields of'} {cls.__name__}."
    return create_model(name, __base__=_Override if override else _Strict, __doc__=doc, __module__=__name__, **fields)


ClassifierOverride = _dataclass_model(ClassifierConfig, "ClassifierOverride", override=True)
CptOverride = _dataclass_model(CptConfig, "CptOverride", override=True)
KMeansOverride = _dataclass_model(KMeansSettings, "KMeansOverride", override=True)
RayTrainSettings = _dataclass_model(RayResources, "RayTrainSettings", override=False)


def _apply(base: Any, override: BaseModel | None) -> Any:
    """``base`` (a dataclass) with the fields set in ``override`` replaced, recursively."""
    if override is None:
        return base
    changes = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        changes[name] = _apply(getattr(base, name), value) if isinstance(value, BaseModel) else value
    return replace(base, **changes)


_PHASE_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)+)(?::\s*|\s+)(.*)$", re.DOTALL)


def _phase_problem(message: str) -> Invalid:
    """A phase dataclass's ``ValueError`` as a problem at its dotted field under ``phases``."""
    match = _PHASE_FIELD.match(message)
    if not match:
        return Invalid("phases", message)
    field, problem = match.groups()
    for prefix, target in (("phases.", ""), ("kmeans.", "kmeans."), ("KMeansConfig.", "kmeans.")):
        if field.startswith(prefix):
            return Invalid(f"phases.{target}{field[len(prefix):]}", problem)
    return Invalid("phases", message)


class PhasesSettings(_Strict):
    """The fixed settings of the five phases: a preset plus overrides."""

    preset: Literal["hubert", "smoke"] = "hubert"
    epochs: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    tapt: ClassifierOverride | None = None  # type: ignore[valid-type]
    cpt: CptOverride | None = None  # type: ignore[valid-type]
    finetune: ClassifierOverride | None = None  # type: ignore[valid-type]
    kmeans: KMeansOverride | None = None  # type: ignore[valid-type]
    embed_max_batch_seconds: float | None = Field(None, gt=0)

    def build(self) -> PhaseSettings:
        """The preset with ``epochs``/``seed`` and then each phase's overrides applied (not yet validated)."""
        settings = PRESETS[self.preset]()
        common = {k: v for k, v in (("epochs", self.epochs), ("seed", self.seed)) if v is not None}

        def phase(cfg: Any, override: BaseModel | None) -> Any:
            if common:
                cfg = replace(cfg, train=replace(cfg.train, **common))
            return _apply(cfg, override)

        settings = replace(
            settings,
            tapt=phase(settings.tapt, self.tapt),
            cpt=phase(settings.cpt, self.cpt),
            finetune=phase(settings.finetune, self.finetune),
            kmeans=_apply(settings.kmeans, self.kmeans),
        )
        if self.embed_max_batch_seconds is not None:
            settings = replace(settings, embed_max_batch_seconds=self.embed_max_batch_seconds)
        return settings

    def phase_settings(self, max_clusters: int | None = None) -> PhaseSettings:
        """The validated :class:`PhaseSettings`; raises :class:`Invalid` naming the ``phases.*`` field."""
        settings = self.build()
        try:
            settings.validate()
        except ValueError as err:
            raise _phase_problem(str(err)) from None
        if max_clusters is not None and settings.kmeans.max_fit_frames < max_clusters:
            raise Invalid(
                "phases.kmeans.max_fit_frames",
                f"{settings.kmeans.max_fit_frames} is below the largest K of search.space.clusters ({max_clusters}): "
                f"k-means needs at least one fit frame per cluster; raise max_fit_frames or lower K",
            )
        if settings.embed_max_batch_seconds <= 0:
            raise Invalid("phases.embed_max_batch_seconds", "must be positive")
        return settings


class ProtocolSettings(_Strict):
    """How folds are split and which audio the unsupervised phases may see (:class:`Protocol`)."""

    validation: Validation = Validation.STRATIFIED
    val_fraction: float = Field(0.1, gt=0, lt=1)
    val_speaker: str | None = None
    unsupervised_audio: Literal[UNSUPERVISED_AUDIO] = "train"  # type: ignore[valid-type]
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "ProtocolSettings":
        if self.validation is Validation.TEST_SESSION_SPEAKER and self.val_speaker not in (None, "F", "M"):
            raise Invalid("val_speaker", f"with validation test_session_speaker it is the gender of the validating speaker, F or M (or null), got {self.val_speaker!r}")
        return self

    def protocol(self) -> Protocol:
        return Protocol(
            validation=self.validation,
            val_fraction=self.val_fraction,
            val_speaker=self.val_speaker,
            unsupervised_audio=self.unsupervised_audio,
            seed=self.seed,
        )


class ObjectiveSettings(_Strict):
    """What the search optimises: a fold-mean metric each trial reports at its end."""

    metric: Literal[OBJECTIVE_METRICS] = "val_ua_mean"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"


class ResourceSettings(_Strict):
    """Where the phases run and what each fold (and each Ray Train job) reserves."""

    executor: Literal["local", "ray"] = "local"
    cpus_per_fold: float = Field(1.0, gt=0)
    gpus_per_fold: float = Field(0.0, ge=0)
    train: RayTrainSettings = Field(default_factory=RayTrainSettings)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> "ResourceSettings":
        try:
            self.ray_resources()
        except ValueError as err:
            match = re.match(r"^resources\.(\w+)\s*(.*)$", str(err))
            raise (Invalid(f"train.{match.group(1)}", match.group(2)) if match else Invalid("train", str(err))) from None
        return self

    def ray_resources(self) -> RayResources:
        """The ``train`` block as :class:`RayResources` (validated)."""
        resources = RayResources(**self.train.model_dump())
        resources.validate()
        return resources


def is_uri(text: str) -> bool:
    return bool(_URI.match(text))


def _local_path(text: str) -> str:
    return os.path.abspath(os.path.expanduser(text))


class StorageSettings(_Strict):
    """Where the study lives: its directory (local or ``s3://``) and its MLflow store."""

    study_dir: str
    mlflow_uri: str | None = None
    #: A phase cache shared by several studies (local directory or URI); default: <study_dir>/cache.
    cache_dir: str | None = None

    @field_validator("study_dir", "cache_dir")
    @classmethod
    def _study_dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty; give a local directory or s3://bucket/prefix")
        return value.rstrip("/") if is_uri(value) else _local_path(value)

    @model_validator(mode="after")
    def _mlflow(self) -> "StorageSettings":
        uri = self.mlflow_uri
        if uri:
            if uri.startswith("file:"):
                raise Invalid("mlflow_uri", f"{uri!r}: MLflow 3 has no file store; give a local directory or .db file (a SQLite store), or a server URI")
            if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):  # a local directory or .db file: SQLite
                self.mlflow_uri = sqlite_uri(uri)
        elif is_uri(self.study_dir):
            raise Invalid(
                "mlflow_uri",
                f"is required when study_dir is on object storage ({self.study_dir}): give the MLflow server, "
                f"e.g. http://127.0.0.1:5000 on the head node",
            )
        else:
            self.mlflow_uri = sqlite_uri(self.study_dir)
        return self

    @property
    def is_remote(self) -> bool:
        return is_uri(self.study_dir)


class DataSettings(_Strict):
    """The corpus: a manifest CSV from ``ser-study prepare``."""

    manifest: str

    @field_validator("manifest")
    @classmethod
    def _manifest(cls, value: str) -> str:
        if is_uri(value):
            raise ValueError(f"{value!r}: the manifest must be a local file (on a cluster: a path every node sees)")
        if not value.strip():
            raise ValueError("must not be empty; give the manifest CSV from `ser-study prepare`")
        return _local_path(value)


# ----------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyInputs:
    """What :meth:`StudyConfig.check_inputs` read and checked."""

    utterances: list[Utterance]
    folds: list[int]
    encoder: EncoderInfo
    fit_frames: dict[int, int]  # test session -> encoder frames of its unsupervised audio


class StudyConfig(_Strict):
    """A whole study file, validated. Sections as in the module docstring."""

    name: str
    data: DataSettings
    encoder: str
    protocol_spec: ProtocolSettings = Field(default_factory=ProtocolSettings, alias="protocol")
    folds: list[int] | Literal["all"] = "all"
    phases: PhasesSettings = Field(default_factory=PhasesSettings)
    search: SearchSettings
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    storage: StorageSettings

    _source: str = PrivateAttr(default="<study config>")

    @model_validator(mode="before")
    @classmethod
    def _default_study_dir(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("name"), str):
            storage = data.get("storage")
            if storage is None:
                storage = {}
            if isinstance(storage, Mapping) and storage.get("study_dir") is None:
                data = {**data, "storage": {**storage, "study_dir": f"studies/{data['name']}"}}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must be letters, digits, '.', '_' or '-' (it names the MLflow experiment and the study directory)")
        return value

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; give a local encoder directory or a hub id such as facebook/hubert-base-ls960")
        if value.startswith(_PATH_PREFIXES) or Path(os.path.expanduser(value)).exists():
            return _local_path(value)
        return value

    @field_validator("folds", mode="before")
    @classmethod
    def _folds(cls, value: Any) -> Any:
        if value is None or value == "all":
            return "all"
        if isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", value):
            value = [int(v) for v in value.split(",")]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be 'all' or a non-empty list of test sessions such as [1, 2], got {value!r}")
        bad = [v for v in value if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad:
            raise ValueError(f"{bad} are not session numbers; list test sessions as integers >= 1, e.g. [1, 2, 3, 4, 5]")
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a session twice")
        return sorted(value)

    @model_validator(mode="after")
    def _cross_check(self) -> "StudyConfig":
        settings = self.phases.phase_settings(self.search.space.max_clusters())
        if settings.kmeans.backend == "cuml":
            if self.resources.executor == "local" and self.resources.gpus_per_fold <= 0:
                raise Invalid("phases.kmeans.backend", "cuml needs a GPU, but executor local with gpus_per_fold 0 runs k-means on CPU: set resources.gpus_per_fold (e.g. 1) or backend sklearn")
            if self.resources.executor == "ray" and self.resources.train.kmeans_gpus <= 0:
                raise Invalid("resources.train.kmeans_gpus", "must be > 0 (e.g. 1) with phases.kmeans.backend cuml, which runs on a GPU; or use backend sklearn")
        return self

    # -- what the rest of the study reads ---------------------------------

    @property
    def source(self) -> str:
        """The file this config was loaded from (for messages)."""
        return self._source

    def protocol(self) -> Protocol:
        """The trainables :class:`Protocol` of the ``protocol`` section."""
        return self.protocol_spec.protocol()

    def phase_settings(self) -> PhaseSettings:
        """The validated fixed settings of the five phases."""
        try:
            return self.phases.phase_settings(self.search.space.max_clusters())
        except Invalid as err:
            raise self.error(err.field, err.problem) from None

    def ray_resources(self) -> RayResources:
        """The ``resources.train`` block as :class:`RayResources`."""
        return self.resources.ray_resources()

    def num_trials(self) -> int:
        """How many trials Tune runs (``num_samples``)."""
        return self.search.trial_count()

    def tracking_uri(self) -> str:
        """The MLflow tracking URI (``storage.mlflow_uri``, resolved)."""
        if not self.storage.mlflow_uri:
            raise self.error("storage.mlflow_uri", "is not set; give the MLflow server URI")
        return self.storage.mlflow_uri

    def embedding_layers(self) -> list[int]:
        """Every layer the search space can produce: one embedding pass per fold serves all candidates."""
        return self.search.space.layers()

    def fold_sessions(self, utterances: Sequence[Utterance]) -> list[int]:
        """The test sessions of the study's folds; raises if one has no utterances."""
        sessions = sorted({u.session for u in utterances})
        if len(sessions) < 2:
            raise self.error("data.manifest", f"{self.data.manifest} holds {len(sessions)} session(s) {sessions}; leave-one-session-out needs at least two")
        if self.folds == "all":
            return sessions
        missing = [s for s in self.folds if s not in sessions]
        if missing:
            raise self.error("folds", f"test sessions {missing} have no utterances in {self.data.manifest}; sessions present: {sessions} (or write folds: all)")
        return list(self.folds)

    def classes(self, utterances: Sequence[Utterance]) -> tuple[str, ...]:
        """The class order of the label set the manifest was prepared with."""
        labels = {u.label for u in utterances}
        for label_set in LABEL_SETS.values():
            if labels <= set(label_set.classes):
                return tuple(label_set.classes)
        return tuple(sorted(labels))

    def report_metadata(self, utterances: Sequence[Utterance]) -> dict[str, Any]:
        """The study metadata of the report (see :mod:`study.report`)."""
        protocol = self.protocol()
        return {
            "name": self.name,
            "study_dir": self.storage.study_dir,
            "objective": {"metric": self.objective.metric, "mode": self.objective.mode},
            "protocol": {"strict": protocol.strict, "description": protocol.describe(), **self.protocol_spec.model_dump(mode="json")},
            "data_fingerprint": fingerprint(u.utt_id for u in utterances),
            "code_version": code_version(),
            "encoder": self.encoder,
            "preset": self.phases.preset,
            "algorithm": self.search.algorithm,
            "test_sessions": self.fold_sessions(utterances),
        }

    def tracking_tags(self, utterances: Sequence[Utterance]) -> dict[str, str]:
        """MLflow tags of every trial run."""
        protocol = self.protocol()
        return {
            "ser_study.study": self.name,
            "strict": str(protocol.strict).lower(),
            "protocol": protocol.describe(),
            "data_fingerprint": fingerprint(u.utt_id for u in utterances),
            "code_version": code_version(),
            "encoder": self.encoder,
            "preset": self.phases.preset,
        }

    def advice(self) -> list[str]:
        """Legal but questionable choices, for the loader to log as warnings."""
        notes = []
        protocol = self.protocol()
        if not protocol.strict:
            notes.append(f"protocol is {protocol.describe()}; every report flags it")
        if self.objective.metric.startswith("test_"):
            notes.append(f"objective.metric {self.objective.metric} selects on the test sessions: the reported test scores are then optimistic; val_ua_mean is the strict choice")
        size = self.search.space.grid_size()
        if self.search.algorithm == "grid" and size and self.num_trials() < size:
            notes.append(f"search.num_trials {self.num_trials()} runs a seeded random subset of the {size} grid points")
        if self.search.algorithm == "tpe" and size and self.num_trials() > size:
            notes.append(f"search.num_trials {self.num_trials()} exceeds the {size} distinct candidates of a fully discrete space: TPE will repeat some; algorithm grid runs each once")
        if self.search.early_stopping == "median" and self.search.min_trials >= self.num_trials():
            notes.append(f"search.early_stopping median never stops a trial: min_trials {self.search.min_trials} >= num_trials {self.num_trials()}")
        if self.resources.executor == "ray" and self.resources.gpus_per_fold > 0:
            notes.append("resources.gpus_per_fold is unused with executor ray: the phases reserve GPUs through resources.train")
        return notes

    def check_inputs(self) -> StudyInputs:
        """Read what the study will use and check it, before Ray starts.

        The manifest (``data.manifest``), the folds (present, splittable under
        the protocol), the encoder config (``encoder``), every layer the space
        can produce against the encoder's depth (``search.space.layer``) and the
        largest K against the frames k-means will see (``search.space.clusters``).
        """
        try:
            utterances = read_manifest(self.data.manifest)
        except ManifestError as err:
            raise self.error("data.manifest", f"{err}; set data.manifest in the study file or --set data.manifest=PATH") from None
        folds = self.fold_sessions(utterances)
        protocol = self.protocol()
        built = {}
        for session in folds:
            try:
                built[session] = build_fold(utterances, protocol.fold_spec(session))
            except FoldError as err:
                raise self.error("protocol", f"fold {session}: {err}") from None
        try:
            info = read_encoder_info(self.encoder)
        except EncoderError as err:
            raise self.error("encoder", str(err)) from None
        for layer in sorted({min(self.embedding_layers()), max(self.embedding_layers())}):
            try:
                info.check_layer(layer, "search.space.layer")
            except EncoderError as err:
                raise self.error("search.space.layer", str(err)) from None
        fit_frames = self._fit_frames(utterances, built, info)
        self._check_clusters(fit_frames)
        return StudyInputs(utterances=utterances, folds=folds, encoder=info, fit_frames=fit_frames)

    def _fit_frames(self, utterances: Sequence[Utterance], built: Mapping[int, Any], info: EncoderInfo) -> dict[int, int]:
        import torch

        samples = torch.tensor([int(u.duration_s * info.sample_rate) for u in utterances])
        frames = dict(zip((u.utt_id for u in utterances), info.frame_lengths(samples).tolist()))
        with_test = self.protocol_spec.unsupervised_audio == "train+test"
        result = {}
        for session, fold in built.items():
            ids = list(fold.train.utt_ids) + list(fold.val.utt_ids) + (list(fold.test.utt_ids) if with_test else [])
            result[session] = int(sum(frames[i] for i in ids))
        return result

    def _check_clusters(self, fit_frames: Mapping[int, int]) -> None:
        clusters = self.search.space.max_clusters()
        session, frames = min(fit_frames.items(), key=lambda item: item[1])
        sample = min(frames, self.phase_settings().kmeans.max_fit_frames)
        if clusters > frames:
            raise self.error("search.space.clusters", f"K={clusters} exceeds the {frames} frames k-means sees in fold {session}: it needs at least one frame per cluster; lower K or use more data")
        if clusters > SANE_MAX_CLUSTERS:
            logger.warning("%s: search.space.clusters reaches K=%d, far beyond the method's range (50-150 in the paper)", self.source, clusters)
        if sample < MIN_FRAMES_PER_CLUSTER * clusters:
            logger.warning("%s: K=%d leaves %.1f fit frames per cluster in fold %d (fewer than %d): the centroids will be noisy", self.source, clusters, sample / clusters, session, MIN_FRAMES_PER_CLUSTER)

    def error(self, field: str, problem: str) -> StudyConfigError:
        """A :class:`StudyConfigError` about ``field`` of this config's file."""
        return StudyConfigError(f"{self.source}: {field}: {problem}", source=self.source, field=field)

    def to_yaml(self) -> str:
        """The resolved config (defaults filled in, paths absolute) as YAML that :func:`parse_study` reads back."""
        header = f"# Resolved study config (from {self.source}); ser-study resume reads this file.\n"
        return header + yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False, default_flow_style=None, width=120)


def code_version() -> str:
    """The package version and the phase code versions (part of every phase cache key)."""
    try:
        version = metadata.version("ser-study")
    except metadata.PackageNotFoundError:
        version = "unknown"
    phases = " ".join(f"{phase}={number}" for phase, number in PHASE_CODE_VERSION.items())
    return f"ser-study {version} (phases {phases})"
