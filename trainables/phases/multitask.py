"""The two stages of the metadata-enhanced method: utterance classification with auxiliary metadata tasks.

Stage 1 (``mtl_stage1``) fine-tunes the encoder on SER plus the auxiliary
tasks; stage 2 (``mtl_stage2``) starts from stage 1's encoder and heads, adds
ARI and co-attention (:class:`~trainables.config.MultitaskObjective`), trains
again and scores the test session. Both select their checkpoint on validation
UA. Artifact: ``encoder/`` (the fine-tuned encoder, loadable by
:func:`~trainables.models.encoder.load_encoder`), ``model.safetensors`` (the
whole model) with ``model.json`` (how to rebuild it), the record, and for stage
2 ``metrics.json`` and ``predictions.csv``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from trainables.atomic import atomic_directory
from trainables.config import ClassifierConfig, MultitaskObjective
from trainables.data.audio import Crop
from trainables.data.batching import Batch, UtteranceDataset
from trainables.data.manifest import Utterance
from trainables.data.metadata import IGNORE_INDEX, metadata_task
from trainables.data.transcripts import VOCAB_SIZE
from trainables.models.encoder import load_encoder
from trainables.models.multitask import CTC, EMOTION, MultitaskClassifier, ctc_loss
from trainables.phases.artifacts import describe_utterances, encoder_dir, encoder_fingerprint, write_record
from trainables.phases.classifier import class_weights, evaluate_classifier, init_head_by_probe, validation_scorer
from trainables.phases.evaluation import write_evaluation
from trainables.runtime import Runtime, training_record
from trainables.training import fit, make_loader, seed_everything

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
DESCRIPTION_FILE = "model.json"


def build_model(encoder_path: str | Path, pooling: str, classes: Sequence[str], objective: MultitaskObjective, cfg: ClassifierConfig) -> MultitaskClassifier:
    """The model of ``objective`` on the encoder at ``encoder_path``."""
    encoder = load_encoder(encoder_path, freeze_feature_encoder=cfg.freeze_feature_encoder, spec_augment=cfg.spec_augment, attention_dropout=cfg.attention_dropout)
    return MultitaskClassifier(
        encoder, pooling, len(classes), {name: len(metadata_task(name).classes) for name in objective.aux},
        ctc_vocab=VOCAB_SIZE if objective.transcript_weight > 0 else 0, ctc_layer=objective.ctc_layer,
        integration=objective.integration, coattention=objective.coattention, dropout=cfg.dropout, head_norm=cfg.head_norm, layers=cfg.layers,
        loudness=cfg.loudness, spectral_balance=cfg.spectral_balance,
    )


def load_stage(model: MultitaskClassifier, artifact: Path) -> list[str]:
    """Load the parameters of a previous stage's model that this one shares (its new parts keep their initialisation); returns the new parts."""
    state = load_file(str(artifact / MODEL_FILE))
    own = model.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return sorted(k for k in own if k not in shared)


def load_multitask(artifact: Path) -> tuple[MultitaskClassifier, list[str]]:
    """The model a multi-task stage saved in ``artifact``, for prediction (eval mode), and its classes."""
    description = json.loads((artifact / DESCRIPTION_FILE).read_text())
    cfg = ClassifierConfig(
        head_norm=description["head_norm"], dropout=description["dropout"], layers=description.get("layers", "last"), loudness=description.get("loudness", False),
        spectral_balance=description.get("spectral_balance", False),
    )
    model = build_model(encoder_dir(artifact), description["pooling"], description["classes"], MultitaskObjective(**description["objective"]), cfg)
    model.load_state_dict(load_file(str(artifact / MODEL_FILE)))
    return model.eval(), description["classes"]


def run_multitask(
    encoder: str | Path,
    pooling: str,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    classes: Sequence[str],
    cfg: ClassifierConfig,
    objective: MultitaskObjective,
    out: Path,
    runtime: Runtime,
    test: Sequence[Utterance] = (),
    init: Path | None = None,
    phase: str = "mtl_stage1",
) -> dict:
    """Train (from ``init``'s model where given), select on ``val``, score ``test`` if any; returns the metrics."""
    started = time.perf_counter()
    seed_everything(cfg.train.seed + runtime.rank)
    model = build_model(encoder, pooling, classes, objective, cfg)
    fresh = list(model.state_dict())
    if init is not None:
        fresh = load_stage(model, init)
        logger.info("%s starts from %s; new parts: %s", phase, init, ", ".join(fresh) or "none")
    if objective.encoder_lr_scale == 0:
        model.encoder.requires_grad_(False)
        train_cfg = cfg.train
    else:
        train_cfg = replace(cfg.train, lr=cfg.train.lr * objective.encoder_lr_scale)
    label_index = {c: i for i, c in enumerate(classes)}
    tasks = [metadata_task(name) for name in objective.aux]
    rate = model.encoder.info.sample_rate
    train_set = UtteranceDataset(
        train, label_index, rate, cfg.train.max_train_seconds, Crop.RANDOM, seed=cfg.train.seed + runtime.rank,
        aux_tasks=tasks, transcripts=objective.transcript_weight > 0,
    )
    weights = class_weights([label_index[u.label] for u in train], len(classes)).to(runtime.device) if cfg.class_weighting else None
    loader, sampler = make_loader(train_set, train_cfg, runtime, shuffle=True)

    def loss_fn(net, batch: Batch):
        outputs = net(batch.waveforms, batch.attention_mask)
        logits = outputs[EMOTION].float()
        loss = F.cross_entropy(logits, batch.labels, weight=weights)
        extra = {"accuracy": (logits.argmax(1) == batch.labels).float().mean().detach()}
        for task, weight in objective.aux.items():
            targets = batch.aux_labels[task]
            task_loss = F.cross_entropy(outputs[task].float(), targets, ignore_index=IGNORE_INDEX).nan_to_num(0.0)
            loss = loss + weight * task_loss
            known = targets != IGNORE_INDEX
            extra[f"{task}_accuracy"] = ((outputs[task].argmax(1) == targets) & known).sum() / known.sum().clamp(min=1)
        if objective.transcript_weight > 0:
            transcript_loss = ctc_loss(outputs[CTC], outputs["frame_mask"], batch.text, batch.text_lengths)
            loss = loss + objective.transcript_weight * transcript_loss
            extra["ctc_loss"] = transcript_loss.detach()
        return loss, extra

    evaluate = validation_scorer(train, val, classes, cfg, runtime, rate)
    if cfg.head_init == "probe" and f"heads.{EMOTION}.weight" in fresh:  # a later stage keeps the emotion head it starts from
        init_head_by_probe(model, UtteranceDataset(train, label_index, rate, None, Crop.NONE), cfg, runtime)
    result = fit(model, loader, sampler, loss_fn, train_cfg, runtime, evaluate=evaluate, select="val_ua")
    model.load_state_dict(result.best_state)
    model = model.to(runtime.device).eval()
    val_metrics = {k.removeprefix("val_"): v for k, v in result.best_metrics.items() if k.startswith("val_")}
    metrics = {"val": val_metrics, "best_epoch": result.best_metrics.get("epoch"), "classes": list(classes)}
    if test:
        test_set = UtteranceDataset(test, label_index, rate, None, Crop.NONE)
        metrics["test"], indices, logits = evaluate_classifier(model, test_set, classes, cfg, runtime)
    used = {"trained_on": describe_utterances(train), "selected_on": describe_utterances(val)}
    if test:
        used["tested_on"] = describe_utterances(test)
    if runtime.is_main:
        with atomic_directory(out) as tmp:
            model.encoder.save(encoder_dir(tmp))
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE))
            description = {"pooling": pooling, "classes": list(classes), "objective": asdict(objective), "head_norm": cfg.head_norm, "dropout": cfg.dropout, "layers": cfg.layers,
                           "loudness": cfg.loudness, "spectral_balance": cfg.spectral_balance}
            (tmp / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
            if test:
                probabilities = torch.softmax(logits, dim=1).numpy()
                write_evaluation(tmp, metrics, [test_set.utterances[i] for i in indices], probabilities, classes)
            write_record(
                tmp,
                training_record(
                    phase,
                    started,
                    runtime,
                    params={"config": cfg, "pooling": pooling, "classes": list(classes), "objective": objective},
                    upstream={"encoder": str(encoder), "encoder_fingerprint": encoder_fingerprint(encoder), **({"init": str(init)} if init else {})},
                    used=used,
                    results={"metrics": metrics, "best": result.best_metrics, "history": result.history, "resumed_from_epoch": result.resumed_from_epoch},
                ),
            )
    runtime.barrier()
    return metrics


def run_stage1(**kwargs) -> dict:
    """Stage 1: SER with the auxiliary tasks, no test."""
    return run_multitask(phase="mtl_stage1", **kwargs)


def run_stage2(**kwargs) -> dict:
    """Stage 2: from stage 1, with ARI and co-attention; scored on the test session."""
    return run_multitask(phase="mtl_stage2", **kwargs)
