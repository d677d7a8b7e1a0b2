"""An exported model in MLflow: logged as a pyfunc model of the trial's run, optionally registered.

The pyfunc wraps the exported HuggingFace directory (an artifact of the
model) in ``transformers.pipeline("audio-classification")``; its input is a
DataFrame with a ``path`` column of audio files, its output one row per file:
``label`` and one probability column per class.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import mlflow.pyfunc

from study.config.loading import load_resolved_study
from study.tracking.runs import KIND_TAG, TRIAL_ID_TAG
from study.tracking.store import ensure_experiment, get_client, quote, search_runs

logger = logging.getLogger(__name__)

MODEL_NAME = "model"
_REQUIREMENTS = ("torch", "transformers", "soundfile", "pandas")


class AudioClassifierModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame(path=[...]))`` -> ``DataFrame(path, label, <class>...)`` with the exported model."""

    def load_context(self, context) -> None:
        from transformers import pipeline

        self.classify = pipeline("audio-classification", model=context.artifacts[MODEL_NAME], trust_remote_code=True)

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import soundfile as sf

        rows = []
        for path in model_input["path"]:
            samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
            scores = self.classify({"raw": samples.mean(axis=1), "sampling_rate": rate}, top_k=None)
            rows.append({"path": str(path), "label": scores[0]["label"], **{s["label"]: s["score"] for s in scores}})
        return pd.DataFrame(rows)


def _requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in _REQUIREMENTS]


def log_exported_model(study_dir: str | Path, trial_id: str, directory: Path, register: str | None) -> tuple[str | None, str | None]:
    """Log ``directory`` as the pyfunc model of trial ``trial_id``'s run; register it as ``register`` if given.

    Returns the model URI and the registered version (None where not done). A
    study whose store lacks the trial's run gets no model logged (a warning says so).
    """
    config = load_resolved_study(study_dir)
    uri = config.tracking_uri()
    client = get_client(uri)
    experiment_id = ensure_experiment(uri, config.name)
    runs = search_runs(client, experiment_id, f"tags.`{KIND_TAG}` = 'trial' AND tags.`{TRIAL_ID_TAG}` = {quote(trial_id)}")
    if not runs:
        logger.warning("the MLflow store %s has no run of trial %s: the model is not logged there", uri, trial_id)
        return None, None
    run = runs[0].info
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run.run_id):
        info = mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=AudioClassifierModel(), artifacts={MODEL_NAME: str(directory)}, pip_requirements=_requirements())
    client.set_terminated(run.run_id, run.status, run.end_time)  # the trial's own status and duration, not the export's
    logger.info("logged the model of trial %s to MLflow as %s", trial_id, info.model_uri)
    if not register:
        return info.model_uri, None
    version = mlflow.register_model(info.model_uri, register)
    return info.model_uri, str(version.version)
