"""The study file: one YAML document, validated into a :class:`StudyConfig`.

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
    search:
      space:                         # exactly these four; each fixed or {choice: [...]},
        layer: {choice: [1, 2]}      # {int: [low, high], log: false, step: 1} or
        clusters: {int: [4, 64], log: true}   # {float: [low, high], log: false}
        mask_ratio: 0.2
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

Every problem raises :class:`StudyConfigError` (a :class:`~study.errors.UserError`)
whose message names the file, the dotted field, the problem and what is allowed.

This package is the facade: ``model`` holds the schema (a pydantic model per
section) and its checks against the data and the encoder, ``loading`` reads a
file, applies the overrides and turns validation errors into messages.
"""

from study.config.loading import apply_overrides, load_resolved_study, load_study, parse_study, shipped_studies
from study.config.model import (
    OBJECTIVE_METRICS,
    PRESETS,
    RESOLVED_STUDY_FILE,
    SEARCHED_PARAMS,
    Choice,
    FloatRange,
    IntRange,
    ParamSpec,
    SearchSettings,
    SearchSpace,
    StudyConfig,
    StudyConfigError,
    StudyInputs,
    code_version,
    spec_extremes,
    spec_values,
)

__all__ = [
    "OBJECTIVE_METRICS",
    "PRESETS",
    "RESOLVED_STUDY_FILE",
    "SEARCHED_PARAMS",
    "Choice",
    "FloatRange",
    "IntRange",
    "ParamSpec",
    "SearchSettings",
    "SearchSpace",
    "StudyConfig",
    "StudyConfigError",
    "StudyInputs",
    "apply_overrides",
    "code_version",
    "load_resolved_study",
    "load_study",
    "parse_study",
    "shipped_studies",
    "spec_extremes",
    "spec_values",
]
