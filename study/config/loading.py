"""Reading a study file: one YAML document, validated into a :class:`~study.config.study.StudyConfig`.

A study file has these sections (``search_spaces/*.yaml`` are commented
examples; every mapping refuses unknown keys, so a typo is an error, never a
silently ignored setting)::

    name: smoke                      # MLflow experiment name; default study directory studies/<name>
    data: {manifest: demo/manifest.csv}
    encoder: demo/encoder            # local directory or HuggingFace hub id
    protocol: {validation: stratified, val_fraction: 0.1, val_speaker: null,
               unsupervised_audio: train, seed: 0}
    folds: all                       # or a list of test sessions, e.g. [1, 2]
    phases:
      preset: smoke                  # hubert | smoke: the fixed settings of the five phases
      epochs: 2                      # optional: epochs of TAPT, CPT and fine-tuning at once
      seed: 0                        # optional: training seed of TAPT, CPT and fine-tuning at once
      tapt: {train: {lr: 1.0e-4}}    # optional: any ClassifierConfig field, TrainConfig fields under train
      cpt: {span: 5}                 # optional: any CptConfig field
      finetune: {dropout: 0.2}       # optional: any ClassifierConfig field
      kmeans: {backend: sklearn}     # optional: any KMeansSettings field
      embed_max_batch_seconds: 80    # optional
    plugins: []                      # modules that register more methods (recipes), importable where the study runs
    baselines: [finetune, tapt, egemaps]   # scored once per fold beside the search (any of these three)
    study: {seeds: [0]}              # every fold trained once per seed; [0, 1, 2] repeats it with other training seeds
    search:
      space:                         # the methods, then their parameters: each fixed or {choice: [...]},
        method: alignment            # or {choice: [alignment, finetune]}; each samples only its own parameters
        layer: {choice: [1, 2]}      # {int: [low, high], log: false, step: 1} or
        clusters: {int: [4, 64], log: true}   # {float: [low, high], log: false}
        mask_ratio: 0.2              # a parameter left out takes its method's default
        pooling: {choice: [attention, average]}
      algorithm: tpe                 # tpe | grid (grid: every parameter fixed or a choice)
      seed: 0
      num_trials: 3                  # required for tpe; grid: default and maximum = grid size
      max_concurrent: 2
      early_stopping: none           # none | median (on val_ua_running_mean after each fold)
      grace_folds: 2                 # median: no stop before this many folds are done
      min_trials: 3                  # median: trials needed at a fold count before any stop
      startup_trials: 10             # tpe: random trials before TPE models the space
      reuse_actors: true             # next trial in a finished trial's process (false: a fresh one each)
    objective: {metric: val_ua_mean, mode: max}
    resources:
      executor: local                # local | ray
      cpus_per_fold: 1
      gpus_per_fold: 0
      train: {workers: 1, gpus_per_worker: 0, cpus_per_worker: 1, embed_gpus: 0,
              kmeans_gpus: 0, max_failures: 2}      # RayResources, for executor ray
    storage:
      study_dir: studies/smoke       # local path or s3://bucket/prefix
      mlflow_uri: null               # default sqlite:///<study_dir>/mlflow.db; required for s3://

**Relative paths** (``data.manifest``, a local ``encoder`` directory,
``storage.study_dir``, a local ``storage.mlflow_uri``) resolve against the
current working directory when the file is loaded, not against the YAML file's
folder, so ``--set data.manifest=my.csv`` means ``./my.csv`` wherever the study
file lives. They are stored absolute: the resolved config saved in the study
directory (:meth:`StudyConfig.to_yaml`) means the same files from any working
directory, which is what ``resume`` and the Ray workers need. An ``encoder``
that is not an existing path (and does not start with ``/``, ``./``, ``../`` or
``~``) is kept as given: a hub id.

**Overrides** (``--set dotted.field=value``) are applied to the raw YAML before
validation; the value is parsed as YAML (``3``, ``0.2``, ``[1, 2]``,
``{choice: [6, 9]}``, ``null``; an empty value is ``null``).

Every problem raises :class:`~study.config.base.StudyConfigError` (a :class:`~study.errors.UserError`)
whose message names the file, the dotted field, the problem and what is allowed.

A key written twice in one mapping is an error (YAML would keep the last).
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import yaml
from pydantic import BaseModel, ValidationError

from study.config.base import StudyConfigError
from study.config.space import PARAM_FORMS, TAG_MODELS, SearchSpace, param_forms, spec_tag
from study.config.study import StudyConfig
from study.io import layout, storage
from trainables.config import FieldError

logger = logging.getLogger(__name__)

#: ``--set dotted.field=value``.
_OVERRIDE = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*=(.*)$", re.DOTALL)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (the last would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _fields_by_key(model: type) -> dict[str, Any]:
    """The fields of a section: a pydantic model's, or a (pydantic) dataclass's by name."""
    fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else model.__pydantic_fields__
    return {info.alias or name: info for name, info in fields.items()}


def _as_model(annotation: Any) -> type | None:
    """The section type of a field's annotation: a model or a pydantic dataclass (None for a plain value)."""
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or hasattr(annotation, "__pydantic_fields__")):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _as_model(members[0])
    return None


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The section model at raw pydantic location ``loc`` (tags included), if any."""
    model: type[BaseModel] = StudyConfig
    index = 0
    while index < len(loc):
        fields = _fields_by_key(model)
        if model is SearchSpace and index + 1 < len(loc):  # a parameter, then the form it is written in
            index += 1
            child = TAG_MODELS.get(loc[index])  # type: ignore[arg-type]
            if child is None:
                return None
            model, index = child, index + 1
            continue
        if loc[index] not in fields:
            return None
        child = _as_model(fields[loc[index]].annotation)
        if child is None:
            return None
        model, index = child, index + 1
    return model


def _clean_loc(loc: Sequence[Any]) -> list[Any]:
    """``loc`` without the union tags pydantic inserts after a search-space parameter."""
    out: list[Any] = []
    for index, part in enumerate(loc):
        if index >= 2 and part in PARAM_FORMS and loc[index - 2] == "space" and loc[0] == "search":
            continue
        out.append(part)
    return out


def _dotted(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """``(dotted field, problem)`` of one pydantic error."""
    loc = list(error["loc"])
    field = _dotted(_clean_loc(loc))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    param = loc[2] if len(loc) > 2 and tuple(loc[:2]) == ("search", "space") else None
    tags = param_forms("str" if param == "method" else param) if param and param != "method" else ("fixed", "choice")
    forms = ", ".join(PARAM_FORMS[t] for t in tags) if param else ""
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = _model_at(loc[:-1])
        where = _dotted(_clean_loc(loc[:-1])) or "the top level"
        allowed = sorted(_fields_by_key(parent)) if parent else []
        listing = f"; allowed in {where}: {', '.join(allowed)}" if allowed else ""
        return field, f"unknown field {loc[-1]!r}{listing}{_suggest(str(loc[-1]), allowed)}"
    if kind == "missing":
        return field, "is required but missing"
    if kind == "param_spec":
        if isinstance(value, (list, tuple)):
            return field, f"a bare list is not a search space: write {{choice: {list(value)}}}; allowed forms: {forms}"
        tag = spec_tag(value)
        if tag not in (None, "fixed") and param and tag not in tags:
            return field, f"{{{tag}: ...}} is not allowed for {param}; allowed forms: {forms}"
        return field, f"{_short(value)} is not a parameter form; allowed forms: {forms}"
    if kind == "union_tag_invalid":
        return field, f"{{{ctx.get('tag')}: ...}} is not allowed for {param}; allowed forms: {forms}"
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, FieldError):
            return _dotted([field, cause.field] if field else [cause.field]), cause.problem
        return field, str(error["msg"]).removeprefix("Value error, ")
    return field or "the study file", f"{error['msg']} (got {_short(value)})"


def _format(err: ValidationError, source: str, overrides: Sequence[str]) -> StudyConfigError:
    problems = []
    errors = err.errors(include_url=False)
    name_failed = any(tuple(e["loc"]) == ("name",) for e in errors)
    for item in errors:
        if name_failed and tuple(item["loc"]) == ("storage",) and item["type"] == "missing":
            continue  # its default (studies/<name>) needs a valid name: the name error says it all
        field, problem = _describe(item)
        origin = [o for o in overrides if (m := _OVERRIDE.match(o)) and (field.startswith(m.group(1)) or m.group(1).startswith(field))]
        if origin:
            problem += f" (from --set {origin[-1]})"
        problems.append((field, problem))
    first_field = problems[0][0] if problems else None
    if len(problems) == 1:
        return StudyConfigError(f"{source}: {problems[0][0]}: {problems[0][1]}", source=source, field=first_field)
    lines = "\n".join(f"  {field}: {problem}" for field, problem in problems)
    return StudyConfigError(f"{source}: {len(problems)} problems:\n{lines}", source=source, field=first_field)


def _check_override_path(parts: Sequence[str], text: str, source: str) -> None:
    model: type[BaseModel] = StudyConfig
    for depth, part in enumerate(parts):
        if model is SearchSpace:
            return  # the methods and their parameters: names and forms are checked with the space
        fields = _fields_by_key(model)
        where = _dotted(parts[:depth]) or "the top level"
        if part not in fields:
            allowed = sorted(fields)
            raise StudyConfigError(
                f"{source}: --set {text}: unknown field {_dotted(parts[: depth + 1])}; allowed in {where}: {', '.join(allowed)}{_suggest(part, allowed)}",
                source=source,
                field=_dotted(parts[: depth + 1]),
            )
        child = _as_model(fields[part].annotation)
        if child is None:
            if depth + 1 < len(parts):
                raise StudyConfigError(f"{source}: --set {text}: {_dotted(parts[: depth + 1])} is a value, not a section", source=source, field=_dotted(parts[: depth + 1]))
            return
        model = child


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], source: str = "<study config>") -> dict[str, Any]:
    """``raw`` with each ``dotted.field=value`` of ``overrides`` set (value parsed as YAML)."""
    data = copy.deepcopy(dict(raw))
    for text in overrides:
        match = _OVERRIDE.match(text)
        if not match:
            raise StudyConfigError(
                f"{source}: --set {text!r}: expected FIELD=VALUE with a dotted field, e.g. --set search.num_trials=10 or --set data.manifest=path/to/manifest.csv",
                source=source,
            )
        key, value_text = match.groups()
        parts = key.split(".")
        _check_override_path(parts, text, source)
        try:
            value = yaml.load(value_text, Loader=_UniqueKeyLoader) if value_text.strip() else None
        except yaml.YAMLError as err:
            raise StudyConfigError(f"{source}: --set {text}: the value is not valid YAML ({str(err).splitlines()[0]}); quote it or fix it", source=source, field=key) from None
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def parse_study(text: str, source: str = "<study config>", overrides: Sequence[str] = ()) -> StudyConfig:
    """Validate the YAML ``text`` of a study file (with ``overrides``); ``source`` names it in messages."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise StudyConfigError(f"{source}: not valid YAML: {err}", source=source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{source}: a study file is a YAML mapping (name:, data:, encoder:, search:, ...), got {type(raw).__name__}", source=source)
    data = apply_overrides(raw, overrides, source)
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise _format(err, source, overrides) from None
    config._source = source
    return config


def shipped_studies() -> dict[str, Path]:
    """The study files shipped in ``search_spaces/`` (name -> path)."""
    import search_spaces

    folder = Path(search_spaces.__file__).parent
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Load and validate the study file ``path`` with ``--set`` style ``overrides``; logs questionable choices."""
    source = str(path)
    try:
        text = storage.read_text(source)
    except FileNotFoundError:
        shipped = ", ".join(str(p) for p in shipped_studies().values())
        raise StudyConfigError(f"{source}: study file not found; shipped examples: {shipped}", source=source) from None
    except (OSError, UnicodeDecodeError) as err:
        raise StudyConfigError(f"{source}: cannot read the study file ({err})", source=source) from None
    config = parse_study(text, source, overrides)
    for note in config.advice():
        logger.warning("%s: %s", source, note)
    return config


def load_resolved_study(study_dir: str | Path) -> StudyConfig:
    """The resolved config saved in a study directory (``<study_dir>/study.yaml``), for resume and the trials."""
    location = str(layout.study_file(study_dir))
    try:
        text = storage.read_text(location)
    except (OSError, UnicodeDecodeError) as err:
        raise StudyConfigError(f"{location}: cannot read the study's resolved config ({err}); is {study_dir} a study directory?", source=location) from None
    return parse_study(text, location)
