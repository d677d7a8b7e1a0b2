"""The fixed sections of a study file: data, phases, protocol, objective, resources, storage.

Phase settings and Ray resources are the trainables' own dataclasses
(:mod:`trainables.config`), validated here directly: a ``phases:`` section
starts from its preset and every field written in the file replaces the
preset's (:class:`PhasesSection`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from typing import Any, Literal, Mapping

from pydantic import Field, PrivateAttr, field_validator, model_serializer, model_validator

from study.config.base import Invalid, Strict
from study.io import layout, storage
from trainables.config import PRESETS, ClassifierConfig, CptConfig, KMeansSettings, PhaseSettings, RayResources, TaptConfig
from trainables.data.folds import UNSUPERVISED_AUDIO, FoldProtocol, Validation

#: What a trial reports at its end and a study may optimise (fold means).
OBJECTIVE_METRICS = ("val_ua_mean", "val_wa_mean", "test_ua_mean", "test_wa_mean", "test_macro_f1_mean")
#: The phase settings a ``phases:`` section may set, beside ``preset``, ``epochs`` and ``seed``.
PHASE_FIELDS = tuple(f.name for f in dataclasses.fields(PhaseSettings))


def _merged(base: Any, written: Any) -> Any:
    """``base`` (a dataclass, as a dict) with what the file wrote over it, recursively."""
    if dataclasses.is_dataclass(base):
        base = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    if isinstance(base, dict) and isinstance(written, Mapping):
        return {**base, **{key: _merged(base.get(key), value) if key in base else value for key, value in written.items()}}
    return written


def _jsonable(value: Any) -> Any:
    """A written override as YAML can hold it (dataclasses, from a :class:`PhasesSection` built in code, as dicts)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


class PhasesSection(Strict):
    """The fixed settings of the phases: a preset, then what the file writes over it.

    ``epochs`` and ``seed`` set every training phase's ``train.epochs`` and
    ``train.seed`` at once; a phase's own ``train`` field wins over them.
    """

    preset: Literal[tuple(PRESETS)] = "hubert"  # type: ignore[valid-type]
    epochs: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    tapt: TaptConfig
    cpt: CptConfig
    finetune: ClassifierConfig
    kmeans: KMeansSettings
    embed_max_batch_seconds: float = Field(gt=0)

    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _start_from_preset(cls, data: Any, handler: Any) -> "PhasesSection":
        if data is None:
            data = {}
        if isinstance(data, PhasesSection) or not isinstance(data, Mapping):
            return handler(data)
        preset = data.get("preset", "hubert")
        settings = PRESETS[preset]() if preset in PRESETS else PRESETS["hubert"]()  # an unknown preset: the field's error says so
        common = {key: data[key] for key in ("epochs", "seed") if isinstance(data.get(key), int) and not isinstance(data.get(key), bool)}
        try:
            settings = settings.with_training(**common)
        except ValueError:
            pass  # epochs/seed are checked as fields
        merged = dict(data)
        for name in PHASE_FIELDS:
            merged[name] = _merged(getattr(settings, name), data[name]) if name in data else getattr(settings, name)
        section = handler(merged)
        section._written = {name: copy.deepcopy(data[name]) for name in PHASE_FIELDS if name in data}
        return section

    @model_serializer(mode="wrap")
    def _only_written(self, handler: Any) -> dict[str, Any]:
        """The preset, the shortcuts and only the phase fields the file wrote: the preset fills in the rest when read back."""
        data = handler(self)
        return {key: value for key, value in data.items() if key not in PHASE_FIELDS or key in self._written} | {
            name: _jsonable(self._written[name]) for name in self._written
        }

    def settings(self) -> PhaseSettings:
        """The phase settings as the trainables read them."""
        return PhaseSettings(**{name: getattr(self, name) for name in PHASE_FIELDS})


class ProtocolSection(Strict):
    """How folds are split and which audio the unsupervised phases may see (:class:`FoldProtocol`)."""

    validation: Validation = Validation.SPEAKERS
    val_fraction: float = Field(0.1, gt=0, lt=1)
    val_speaker: str | None = None
    unsupervised_audio: Literal[UNSUPERVISED_AUDIO] = "train"  # type: ignore[valid-type]
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "ProtocolSection":
        if self.validation is Validation.TEST_SESSION_SPEAKER and self.val_speaker not in (None, "F", "M"):
            raise Invalid("val_speaker", f"with validation test_session_speaker it is the gender of the validating speaker, F or M (or null), got {self.val_speaker!r}")
        return self

    def protocol(self) -> FoldProtocol:
        return FoldProtocol(
            validation=self.validation,
            val_fraction=self.val_fraction,
            val_speaker=self.val_speaker,
            unsupervised_audio=self.unsupervised_audio,
            seed=self.seed,
        )


class RepeatsSection(Strict):
    """``study.seeds``: every fold is trained once per seed (the split stays the same); means, stds and intervals use every seed."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"{seeds}: list distinct seeds >= 0, e.g. [0, 1, 2]")
        return seeds


class ObjectiveSection(Strict):
    """What the search optimises: a fold-mean metric each trial reports at its end."""

    metric: Literal[OBJECTIVE_METRICS] = "val_ua_mean"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"


class ResourcesSection(Strict):
    """Where the phases run and what each fold (and each Ray Train job) reserves."""

    executor: Literal["local", "ray"] = "local"
    cpus_per_fold: float = Field(1.0, gt=0)
    gpus_per_fold: float = Field(0.0, ge=0)
    train: RayResources = Field(default_factory=RayResources)
    #: On a cluster joined with --address where no node can run a fold yet: how long to wait for one (an autoscaler
    #: starting a GPU node takes minutes) before failing with what is missing.
    node_wait_s: float = Field(900.0, ge=0)


def _local_path(text: str) -> str:
    return os.path.abspath(os.path.expanduser(text))


class StorageSection(Strict):
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
        return value.rstrip("/") if storage.is_uri(value) else _local_path(value)

    @model_validator(mode="after")
    def _mlflow(self) -> "StorageSection":
        uri = self.mlflow_uri
        if uri:
            if uri.startswith("file:"):
                raise Invalid("mlflow_uri", f"{uri!r}: MLflow 3 has no file store; give a local directory or .db file (a SQLite store), or a server URI")
            if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):  # a local directory or .db file: SQLite
                self.mlflow_uri = layout.sqlite_uri(uri)
        elif storage.is_uri(self.study_dir):
            raise Invalid(
                "mlflow_uri",
                f"is required when study_dir is on object storage ({self.study_dir}): give the MLflow server, "
                f"e.g. http://127.0.0.1:5000 on the head node",
            )
        else:
            self.mlflow_uri = layout.sqlite_uri(self.study_dir)
        return self

    @property
    def is_remote(self) -> bool:
        return storage.is_uri(self.study_dir)


class DataSection(Strict):
    """The corpus: a manifest CSV from ``ser-study prepare``."""

    manifest: str

    @field_validator("manifest")
    @classmethod
    def _manifest(cls, value: str) -> str:
        if storage.is_uri(value):
            raise ValueError(f"{value!r}: the manifest must be a local file (on a cluster: a path every node sees)")
        if not value.strip():
            raise ValueError("must not be empty; give the manifest CSV from `ser-study prepare`")
        return _local_path(value)

