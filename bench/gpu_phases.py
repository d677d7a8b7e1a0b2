"""Throughput of the GPU phases on a HuBERT-base-sized encoder: audio seconds per second and the share of the bf16 peak.

Plain PyTorch and transformers (no Ray, no MLflow, nothing else of this
project), so that it runs on a bare GPU machine. The encoder is HuBERT-base's
architecture (``HubertConfig()`` defaults, randomly initialised: nothing is
downloaded), in bf16 autocast on CUDA, its CNN frozen as every phase of the
study freezes it. Batches follow IEMOCAP's durations (log-normal, median
3.4 s, 0.6-34 s) packed like the study's bucket sampler: at most
``--batch-seconds`` of padded audio per batch.

Phases measured (each ``--steps`` timed steps after ``--warmup``):

* ``finetune``: the training step of TAPT's supervised step and of
  fine-tuning (6 s crops, attention pooling, linear head, cross-entropy);
* ``cpt``: the training step of CPT and TAPT's masked pretraining (15 s
  crops, 50 % of frames masked in spans of 10, a cosine head over 500 labels);
* ``embed``: the embedding pass (no crop, inference, every hidden state).

Model FLOPs per second of audio are counted from the architecture (the CNN
forward; the projection, positional convolution and transformer forward, and
twice that backward in training; attention quadratic in the padded length),
so the share of the peak (MFU) is model FLOPs x audio seconds per second /
peak bf16 FLOPs (dense: H100 and H200 989 TFLOPS, A100 312; ``--peak-tflops``
for others).

Run on a GPU: ``python bench/gpu_phases.py`` (``--attention eager`` or
``--compile`` to compare; ``--output FILE`` writes the markdown table).
``--device cpu --tiny --steps 1 --warmup 0`` is the smoke run the test suite makes.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import HubertConfig, HubertModel

SAMPLE_RATE = 16000
#: bf16 dense peak TFLOPS by device-name fragment.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


@dataclass(frozen=True)
class Phase:
    name: str
    crop_seconds: float | None
    train: bool
    mask_ratio: float = 0.0
    labels: int = 4


PHASES = {
    "finetune": Phase("finetune", 6.0, True, labels=4),
    "cpt": Phase("cpt", 15.0, True, mask_ratio=0.5, labels=500),
    "embed": Phase("embed", None, False),
}


def iemocap_durations(count: int, seed: int = 0) -> np.ndarray:
    """IEMOCAP-like utterance durations in seconds: log-normal around a 3.4 s median, clipped to 0.6-34 s."""
    return np.clip(np.random.default_rng(seed).lognormal(mean=math.log(3.4), sigma=0.65, size=count), 0.6, 34.0)


def buckets(durations: np.ndarray, crop: float | None, max_batch_seconds: float) -> list[list[float]]:
    """Sorted, greedily packed batches with ``len(batch) * longest <= max_batch_seconds`` (the study's bucket sampler)."""
    lengths = sorted(min(d, crop) if crop else d for d in durations)
    batches, current = [], []
    for length in lengths:
        if current and (len(current) + 1) * length > max_batch_seconds:
            batches.append(current)
            current = []
        current.append(length)
    return batches + ([current] if current else [])


def cnn_frames(config: HubertConfig, samples: int) -> list[int]:
    lengths = []
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        samples = (samples - kernel) // stride + 1
        lengths.append(samples)
    return lengths


def forward_flops(config: HubertConfig, samples: int) -> tuple[float, float]:
    """(CNN, the rest) forward FLOPs of one utterance of ``samples`` padded samples."""
    channels = [1, *config.conv_dim]
    lengths = cnn_frames(config, samples)
    cnn = sum(2.0 * length * channels[i] * channels[i + 1] * kernel for i, (length, kernel) in enumerate(zip(lengths, config.conv_kernel)))
    frames, d = lengths[-1], config.hidden_size
    per_frame = 2.0 * config.conv_dim[-1] * d  # feature projection
    per_frame += 2.0 * d * (d // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings  # positional conv
    per_layer = 8.0 * d * d + 4.0 * d * config.intermediate_size + 4.0 * frames * d  # QKV+O, FFN, QK^T and AV
    return cnn, frames * (per_frame + config.num_hidden_layers * per_layer)


def make_model(config: HubertConfig, attention: str, device: torch.device) -> HubertModel:
    config._attn_implementation = attention
    model = HubertModel(config).to(device)
    model.feature_extractor._freeze_parameters()
    return model


def span_mask(batch: int, frames: int, ratio: float, generator: torch.Generator, span: int = 10) -> torch.Tensor:
    """``[batch, frames]`` bool with about ``ratio`` of each row masked in spans (built on the host, ahead of the step)."""
    starts = torch.rand(batch, frames, generator=generator) < ratio / span
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for offset in range(span):
        mask[:, offset:] |= starts[:, : frames - offset]
    return mask


def run_phase(model: HubertModel, phase: Phase, batches: list[list[float]], args: argparse.Namespace, device: torch.device) -> dict:
    config = model.config
    hidden = config.hidden_size
    pool_score = torch.nn.Linear(hidden, 1).to(device)
    head = torch.nn.Linear(hidden, phase.labels).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(pool_score.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=device.type == "cuda") if phase.train else None
    forward = model
    if args.compile:
        forward = torch.compile(model, dynamic=True)
    model.train(phase.train)
    generator = torch.Generator().manual_seed(0)
    timed, audio, flops = 0.0, 0.0, 0.0
    steps = args.warmup + args.steps
    order = np.random.default_rng(1).permutation(len(batches))
    for step in range(steps):
        batch = batches[order[step % len(batches)]]
        samples = int(max(batch) * SAMPLE_RATE)
        waveforms = torch.randn(len(batch), samples, generator=generator).to(device, non_blocking=True)
        attention_mask = torch.zeros(len(batch), samples, dtype=torch.long)
        for row, seconds in enumerate(batch):
            attention_mask[row, : int(seconds * SAMPLE_RATE)] = 1
        frames = cnn_frames(config, samples)[-1]
        mask = span_mask(len(batch), frames, phase.mask_ratio, generator) if phase.mask_ratio else None
        labels = torch.randint(0, phase.labels, (len(batch), frames) if phase.mask_ratio else (len(batch),), generator=generator)
        attention_mask, labels = attention_mask.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mask = None if mask is None else mask.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), torch.set_grad_enabled(phase.train):
            out = forward(waveforms, attention_mask=attention_mask, mask_time_indices=mask, output_hidden_states=not phase.train)
            states = out.last_hidden_state
            if phase.train and phase.mask_ratio:
                logits = F.normalize(head.weight.float(), dim=-1) @ F.normalize(states[mask].float(), dim=-1).T
                loss = F.cross_entropy(logits.T / 0.1, labels[mask])
            elif phase.train:
                weights = torch.softmax(pool_score(states).squeeze(-1).float(), dim=1)
                loss = F.cross_entropy(head(torch.einsum("bf,bfh->bh", weights.to(states.dtype), states)).float(), labels)
        if phase.train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            timed += time.perf_counter() - started
            audio += sum(batch)
            cnn, rest = forward_flops(config, samples)
            flops += len(batch) * (cnn + (3.0 if phase.train else 1.0) * rest)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    return {
        "phase": phase.name,
        "batches": len(batches),
        "steps": args.steps,
        "step_s": timed / max(1, args.steps),
        "audio_s_per_s": audio / timed,
        "tflops": flops / timed / 1e12,
        "mfu": flops / timed / peak if peak else float("nan"),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention implementation")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (dynamic shapes)")
    parser.add_argument("--batch-seconds", type=float, default=160.0, help="padded audio per batch (the hubert preset's max_batch_seconds)")
    parser.add_argument("--utterances", type=int, default=2000, help="IEMOCAP-like durations drawn (batches are packed from them)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide encoder: the CPU smoke run")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of the device (default: looked up by its name)")
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine (or --device cpu --tiny for a smoke run)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = next((value for key, value in PEAK_TFLOPS.items() if key in name), None)
    torch.backends.cuda.matmul.allow_tf32 = True
    config = HubertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7) if args.tiny else HubertConfig()
    config.apply_spec_augment = True  # the masked step passes its own mask_time_indices; fine-tuning keeps SpecAugment, as the preset
    durations = iemocap_durations(args.utterances)
    rows = []
    for phase_name in args.phases:
        phase = PHASES[phase_name]
        model = make_model(config, args.attention, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows.append(run_phase(model, phase, buckets(durations, phase.crop_seconds, args.batch_seconds), args, device))
        print(rows[-1], flush=True)
        del model
    header = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- device: {name}; torch {torch.__version__}; bf16 peak {args.peak_tflops or 'unknown'} TFLOPS",
        f"- encoder: {'tiny' if args.tiny else 'HuBERT-base (HubertConfig())'}; attention {args.attention}; compile {args.compile}; "
        f"batches of <= {args.batch_seconds:g} s padded audio",
        "",
        "| phase | step (s) | audio s / s | model TFLOPS | share of bf16 peak | peak memory (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines = [f"| {r['phase']} | {r['step_s']:.3f} | {r['audio_s_per_s']:.0f} | {r['tflops']:.1f} | {100 * r['mfu']:.1f} % | {r['peak_mem_gib']:.1f} |" for r in rows]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
