"""``ser-study predict``: the best configuration's fold models as an ensemble over new audio."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from study.io import layout
from study.cache.store import ArtifactCache
from study.config.loading import load_resolved_study
from study.errors import UserError
from study.report.model import best_trial
from study.io.records import read_trial_records
from trainables.data.audio import AudioError, load_waveform
from trainables.phases.artifacts import classifier_dir
from trainables.phases.classifier import CLASSIFIER_FILE, EMOTION_TASK, load_classifier
from trainables.phases.multitask import DESCRIPTION_FILE, load_multitask

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    probabilities: dict[str, float]  # class -> mean probability over the fold models

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


def _model_dir(artifact: Path | None) -> Path | None:
    """Where a scored artifact keeps its model: a fine-tuning's ``classifier/``, a multi-task stage's own folder."""
    if artifact is None:
        return None
    for directory in (classifier_dir(artifact), artifact):
        if (directory / CLASSIFIER_FILE).is_file() or (directory / DESCRIPTION_FILE).is_file():
            return directory
    return None


def load_model(directory: Path):
    """``(model, classes)`` of a directory :func:`_model_dir` found."""
    return load_multitask(directory) if (directory / DESCRIPTION_FILE).is_file() else load_classifier(directory)


def ensemble_dirs(study_dir: str | Path) -> tuple[dict, list[Path]]:
    """The best complete trial and its fold models' directories (each fold's scored step: ``finetune``, ``mtl_stage2``, ...)."""
    config = load_resolved_study(study_dir)
    best = best_trial(read_trial_records(study_dir), config.objective.metric, config.objective.mode)
    if best is None:
        raise UserError(f"{study_dir} has no complete trial yet; run or resume the study first")
    directories = []
    for fold in best["folds"]:
        step = fold.get("scored") or "finetune"
        artifact = ArtifactCache(layout.cache_dir(study_dir)).fetch(fold.get("phases", {}).get(step, step), fold["artifacts"][step])
        directory = _model_dir(artifact)
        if directory is None:
            raise UserError(f"the fold-{fold['test_session']} model of trial {best['trial_id']} ({step}) is missing; resume the study to rebuild it")
        directories.append(directory)
    return best, directories


def predict(study_dir: str | Path, wavs: Sequence[str | Path]) -> list[Prediction]:
    """Class probabilities of each file, averaged over the best trial's fold models."""
    best, directories = ensemble_dirs(study_dir)
    models = [load_model(d) for d in directories]
    classes = models[0][1]
    rate = models[0][0].encoder.info.sample_rate
    waveforms = []
    for wav in wavs:  # every input is checked before any model runs
        try:
            waveforms.append(load_waveform(wav, rate))
        except AudioError as err:
            raise UserError(str(err)) from None
    predictions = []
    with torch.inference_mode():
        for wav, waveform in zip(wavs, waveforms):
            batch = waveform.unsqueeze(0)
            mask = torch.ones_like(batch, dtype=torch.long)
            probs = torch.stack([torch.softmax(model(batch, mask)[EMOTION_TASK], dim=-1)[0] for model, _ in models]).mean(0)
            predictions.append(Prediction(str(wav), dict(zip(classes, probs.tolist()))))
    logger.info("ensemble of %d fold models from trial %s %s", len(models), best["trial_id"], best["params"])
    return predictions
