"""Phase 4, continued pretraining (CPT): predict the pseudo labels of masked frames.

Starting from the pretrained encoder (or, by option, the TAPT one), spans of
frames covering ``mask_ratio`` of each utterance are replaced by the mask
embedding before the transformer, which learns to predict the masked frames'
pseudo labels (HuBERT-style cosine head, or a linear head). Several pseudo-label
sets (e.g. several K at once, as GMP-TL does) get one head each, losses summed.
``mask_ratio`` 0 trains plain frame classification instead: nothing masked,
every valid frame's labels predicted. ``unmasked_weight`` > 0 adds the loss on
the unmasked frames, so weighted (HuBERT's loss on both kinds of frames).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainables.atomic import atomic_directory
from trainables.config import CptConfig
from trainables.data.audio import Crop, load_waveform
from trainables.data.batching import Batch, UtteranceDataset, collate
from trainables.data.manifest import Utterance
from trainables.models.encoder import EncoderInfo, load_encoder
from trainables.phases.artifacts import encoder_fingerprint
from trainables.models.heads import FramePredictor
from trainables.models.masking import achieved_ratio, span_mask
from trainables.phases.artifacts import describe_utterances, encoder_dir, write_record
from trainables.phases.clustering import load_pseudo_labels
from trainables.runtime import Runtime, training_record
from trainables.training import fit, make_loader, seed_everything

IGNORE = -100


class PseudoLabelError(ValueError):
    """Pseudo labels that do not line up with the encoder's frames."""


class FrameLabelDataset(UtteranceDataset):
    """Utterances with their frame pseudo labels (one ``[frames]`` array per label set) and span mask.

    Long utterances are cropped at a multiple of the encoder's frame stride, so
    the cropped waveform's frames are exactly a slice of the full one's. Each
    item's mask (``mask_ratio`` of its frames in spans of ``span``) is drawn
    here, on the loader's side, so the training step never waits on the host.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        label_sets: Mapping[str, Mapping[str, np.ndarray]],
        info: EncoderInfo,
        max_seconds: float | None,
        seed: int,
        mask_ratio: float,
        span: int,
    ):
        super().__init__(utterances, {}, info.sample_rate, max_seconds, Crop.START, seed=seed)
        self.info = info
        self.label_sets = label_sets
        self.crop_samples = self.max_samples
        self.mask_ratio = mask_ratio
        self.span = span
        self.rng = np.random.default_rng(seed)

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        waveform = load_waveform(utt.path, self.info.sample_rate)
        frames = self.info.frame_count(waveform.numel())
        labels = {}
        for name, table in self.label_sets.items():
            utt_labels = table[utt.utt_id]
            if len(utt_labels) != frames:
                raise PseudoLabelError(
                    f"{utt.utt_id}: {len(utt_labels)} pseudo labels in set {name!r} but the encoder gives {frames} frames "
                    f"for its {waveform.numel()} samples; rebuild the embeddings with this encoder's frame arithmetic"
                )
            labels[name] = utt_labels
        if self.crop_samples is not None and waveform.numel() > self.crop_samples:
            stride = self.info.total_stride
            start_frame = int(self.rng.integers(0, (waveform.numel() - self.crop_samples) // stride + 1))
            waveform = waveform[start_frame * stride : start_frame * stride + self.crop_samples]
            kept = self.info.frame_count(waveform.numel())
            labels = {name: values[start_frame : start_frame + kept] for name, values in labels.items()}
            frames = kept
        if self.mask_ratio > 0:
            mask = span_mask(torch.tensor([frames]), frames, self.mask_ratio, self.rng, self.span)[0]
        else:  # frame classification: every frame is a target, none is hidden
            mask = torch.ones(frames, dtype=torch.bool)
        return {"waveform": waveform, "label": -1, "utt_id": utt.utt_id, "index": index, "frame_labels": labels, "frame_mask": mask}


def collate_frames(items: Sequence[dict]) -> Batch:
    """:func:`collate`, plus ``frame_labels``: ``{set: [B, max_frames]}`` padded with -100, and ``frame_mask`` ``[B, max_frames]`` padded with False."""
    batch = collate(items)
    longest = max(len(item["frame_mask"]) for item in items)
    batch.frame_mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for row, item in enumerate(items):
        batch.frame_mask[row, : len(item["frame_mask"])] = item["frame_mask"]
    for name in items[0]["frame_labels"]:
        longest = max(len(item["frame_labels"][name]) for item in items)
        table = torch.full((len(items), longest), IGNORE, dtype=torch.long)
        for row, item in enumerate(items):
            values = torch.from_numpy(np.asarray(item["frame_labels"][name], dtype=np.int64))
            table[row, : len(values)] = values
        batch.frame_labels[name] = table
    return batch


def run_cpt(
    init_encoder: str | Path,
    utterances: Sequence[Utterance],
    clusterings: Mapping[str, Path],
    mask_ratio: float,
    cfg: CptConfig,
    out: Path,
    runtime: Runtime,
) -> dict:
    """Continue pretraining ``init_encoder`` on ``utterances`` to predict masked frames' pseudo labels.

    ``clusterings`` maps a label-set name (e.g. ``"k50"``) to its clustering artifact.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (0: frame classification, nothing masked), got {mask_ratio}")
    started = time.perf_counter()
    seed_everything(cfg.train.seed + runtime.rank)
    encoder = load_encoder(init_encoder, freeze_feature_encoder=cfg.freeze_feature_encoder, attention_dropout=cfg.attention_dropout)
    tables = {name: load_pseudo_labels(path) for name, path in clusterings.items()}
    for name, table in tables.items():
        missing = [u.utt_id for u in utterances if u.utt_id not in table]
        if missing:
            raise PseudoLabelError(f"label set {name!r} has no pseudo labels for {len(missing)} utterances, e.g. {missing[:3]}")
    num_labels = {name: int(max(t.max() for t in table.values())) + 1 for name, table in tables.items()}
    model = FramePredictor(encoder, num_labels, head=cfg.head, mask_input=mask_ratio > 0)
    dataset = FrameLabelDataset(
        utterances, tables, encoder.info, cfg.train.max_train_seconds, seed=cfg.train.seed + runtime.rank, mask_ratio=mask_ratio, span=cfg.span
    )
    loader, sampler = make_loader(dataset, cfg.train, runtime, shuffle=True, collate_fn=collate_frames)

    unmasked_loss = cfg.unmasked_weight > 0 and mask_ratio > 0

    def loss_fn(net, batch: Batch):
        mask = batch.frame_mask
        valid = next(iter(batch.frame_labels.values())) != IGNORE
        logits = net(batch.waveforms, batch.attention_mask, mask, predict_mask=valid if unmasked_loss else None)
        is_masked = mask[valid] if unmasked_loss else None  # which of the predicted frames were masked
        losses, extra = [], {"mask_ratio": achieved_ratio(mask, valid.sum(dim=1))}
        for name, name_logits in logits.items():
            targets = batch.frame_labels[name][valid if unmasked_loss else mask]
            if unmasked_loss:
                per_frame = F.cross_entropy(name_logits.float(), targets, ignore_index=IGNORE, reduction="none")
                masked_loss = per_frame[is_masked].mean().nan_to_num(0.0)
                losses.append(masked_loss + cfg.unmasked_weight * per_frame[~is_masked].mean().nan_to_num(0.0))
                name_logits, targets = name_logits[is_masked], targets[is_masked]  # accuracy: on the masked frames, as without the option
            else:
                losses.append(F.cross_entropy(name_logits.float(), targets, ignore_index=IGNORE))
            extra[f"{name}_accuracy"] = (name_logits.argmax(1) == targets).float().mean().nan_to_num(0.0).detach()
        return sum(losses), extra

    result = fit(model, loader, sampler, loss_fn, cfg.train, runtime)
    model.load_state_dict(result.best_state)
    if runtime.is_main:
        with atomic_directory(out) as tmp:
            model.encoder.save(encoder_dir(tmp))
            write_record(
                tmp,
                training_record(
                    "cpt",
                    started,
                    runtime,
                    params={"config": cfg, "mask_ratio": mask_ratio, "label_sets": num_labels},
                    upstream={"init_encoder": str(init_encoder), "init_fingerprint": encoder_fingerprint(init_encoder), **{f"clustering_{n}": str(p) for n, p in clusterings.items()}},
                    used={"trained_on": describe_utterances(utterances)},
                    results={"final": result.history[-1] if result.history else {}, "history": result.history, "resumed_from_epoch": result.resumed_from_epoch},
                ),
            )
    runtime.barrier()
    return result.history[-1] if result.history else {}
