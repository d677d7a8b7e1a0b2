"""Utterance classification training, shared by TAPT and fine-tuning.

Both phases train encoder + pooling + heads on utterance labels with
class-weighted cross-entropy and keep the epoch with the best validation UA;
they differ in the starting encoder and the pooling. An
:class:`~trainables.config.UtteranceObjective` may swap the emotion head for
AM-Softmax and add metadata tasks (gender, style) as weighted auxiliary heads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from trainables.config import ClassifierConfig, UtteranceObjective
from trainables.data.audio import Crop
from trainables.data.batching import Batch, UtteranceDataset
from trainables.data.manifest import Utterance
from trainables.metrics import classification_metrics
from trainables.models.encoder import load_encoder
from trainables.data.metadata import IGNORE_INDEX, metadata_task
from trainables.models.heads import PooledNorm, UtteranceClassifier, am_softmax_loss
from trainables.runtime import Runtime
from trainables.training import FitResult, fit, inference_outputs, make_loader, predict_logits, seed_everything

logger = logging.getLogger(__name__)

EMOTION_TASK = "emotion"
HEADS_FILE = "heads.safetensors"
CLASSIFIER_FILE = "classifier.json"


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``[num_classes]``, normalised to mean 1 over the classes present."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


#: At most this many training utterances give the pooled normalisation its statistics before each evaluation.
CALIBRATION_UTTERANCES = 128


def inputs_of(modules: Sequence[torch.nn.Module], net: torch.nn.Module, batch: Batch) -> list[torch.Tensor]:
    """Run ``net`` on ``batch``; return the first input each of ``modules`` (parts of ``net``) received."""
    seen: dict[int, torch.Tensor] = {}
    handles = [module.register_forward_pre_hook(lambda _module, inputs, i=i: seen.setdefault(i, inputs[0])) for i, module in enumerate(modules)]
    try:
        net(batch.waveforms, batch.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(modules))]


def calibrate_pooled_norm(model: torch.nn.Module, dataset: UtteranceDataset, max_batch_seconds: float, runtime: Runtime) -> None:
    """Give every :class:`PooledNorm` of ``model`` (``head_norm: batch``, ``loudness``, ``spectral_balance``) the exact statistics of what evaluation will feed it; a no-op without one.

    BatchNorm's running statistics are a moving average over training batches:
    random crops of padded utterances through a changing encoder, starting from
    unit variance. A small encoder's pooled vectors vary far less than that, so
    with a few dozen updates the running variance is several times theirs and
    evaluation normalises them to nearly one point (a classifier that predicted
    the classes in training predicted one class in evaluation). Before each
    evaluation the model, in evaluation mode, pools ``dataset`` (whole training
    utterances: :func:`calibration_dataset`) as evaluation does, and each norm
    takes the mean and variance of its inputs (the "precise BN" statistics).
    """
    norms = [module for module in model.modules() if isinstance(module, PooledNorm)]
    if not norms or len(dataset) < 2:
        return

    def norm_inputs(net, batch: Batch) -> torch.Tensor:
        return torch.cat([seen.float() for seen in inputs_of(norms, net, batch)], dim=-1)

    _, inputs = inference_outputs(model, dataset, max_batch_seconds, runtime, norm_inputs)
    for norm, part in zip(norms, inputs.split([norm.num_features for norm in norms], dim=-1)):
        norm.calibrate(part.to(norm.running_mean.device))


def calibration_dataset(train: Sequence[Utterance], label_index: dict[str, int], sample_rate: int) -> UtteranceDataset:
    """Up to :data:`CALIBRATION_UTTERANCES` of ``train``, evenly spread, whole (no crop), for :func:`calibrate_pooled_norm`."""
    step = max(1, -(-len(train) // CALIBRATION_UTTERANCES))
    return UtteranceDataset(list(train)[::step], label_index, sample_rate, None, Crop.NONE)


def init_head_by_probe(model: torch.nn.Module, dataset: UtteranceDataset, cfg: ClassifierConfig, runtime: Runtime) -> None:
    """Set ``model``'s linear emotion head to a logistic regression solved on what it reads, ``[N, D]``, for ``dataset`` (whole utterances, evaluation mode).

    The first step of LP-FT (linear probing, then fine-tuning; Kumar et al.,
    2022): fine-tuning starts from the best linear read-out of the starting
    encoder instead of a random head, whose first updates would otherwise
    pull the encoder towards whatever the random head needs. The pooled norms
    are calibrated on the same utterances first, so the regression sees what
    the head will see. Classes absent from ``dataset`` get zero weights and a
    bias far below the others. ``model``: an :class:`UtteranceClassifier` or
    a multi-task classifier (``heads[EMOTION_TASK]``, its pooled vector as input).
    """
    from sklearn.linear_model import LogisticRegression

    head = model.heads[EMOTION_TASK]
    if not isinstance(head, torch.nn.Linear):
        raise ValueError("head_init: probe needs the linear emotion head; the cosine (AM-Softmax) head starts at random")
    model.to(runtime.device)  # before training wraps it: the batches come on the runtime's device
    calibrate_pooled_norm(model, dataset, cfg.eval_max_batch_seconds, runtime)
    was_training = model.training
    model.eval()
    indices, pooled = inference_outputs(model, dataset, cfg.eval_max_batch_seconds, runtime, lambda net, batch: inputs_of([net.heads[EMOTION_TASK]], net, batch)[0])
    model.train(was_training)
    labels = np.array([dataset.label_index[dataset.utterances[i].label] for i in indices])
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError("head_init: probe needs at least two classes among the training utterances")
    probe = LogisticRegression(C=cfg.probe_c, class_weight="balanced" if cfg.class_weighting else None, max_iter=2000)
    probe.fit(pooled.numpy(), labels)
    coef, intercept = probe.coef_, probe.intercept_
    if len(present) == 2:  # sklearn keeps one row for two classes: the same softmax as +-half of it
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    rows = torch.as_tensor(present, device=head.weight.device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(float(intercept.min()) - 10.0)
        head.weight[rows] = torch.as_tensor(coef, dtype=head.weight.dtype).to(head.weight.device)
        head.bias[rows] = torch.as_tensor(intercept, dtype=head.bias.dtype).to(head.bias.device)


def validation_scorer(
    train: Sequence[Utterance], val: Sequence[Utterance], classes: Sequence[str], cfg: ClassifierConfig, runtime: Runtime, sample_rate: int
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """A classifier phase's ``evaluate`` for :func:`~trainables.training.fit`: calibrate the pooled norm on ``train``, then val UA, WA and macro-F1."""
    label_index = {c: i for i, c in enumerate(classes)}
    calibration_set = calibration_dataset(train, label_index, sample_rate)
    val_set = UtteranceDataset(val, label_index, sample_rate, None, Crop.NONE)

    def evaluate(net: torch.nn.Module) -> dict[str, float]:
        calibrate_pooled_norm(net, calibration_set, cfg.eval_max_batch_seconds, runtime)
        metrics, _, _ = evaluate_classifier(net, val_set, classes, cfg, runtime)
        return {"val_ua": metrics["ua"], "val_wa": metrics["wa"], "val_macro_f1": metrics["macro_f1"]}

    return evaluate


def evaluate_classifier(
    model: UtteranceClassifier, dataset: UtteranceDataset, classes: Sequence[str], cfg: ClassifierConfig, runtime: Runtime
) -> tuple[dict, list[int], torch.Tensor]:
    """Metrics (UA, WA, macro-F1, confusion), dataset indices and logits ``[N, C]`` on ``dataset``."""
    indices, logits = predict_logits(model, dataset, cfg.eval_max_batch_seconds, runtime, EMOTION_TASK)
    labels = [dataset.label_index[dataset.utterances[i].label] for i in indices]
    metrics = classification_metrics(labels, logits.argmax(dim=1).tolist(), len(classes))
    return metrics, indices, logits


def train_classifier(
    encoder_path: str | Path,
    pooling: str,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    classes: Sequence[str],
    cfg: ClassifierConfig,
    runtime: Runtime,
    objective: UtteranceObjective = UtteranceObjective(),
) -> tuple[UtteranceClassifier, FitResult]:
    """Train a classifier from ``encoder_path`` for ``objective``; return it with the best validation-UA state loaded."""
    seed_everything(cfg.train.seed + runtime.rank)
    encoder = load_encoder(encoder_path, freeze_feature_encoder=cfg.freeze_feature_encoder, spec_augment=cfg.spec_augment, attention_dropout=cfg.attention_dropout)
    label_index = {c: i for i, c in enumerate(classes)}
    aux_tasks = [metadata_task(name) for name in objective.aux]
    model = UtteranceClassifier(
        encoder, pooling, {EMOTION_TASK: len(classes), **{task.name: len(task.classes) for task in aux_tasks}},
        dropout=cfg.dropout, head_norm=cfg.head_norm, layers=cfg.layers, loudness=cfg.loudness, spectral_balance=cfg.spectral_balance,
        head_kinds={EMOTION_TASK: "cosine" if objective.emotion_head == "am_softmax" else "linear"}, cosine_scale=objective.am_scale,
    )
    rate = encoder.info.sample_rate
    train_set = UtteranceDataset(train, label_index, rate, cfg.train.max_train_seconds, Crop.RANDOM, seed=cfg.train.seed + runtime.rank, aux_tasks=aux_tasks)
    weights = class_weights([label_index[u.label] for u in train], len(classes)) if cfg.class_weighting else None
    weights = None if weights is None else weights.to(runtime.device)
    loader, sampler = make_loader(train_set, cfg.train, runtime, shuffle=True)

    def loss_fn(net, batch: Batch):
        outputs = net(batch.waveforms, batch.attention_mask)
        logits = outputs[EMOTION_TASK].float()
        if objective.emotion_head == "am_softmax":
            loss = am_softmax_loss(logits, batch.labels, objective.am_scale, objective.am_margin, weight=weights)
        else:
            loss = F.cross_entropy(logits, batch.labels, weight=weights)
        extra = {"accuracy": (logits.argmax(1) == batch.labels).float().mean().detach()}
        for task, weight in objective.aux.items():
            targets = batch.aux_labels[task]
            task_loss = F.cross_entropy(outputs[task].float(), targets, ignore_index=IGNORE_INDEX).nan_to_num(0.0)  # a batch with no known value
            loss = loss + weight * task_loss
            known = targets != IGNORE_INDEX
            extra[f"{task}_loss"] = task_loss.detach()
            extra[f"{task}_accuracy"] = ((outputs[task].argmax(1) == targets) & known).sum() / known.sum().clamp(min=1)
        return loss, extra

    evaluate = validation_scorer(train, val, classes, cfg, runtime, rate)
    if cfg.head_init == "probe" and model.head_kinds[EMOTION_TASK] == "linear":
        init_head_by_probe(model, UtteranceDataset(train, label_index, rate, None, Crop.NONE), cfg, runtime)
    result = fit(model, loader, sampler, loss_fn, cfg.train, runtime, evaluate=evaluate, select="val_ua")
    model.load_state_dict(result.best_state)
    return model, result


def save_classifier(model: UtteranceClassifier, classes: Sequence[str], directory: Path) -> None:
    """Encoder (HF format) + pooling and heads (safetensors) + a JSON description."""
    model.encoder.save(directory / "encoder")
    head_state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    save_file(head_state, str(directory / HEADS_FILE))
    description = {
        "pooling": model.pooling_name, "head_norm": model.head_norm, "layers": model.layers, "classes": list(classes),
        "tasks": {t: h.out_features for t, h in model.heads.items()}, "head_kinds": model.head_kinds, "cosine_scale": model.cosine_scale,
        "loudness": "loudness" in model.levels, "spectral_balance": "spectral_balance" in model.levels,
    }
    (directory / CLASSIFIER_FILE).write_text(json.dumps(description, indent=2))


def load_classifier(directory: Path) -> tuple[UtteranceClassifier, list[str]]:
    """Load what :func:`save_classifier` wrote, for prediction."""
    description = json.loads((directory / CLASSIFIER_FILE).read_text())
    encoder = load_encoder(directory / "encoder")
    model = UtteranceClassifier(
        encoder, description["pooling"], description["tasks"], head_norm=description.get("head_norm", "none"),
        head_kinds=description.get("head_kinds"), cosine_scale=description.get("cosine_scale", 30.0), layers=description.get("layers", "last"),
        loudness=description.get("loudness", False), spectral_balance=description.get("spectral_balance", False),
    )
    missing, unexpected = model.load_state_dict(load_file(str(directory / HEADS_FILE)), strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise ValueError(f"{directory} does not match its classifier description (missing {missing}, unexpected {unexpected})")
    model.eval()
    return model, description["classes"]
