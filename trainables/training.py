"""The training loop every training phase shares, readable top to bottom.

Per epoch: train on this rank's bucketed batches (each one optimizer update,
run as several forward/backward parts when ``micro_batch_seconds`` asks for
gradient accumulation), evaluate, keep the best state by the selection
metric, report the metrics and a resumable checkpoint.
A restarted run (a worker died; the process was killed) resumes after the last
reported epoch with the same optimizer, schedule and best-so-far state.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup, set_seed

from trainables.config import TrainConfig
from trainables.data.batching import Batch, BucketBatchSampler, UtteranceDataset, collate
from trainables.runtime import Runtime, autocast, load_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators with transformers' ``set_seed`` (HF's SpecAugment draws from numpy's).

    Called by each training phase before it builds its model, so a phase's
    output depends on its inputs only, not on what ran earlier in the process.
    """
    set_seed(seed % 2**32)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def make_loader(dataset: UtteranceDataset, cfg: TrainConfig, runtime: Runtime, shuffle: bool, collate_fn=collate) -> tuple[DataLoader, BucketBatchSampler]:
    sampler = BucketBatchSampler(
        dataset.durations(), cfg.max_batch_seconds, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=shuffle, seed=cfg.seed
    )
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.loader_workers)
    return loader, sampler


def _decays(name: str, parameter: nn.Parameter) -> bool:
    """Whether AdamW decays ``parameter``: weight matrices yes; biases, normalisation scales and the mask embedding (vectors) never."""
    return parameter.ndim >= 2 and "masked_spec_embed" not in name


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the encoder at ``lr`` and new layers at ``head_lr``; weight decay on weight matrices only."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((name.startswith("encoder."), _decays(name, parameter)), []).append(parameter)
    params = [
        {"params": members, "lr": cfg.lr if in_encoder else cfg.head_lr, "weight_decay": cfg.weight_decay if decays else 0.0}
        for (in_encoder, decays), members in sorted(groups.items(), reverse=True)
    ]
    return torch.optim.AdamW(params, betas=tuple(cfg.betas))


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear warm-up over ``warmup_fraction`` of the updates, then linear decay to 0."""
    return get_linear_schedule_with_warmup(optimizer, max(1, int(warmup_fraction * total_steps)), total_steps)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def fit(
    model: nn.Module,
    loader: DataLoader,
    sampler: BucketBatchSampler,
    loss_fn: Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]],
    cfg: TrainConfig,
    runtime: Runtime,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    select: str | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` and return the best state by ``select`` (higher is better).

    ``loss_fn(model, batch)`` returns the loss and extra metrics to log (0-d
    tensors, summed on the device: the loop never waits on the host per step);
    ``evaluate(unwrapped_model)`` returns epoch metrics (it must hold ``select``
    if given). Without ``select`` the last epoch's state is returned.
    """
    torch.manual_seed(cfg.seed + runtime.rank)
    model = runtime.wrap(model)
    optimizer = _optimizer(unwrap(model), cfg)
    steps_per_epoch = len(sampler)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_updates or math.inf)
    epochs = math.ceil(total_steps / max(1, steps_per_epoch))
    scheduler = _schedule(optimizer, int(total_steps), cfg.warmup_fraction)
    start_epoch, best_score, best_state, best_metrics, history = 0, -math.inf, None, {}, []
    resumed_from = None

    checkpoint_dir = runtime.latest_checkpoint()
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_score = state["epoch"] + 1, state["best_score"]
        best_state, best_metrics, history = state["best_state"], state["best_metrics"], state["history"]
        resumed_from = state["epoch"]
        logger.info("resumed from the checkpoint of epoch %d in %s", state["epoch"], checkpoint_dir)

    epochs_without_gain = 0
    for epoch in range(start_epoch, epochs):
        model.train()
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        totals: dict[str, torch.Tensor] = {}
        samples = torch.zeros((), device=runtime.device)
        steps = 0
        for batch in loader:
            if scheduler.last_epoch >= total_steps:
                break  # the update budget (max_updates) ends inside this epoch
            optimizer.zero_grad(set_to_none=True)
            parts = batch.split(cfg.micro_batch_seconds, unwrap(model).encoder.info.sample_rate)
            for index, part in enumerate(parts):
                part = part.to(runtime.device)
                share = len(part) / len(batch)  # each part's mean loss weighted by its share of the batch's utterances
                with runtime.no_sync(model, last=index == len(parts) - 1):  # DDP all-reduces the gradients once, after the last part
                    with autocast(runtime.device):
                        loss, extra = loss_fn(model, part)
                    (loss * share).backward()
                for key, value in {"loss": loss.detach(), **extra}.items():
                    totals[key] = totals[key] + share * value if key in totals else share * value.float()
                samples += part.attention_mask.sum()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            steps += 1
        metrics = {f"train_{k}": v.item() / max(1, steps) for k, v in totals.items()}  # the epoch's one host sync
        audio_seconds = samples.item() / unwrap(model).encoder.info.sample_rate
        seconds = time.perf_counter() - started
        metrics.update(epoch=epoch, train_steps=steps, train_seconds=seconds, train_audio_s_per_s=audio_seconds * runtime.world_size / max(seconds, 1e-9))
        if evaluate is not None:
            model.eval()
            with torch.no_grad(), autocast(runtime.device):
                metrics.update(evaluate(unwrap(model)))
        score = metrics[select] if select else float(epoch)
        improved = score > best_score
        if improved:
            best_score, best_state, best_metrics = score, _cpu_state(model), dict(metrics)
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        history.append(metrics)
        state: dict[str, Any] | None = None
        if runtime.is_main:
            state = {
                "model": _cpu_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "epochs": epochs,
                "best_score": best_score,
                "best_state": best_state,
                "best_metrics": best_metrics,
                "history": history,
            }
        runtime.report(metrics, state)
        if cfg.patience is not None and epochs_without_gain >= cfg.patience:
            logger.info("early stop after epoch %d: no better %s for %d epochs", epoch, select, cfg.patience)
            break
    if best_state is None:  # resumed after the final epoch
        best_state = _cpu_state(model)
    return FitResult(best_state=copy.copy(best_state), best_metrics=best_metrics, history=history, resumed_from_epoch=resumed_from)


def inference_outputs(
    model: nn.Module, dataset: UtteranceDataset, max_batch_seconds: float, runtime: Runtime, forward: Callable[[nn.Module, Batch], torch.Tensor]
) -> tuple[list[int], torch.Tensor]:
    """``forward(model, batch)`` ``[B, ...]`` for every item of ``dataset``, without gradients, gathered from all ranks.

    Returns dataset indices (sorted) and the outputs in that order (float32, CPU).
    Each rank runs every ``world_size``-th batch of the encoder's :meth:`~trainables.models.encoder.SpeechEncoder.inference_batches`
    (one utterance each for an encoder whose frames depend on padding); no collective runs inside the
    model, so ranks may hold different numbers of batches.
    """
    batches = unwrap(model).encoder.inference_batches(dataset.durations(), max_batch_seconds, runtime.device)
    indices: list[int] = []
    outputs: list[torch.Tensor] = []
    for batch_indices in batches[runtime.rank :: runtime.world_size]:
        batch = collate([dataset[i] for i in batch_indices]).to(runtime.device)
        with torch.no_grad(), autocast(runtime.device):
            output = forward(model, batch)
        indices.extend(batch_indices)
        outputs.append(output.float().cpu())
    local = (indices, torch.cat(outputs) if outputs else torch.empty(0))
    gathered = runtime.all_gather(local)
    all_indices = [i for part, _ in gathered for i in part]
    all_outputs = torch.cat([output for _, output in gathered if output.numel()])
    order = sorted(range(len(all_indices)), key=all_indices.__getitem__)
    return [all_indices[i] for i in order], all_outputs[order]


def predict_logits(
    model: nn.Module, dataset: UtteranceDataset, max_batch_seconds: float, runtime: Runtime, task: str
) -> tuple[list[int], torch.Tensor]:
    """Logits ``[N, classes]`` of ``task`` for every item of ``dataset`` (:func:`inference_outputs`), with the sorted dataset indices."""
    return inference_outputs(model, dataset, max_batch_seconds, runtime, lambda net, batch: net(batch.waveforms, batch.attention_mask)[task])
