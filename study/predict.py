"""``ser-study predict``: the best configuration's fold models as an ensemble over new audio.

Inputs are files, folders (searched recursively for audio files) and glob
patterns. Every file is read before any model runs; one that is not readable
audio is reported and skipped. Audio longer than ``chunk_seconds`` is scored
in consecutive chunks whose class probabilities are averaged, weighted by
their length; the rest is scored in length-bucketed batches of at most
``batch_seconds`` of audio (one utterance at a time for an encoder whose CNN
normalises over time, as in evaluation).
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from study.cache.store import ArtifactCache
from study.config.loading import load_resolved_study
from study.errors import UserError
from study.io import layout
from study.io.records import read_trial_records
from study.report.model import best_trial
from trainables.data.audio import AudioError, chunk, load_waveform
from trainables.phases.artifacts import classifier_dir
from trainables.phases.classifier import CLASSIFIER_FILE, EMOTION_TASK, load_classifier
from trainables.phases.multitask import DESCRIPTION_FILE, load_multitask

logger = logging.getLogger(__name__)

#: What a folder is searched for (soundfile's common formats).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass
class Prediction:
    path: str
    probabilities: dict[str, float]  # class -> mean probability over the fold models (and chunks)
    seconds: float
    chunks: int

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class FoldModel:
    """One fold's scored model of a trial: its test session, validation UA and directory."""

    test_session: int
    val_ua: float
    directory: Path


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


def fold_models(study_dir: str | Path) -> tuple[dict, list[FoldModel]]:
    """The best complete trial and its folds' models (each fold's scored step: ``finetune``, ``mtl_stage2``, ...)."""
    config = load_resolved_study(study_dir)
    best = best_trial(read_trial_records(study_dir), config.objective.metric, config.objective.mode)
    if best is None:
        raise UserError(f"{study_dir} has no complete trial yet; run or resume the study first")
    models = []
    for fold in best["folds"]:
        step = fold.get("scored") or "finetune"
        artifact = ArtifactCache(layout.cache_dir(study_dir)).fetch(fold.get("phases", {}).get(step, step), fold["artifacts"][step])
        directory = _model_dir(artifact)
        if directory is None:
            raise UserError(f"the fold-{fold['test_session']} model of trial {best['trial_id']} ({step}) is missing; resume the study to rebuild it")
        models.append(FoldModel(int(fold["test_session"]), float((fold.get("val") or {}).get("ua", float("nan"))), directory))
    return best, models


def resolve_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for :data:`AUDIO_SUFFIXES`, glob patterns expanded; in order, once each.

    Raises :class:`UserError` naming a path that is neither an existing file or folder nor a pattern that matches.
    """
    found: list[Path] = []
    for given in map(str, paths):
        path = Path(given)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(given):
            matches = sorted(Path(p) for p in glob.glob(given, recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"the pattern {given!r} matches no file")
            found += matches
        else:
            raise UserError(f"{given} does not exist; give audio files, folders or glob patterns (quoted, e.g. 'data/*.wav')")
    return list(dict.fromkeys(found))


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; an unusable choice is an error naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu")
    return device


def _probabilities(models, pieces: list[torch.Tensor], device: torch.device, batch_seconds: float) -> list[torch.Tensor]:
    """Mean class probabilities over ``models`` of each waveform piece (``[samples]``), batched by length."""
    out: list[torch.Tensor | None] = [None] * len(pieces)
    encoder = models[0].encoder
    for indices in encoder.inference_batches([p.numel() / encoder.info.sample_rate for p in pieces], batch_seconds, device):
        longest = max(pieces[i].numel() for i in indices)
        waves = torch.zeros(len(indices), longest)
        mask = torch.zeros(len(indices), longest, dtype=torch.long)
        for row, i in enumerate(indices):
            waves[row, : pieces[i].numel()] = pieces[i]
            mask[row, : pieces[i].numel()] = 1
        waves, mask = waves.to(device), mask.to(device)
        probs = torch.stack([torch.softmax(model(waves, mask)[EMOTION_TASK].float(), dim=-1) for model in models]).mean(0).cpu()
        for row, i in enumerate(indices):
            out[i] = probs[row]
    return out  # type: ignore[return-value]


def predict(
    study_dir: str | Path,
    paths: Sequence[str | Path],
    *,
    chunk_seconds: float,
    batch_seconds: float,
    device: str = "auto",
    fold: int | None = None,
) -> tuple[list[Prediction], list[Skipped]]:
    """Class probabilities of each audio file, averaged over the best trial's fold models (or only fold ``fold``'s).

    Returns the predictions and the files skipped (not readable audio), each with its reason.
    """
    if chunk_seconds <= 0 or batch_seconds <= 0:
        raise UserError("--chunk-seconds and --batch-seconds must be positive")
    files = resolve_inputs(paths)
    target = pick_device(device)
    best, every_fold = fold_models(study_dir)
    folds = every_fold if fold is None else [f for f in every_fold if f.test_session == fold]
    if not folds:
        raise UserError(f"--fold {fold}: trial {best['trial_id']} has folds {[f.test_session for f in every_fold]}")
    loaded = [load_model(f.directory) for f in folds]
    models = [model.to(target).eval() for model, _ in loaded]
    classes = loaded[0][1]
    info = models[0].encoder.info
    waveforms, skipped = [], []
    for path in files:  # every input is read before any model runs
        try:
            waveforms.append((path, load_waveform(path, info.sample_rate)))
        except AudioError as err:
            skipped.append(Skipped(str(path), str(err)))
    max_samples = max(int(chunk_seconds * info.sample_rate), info.receptive_field)
    pieces, spans = [], []  # spans[i]: the range of pieces that file i was cut into
    for _, waveform in waveforms:
        start = len(pieces)
        pieces += chunk(waveform, max_samples, min_samples=info.receptive_field)
        spans.append(range(start, len(pieces)))
    with torch.inference_mode():
        probs = _probabilities(models, pieces, target, batch_seconds) if pieces else []
    predictions = []
    for index, (path, waveform) in enumerate(waveforms):
        mine = [(probs[k], pieces[k].numel()) for k in spans[index]]
        weights = torch.tensor([n for _, n in mine], dtype=torch.float32)
        mean = (torch.stack([p for p, _ in mine]) * weights[:, None]).sum(0) / weights.sum()
        predictions.append(Prediction(str(path), dict(zip(classes, mean.tolist())), waveform.numel() / info.sample_rate, len(mine)))
    logger.info("ensemble of %d fold model(s) from trial %s %s on %s", len(models), best["trial_id"], best["params"], target)
    return predictions, skipped
