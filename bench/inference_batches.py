"""Inference without gradients: one utterance at a time against length-bucketed batches, for a group-norm encoder.

HuBERT-base's CNN (group norm) used to be encoded one utterance at a time,
because zero padding shifted its first layer's statistics. With the masked
group norm (``trainables.models.masked_norm``) a padded utterance's frames are
those it has alone, so evaluation, the probe start and embedding may batch. For each
batch budget (padded seconds of audio per batch) this encodes the same
utterances of a manifest, all layers' frames as the classifiers read them, and
reports the wall time and the largest difference of any valid frame from the
one-at-a-time frames; then the batches the phases use on a CPU
(``SpeechEncoder.inference_batches``: the budget, capped so that a batch's
first CNN activation stays in the caches).

Run: ``.venv/bin/python bench/inference_batches.py --manifest demo/manifest.csv --encoder demo/encoder [--hubert-base]``
(``--hubert-base``: also HuBERT-base's architecture, randomly initialised, on
fewer utterances). Writes ``bench/results/cpu_batches.md``.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch
from transformers import HubertConfig

from machine import describe_machine
from trainables.atomic import atomic_write_text
from trainables.data.audio import Crop
from trainables.data.batching import UtteranceDataset, collate, inference_batches
from trainables.data.manifest import read_manifest
from trainables.models.encoder import load_encoder, save_random_encoder

RESULTS = Path(__file__).parent / "results" / "cpu_batches.md"
BUDGETS = (10.0, 20.0, 40.0, 80.0, 320.0)


def encode(encoder, dataset: UtteranceDataset, batches: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
    """Wall seconds and each utterance's valid frames of every layer, ``[N+1, F, H]``, in dataset order."""
    frames: list[torch.Tensor | None] = [None] * len(dataset)
    started = time.perf_counter()
    with torch.no_grad():
        for indices in batches:
            batch = collate([dataset[i] for i in indices])
            out = encoder(batch.waveforms, batch.attention_mask, output_hidden_states=True)
            states = torch.stack(out.hidden_states, dim=1)  # [B, N+1, F, H]
            for row, index in enumerate(indices):
                frames[index] = states[row, :, : int(out.frame_mask[row].sum())]
    return time.perf_counter() - started, frames  # type: ignore[return-value]


def measure(name: str, encoder_path: Path, utterances, budgets) -> list[str]:
    encoder = load_encoder(encoder_path).eval()
    name = f"{name} ({'group' if encoder.info.group_norm else 'layer'} norm)"
    dataset = UtteranceDataset(utterances, {}, encoder.info.sample_rate, None, Crop.NONE)
    audio = sum(dataset.durations())
    alone_seconds, alone = encode(encoder, dataset, inference_batches(dataset.durations(), 1.0, one_at_a_time=True))
    rows = [f"| {name} | {len(dataset)} ({audio:.0f} s) | one at a time | {len(dataset)} | {alone_seconds:.2f} | 1.00 | - |"]
    for budget in budgets:
        batches = inference_batches(dataset.durations(), budget, one_at_a_time=False)
        seconds, batched = encode(encoder, dataset, batches)
        difference = max(float((a - b).abs().max()) for a, b in zip(alone, batched))
        rows.append(f"| {name} | {len(dataset)} ({audio:.0f} s) | {budget:.0f} s | {len(batches)} | {seconds:.2f} | {alone_seconds / seconds:.2f} | {difference:.1e} |")
    batches = encoder.inference_batches(dataset.durations(), 320.0, torch.device("cpu"))
    seconds, _ = encode(encoder, dataset, batches)
    rows.append(f"| {name} | {len(dataset)} ({audio:.0f} s) | 320 s, capped on a CPU (what the phases use) | {len(batches)} | {seconds:.2f} | {alone_seconds / seconds:.2f} | - |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--encoder", type=Path, required=True, help="e.g. the demo's tiny encoder (group norm)")
    parser.add_argument("--utterances", type=int, default=128)
    parser.add_argument("--hubert-base", action="store_true", help="also HuBERT-base's architecture, randomly initialised, on --hubert-utterances")
    parser.add_argument("--hubert-utterances", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a fold's Ray task on the smoke study uses 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utterances = read_manifest(args.manifest)
    rows = measure(args.encoder.name, args.encoder, utterances[: args.utterances], BUDGETS)
    if args.hubert_base:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_random_encoder(Path(tmp) / "hubert-base", HubertConfig(), normalize=False, seed=0)
            rows += measure("HuBERT-base architecture, random", path, utterances[: args.hubert_utterances], BUDGETS[1:4])
    command = " ".join(["bench/inference_batches.py", f"--manifest {args.manifest}", f"--encoder {args.encoder}"] + (["--hubert-base"] if args.hubert_base else []))
    text = "\n".join([
        "# Inference batches on a CPU: one utterance at a time against length-bucketed batches",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {describe_machine()}; torch threads: {args.threads}",
        f"- command: `.venv/bin/python {command}`",
        "- every layer's frames of the same utterances, no gradients; budget: padded seconds of audio per batch;",
        "  difference: the largest absolute difference of any valid frame value from the one-at-a-time frames",
        "",
        "| encoder | utterances (audio) | batches of | batches | seconds | speed-up | difference |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ])
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
