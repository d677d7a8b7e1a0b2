"""Padding waste of the length-bucketed sampler against fixed-size random batches.

Run: ``.venv/bin/python bench/padding_waste.py [--manifest demo/manifest.csv]``
Writes ``bench/results/padding_waste.md``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np

from machine import describe_machine
from trainables.atomic import atomic_write_text
from trainables.data.batching import BucketBatchSampler, padding_fraction
from trainables.data.iemocap import simulated_durations
from trainables.data.manifest import read_manifest

RESULTS = Path(__file__).parent / "results" / "padding_waste.md"


def random_batches(count: int, batch_size: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(count)
    return [order[i : i + batch_size].tolist() for i in range(0, count, batch_size)]


def measure(name: str, durations: np.ndarray, caps: list[float], epochs: int = 5) -> list[str]:
    rows = []
    for cap in caps:
        bucket_waste, random_waste, steps = [], [], []
        for epoch in range(epochs):
            sampler = BucketBatchSampler(durations, cap, seed=0)
            sampler.set_epoch(epoch)
            batches = sampler.all_batches()
            steps.append(len(batches))
            bucket_waste.append(padding_fraction(batches, durations))
            # Same number of steps per epoch, so the comparison is at equal batch count.
            size = int(np.ceil(len(durations) / len(batches)))
            random_waste.append(padding_fraction(random_batches(len(durations), size, epoch), durations))
        rows.append(
            f"| {name} | {len(durations)} | {cap:.0f} | {np.mean(steps):.0f} | "
            f"{100 * np.mean(bucket_waste):.1f} % | {100 * np.mean(random_waste):.1f} % |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, help="also measure the durations of this manifest")
    args = parser.parse_args()
    rows = measure("IEMOCAP-like (simulated)", simulated_durations(5531, seed=0), [30.0, 60.0, 120.0])
    if args.manifest:
        durations = np.array([u.duration_s for u in read_manifest(args.manifest)])
        rows += measure(f"manifest {args.manifest.name}", durations, [10.0, 20.0])
    text = "\n".join(
        [
            "# Padding waste: length-bucketed batches vs fixed-size random batches",
            "",
            f"- date: {datetime.date.today().isoformat()}; machine: {describe_machine()}",
            "- command: `.venv/bin/python bench/padding_waste.py" + (f" --manifest {args.manifest}" if args.manifest else "") + "`",
            "- waste = padded samples / all samples in the padded batches, mean over 5 epochs;",
            "  random batches have the same number of steps per epoch as the bucketed ones.",
            "",
            "| durations | utterances | cap (padded s per batch) | steps per epoch | bucketed waste | random waste |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )
    atomic_write_text(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
