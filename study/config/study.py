"""A whole study file, validated: :class:`StudyConfig`, and its checks against the data and the encoder.

The file format is described in :mod:`study.config.loading`, which reads a file
into a :class:`StudyConfig`; sections are in :mod:`study.config.sections` and
the search space in :mod:`study.config.space`. Checking the manifest and the
encoder (:meth:`StudyConfig.check_inputs`) reads the encoder's config with
transformers, imported only then.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from study.config.base import Invalid, Strict, StudyConfigError
from study.config.sections import DataSection, ObjectiveSection, PhasesSection, ProtocolSection, RepeatsSection, ResourcesSection, StorageSection
from study.config.space import SearchSection
from trainables.recipes.registry import BASELINES, get_recipe, load_plugins
from trainables.config import PhaseSettings, RayResources
from trainables.data.folds import FoldError, FoldProtocol, build_fold
from trainables.data.labels import classes_of
from trainables.data.manifest import ManifestError, Utterance, fingerprint, read_manifest
from trainables.phases.kinds import PHASE_KINDS

if TYPE_CHECKING:
    from trainables.models.encoder import EncoderInfo

logger = logging.getLogger(__name__)

#: Beyond this many clusters a study is far outside the method's range (the paper: 50-150).
SANE_MAX_CLUSTERS = 1000
#: Fewer fit frames per cluster than this gives noisy centroids.
MIN_FRAMES_PER_CLUSTER = 20

_PATH_PREFIXES = ("/", "./", "../", "~")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _local_path(text: str) -> str:
    return os.path.abspath(os.path.expanduser(text))


@dataclass(frozen=True)
class StudyInputs:
    """What :meth:`StudyConfig.check_inputs` read and checked."""

    utterances: list[Utterance]
    folds: list[int]
    encoder: "EncoderInfo"
    fit_frames: dict[int, int]  # test session -> encoder frames of its unsupervised audio


#: A HuggingFace hub model id: ``name`` or ``org/name`` (a local path is absolute by then).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class StudyConfig(Strict):
    """A whole study file, validated. Sections as in :mod:`study.config.loading`."""

    plugins: list[str] = Field(default_factory=list)
    name: str
    data: DataSection
    encoder: str
    #: The commit of a hub ``encoder`` (None: resolved to the current commit when the study starts, then kept in the
    #: study directory's study.yaml); part of every cache key, so a changed hub repo never reuses stale artifacts.
    encoder_revision: str | None = None
    protocol_spec: ProtocolSection = Field(default_factory=ProtocolSection, alias="protocol")
    folds: list[int] | Literal["all"] = "all"
    phases: PhasesSection = Field(default_factory=PhasesSection)
    search: SearchSection
    baselines: list[str] = Field(default_factory=list)
    study: RepeatsSection = Field(default_factory=RepeatsSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    storage: StorageSection

    _source: str = PrivateAttr(default="<study config>")

    @model_validator(mode="before")
    @classmethod
    def _load_plugins(cls, data: Any) -> Any:
        """Plugin modules register their recipes before the search space is checked against them."""
        if isinstance(data, Mapping) and isinstance(data.get("plugins"), list) and all(isinstance(m, str) for m in data["plugins"]):
            try:
                load_plugins(data["plugins"])
            except ImportError as err:
                raise Invalid("plugins", str(err)) from None
        return data

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {', '.join(map(repr, unknown))}; allowed: {', '.join(BASELINES)}")
        if len(set(names)) != len(names):
            raise ValueError(f"{names} lists a baseline twice")
        return names

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
        kmeans = self.phases.kmeans
        wanted = [("search.space.clusters", self.search.space.max_clusters())]
        if self.phases.tapt.pretrain == "masked":
            wanted.append(("phases.tapt.pretrain_clusters", self.phases.tapt.pretrain_clusters))
        for field_name, clusters in wanted:
            if kmeans.max_fit_frames < clusters:
                raise Invalid(
                    "phases.kmeans.max_fit_frames",
                    f"{kmeans.max_fit_frames} is below the largest K of {field_name} ({clusters}): "
                    f"k-means needs at least one fit frame per cluster; raise max_fit_frames or lower K",
                )
        if kmeans.backend == "cuml":
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

    def protocol(self) -> FoldProtocol:
        """The :class:`FoldProtocol` of the ``protocol`` section."""
        return self.protocol_spec.protocol()

    def phase_settings(self) -> PhaseSettings:
        """The validated fixed settings of the phases."""
        return self.phases.settings()

    def ray_resources(self) -> RayResources:
        """The ``resources.train`` block."""
        return self.resources.train

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
        return classes_of(utterances)

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
            "encoder": self.encoder_ref(),
            "preset": self.phases.preset,
            "algorithm": self.search.algorithm,
            "test_sessions": self.fold_sessions(utterances),
            "seeds": list(self.study.seeds),
            "baselines": list(self.baselines),
            "methods": {
                name: {"title": get_recipe(name).title, "reconstructed": get_recipe(name).reconstructed}
                for name in [*self.search.space.methods(), *self.baselines]
            },
        }

    def advice(self) -> list[str]:
        """Legal but questionable choices, for the loader to log as warnings."""
        notes = []
        protocol = self.protocol()
        ignored = self.search.space.ignored()
        if ignored:
            notes.append(f"search.space: {', '.join(ignored)} belong to methods this study does not search ({', '.join(self.search.space.methods())}); set aside")
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

    def is_hub_encoder(self) -> bool:
        """True when ``encoder`` is a hub id (``org/name``), not a local path (which the validator made absolute)."""
        return not Path(self.encoder).exists() and bool(_HUB_ID.match(self.encoder))

    def encoder_ref(self) -> str:
        """What the phases load: the local directory, or ``<hub id>@<revision>`` once :meth:`check_inputs` resolved it."""
        from trainables.models.encoder import with_revision

        return with_revision(self.encoder, self.encoder_revision) if self.is_hub_encoder() else self.encoder

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
        for param, problem in self.search.space.data_problems(utterances):
            raise self.error(f"search.space.{param}", f"{problem} ({self.data.manifest})")
        protocol = self.protocol()
        built = {}
        for session in folds:
            try:
                built[session] = build_fold(utterances, protocol.fold_spec(session))
            except FoldError as err:
                raise self.error("protocol", f"fold {session}: {err}") from None
        from trainables.models.encoder import EncoderError, read_encoder_info, resolve_hub_revision  # transformers: only when inputs are checked

        if self.is_hub_encoder():
            try:
                self.encoder_revision = resolve_hub_revision(self.encoder, self.encoder_revision)
            except EncoderError as err:
                raise self.error("encoder_revision", str(err)) from None
        elif self.encoder_revision is not None:
            raise self.error("encoder_revision", f"applies to a hub id; {self.encoder} is a local directory (remove encoder_revision)")
        try:
            info = read_encoder_info(self.encoder_ref())
        except EncoderError as err:
            raise self.error("encoder", str(err)) from None
        for layer in sorted({min(self.embedding_layers(), default=0), max(self.embedding_layers(), default=0)}):
            try:
                info.check_layer(layer, "search.space.layer")
            except EncoderError as err:
                raise self.error("search.space.layer", str(err)) from None
        tapt = self.phase_settings().tapt
        if tapt.pretrain == "masked":
            try:
                info.check_layer(tapt.pretrain_layer, "phases.tapt.pretrain_layer")
            except EncoderError as err:
                raise self.error("phases.tapt.pretrain_layer", f"{err} (TAPT's masked pretraining clusters this layer of the pretrained encoder)") from None
        fit_frames = self._fit_frames(utterances, built, info)
        self._check_clusters(fit_frames, "search.space.clusters", self.search.space.max_clusters())
        if tapt.pretrain == "masked":
            self._check_clusters(fit_frames, "phases.tapt.pretrain_clusters", tapt.pretrain_clusters)
        return StudyInputs(utterances=utterances, folds=folds, encoder=info, fit_frames=fit_frames)

    def _fit_frames(self, utterances: Sequence[Utterance], built: Mapping[int, Any], info: "EncoderInfo") -> dict[int, int]:
        frames = {u.utt_id: info.frame_count(int(u.duration_s * info.sample_rate)) for u in utterances}
        protocol = self.protocol()
        return {session: int(sum(frames[i] for i in protocol.unsupervised_ids(fold))) for session, fold in built.items()}

    def _check_clusters(self, fit_frames: Mapping[int, int], field: str, clusters: int) -> None:
        """``clusters`` (the largest K of ``field``) against the frames k-means sees in each fold."""
        if clusters <= 0:
            return
        session, frames = min(fit_frames.items(), key=lambda item: item[1])
        sample = min(frames, self.phase_settings().kmeans.max_fit_frames)
        if clusters > frames:
            raise self.error(field, f"K={clusters} exceeds the {frames} frames k-means sees in fold {session}: it needs at least one frame per cluster; lower K or use more data")
        if clusters > SANE_MAX_CLUSTERS:
            logger.warning("%s: %s reaches K=%d, far beyond the method's range (50-150 in the paper)", self.source, field, clusters)
        if sample < MIN_FRAMES_PER_CLUSTER * clusters:
            logger.warning("%s: K=%d leaves %.1f fit frames per cluster in fold %d (fewer than %d): the centroids will be noisy", self.source, clusters, sample / clusters, session, MIN_FRAMES_PER_CLUSTER)

    def error(self, field: str, problem: str) -> StudyConfigError:
        """A :class:`StudyConfigError` about ``field`` of this config's file."""
        return StudyConfigError(f"{self.source}: {field}: {problem}", source=self.source, field=field)

    def to_yaml(self) -> str:
        """The resolved config (defaults filled in, paths absolute) as YAML that :func:`study.config.loading.parse_study` reads back."""
        header = f"# Resolved study config (from {self.source}); ser-study resume reads this file.\n"
        return header + yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False, default_flow_style=None, width=120)


def code_version() -> str:
    """The package version and the phase code versions (part of every phase cache key)."""
    try:
        version = metadata.version("ser-study")
    except metadata.PackageNotFoundError:
        version = "unknown"
    phases = " ".join(f"{phase}={kind.version}" for phase, kind in PHASE_KINDS.items())
    return f"ser-study {version} (phases {phases})"
