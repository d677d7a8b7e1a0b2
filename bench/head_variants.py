"""Fine-tuning variants of a preset, compared on the same folds: which classifier settings read emotion best.

For each variant (a JSON object of ``ClassifierConfig`` fields, with
``pooling`` and ``train`` for ``TrainConfig`` fields), the preset's
fine-tuning phase (``run_finetune``, as the ``finetune`` baseline runs it,
without Ray) is trained on every fold's training speakers, selected on its
validation speaker and scored on its held-out session. Prints one row per
variant: mean validation and test UA and the test UA per fold.

Run, e.g.::

    .venv/bin/python bench/head_variants.py MANIFEST ENCODER --folds 1 2 3 4 5 \\
        --variant '{"layers": "last", "pooling": "average"}' --variant '{"layers": "weighted", "pooling": "stats"}'

(about 20 s per fold and variant for the tiny encoder on the generated corpora, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def run_variant(manifest: Path, encoder: Path, folds: list[int], preset: str, variant: dict) -> dict:
    """Val and test UA per fold of the preset's fine-tuning with ``variant``'s fields changed."""
    import torch

    from trainables.config import PRESETS
    from trainables.data.folds import FoldSpec, build_fold
    from trainables.data.labels import classes_of
    from trainables.data.manifest import read_manifest
    from trainables.phases.finetune import run_finetune
    from trainables.runtime import LocalRuntime

    torch.set_num_threads(2)
    fields = dict(variant)
    pooling, train_fields = fields.pop("pooling", "average"), fields.pop("train", {})
    cfg = PRESETS[preset]().finetune
    cfg = replace(cfg, train=replace(cfg.train, **train_fields), **fields)
    utterances = read_manifest(manifest)
    by_id = {u.utt_id: u for u in utterances}
    classes = list(classes_of(utterances))
    result = {"val": [], "test": []}
    for session in folds:
        fold = build_fold(utterances, FoldSpec(session))
        train, val, test = ([by_id[i] for i in part.utt_ids] for part in (fold.train, fold.val, fold.test))
        with tempfile.TemporaryDirectory(prefix="ser-head-") as tmp:
            metrics = run_finetune(encoder, pooling, train, val, test, classes, cfg, Path(tmp) / "out", LocalRuntime(Path(tmp) / "checkpoints"))
        result["val"].append(metrics["val"]["ua"])
        result["test"].append(metrics["test"]["ua"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("encoder", type=Path)
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--preset", default="smoke", choices=["smoke", "hubert"])
    parser.add_argument("--variant", action="append", type=json.loads, required=True, help="JSON: ClassifierConfig fields, pooling, train: {TrainConfig fields}")
    args = parser.parse_args()
    print(f"| variant | val UA % | test UA % (mean ± std over folds {args.folds}) | per fold | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for variant in args.variant:
        started = time.perf_counter()
        result = run_variant(args.manifest, args.encoder, args.folds, args.preset, variant)
        test = 100 * np.array(result["test"])
        print(f"| `{json.dumps(variant)}` | {100 * np.mean(result['val']):.1f} | {test.mean():.1f} ± {test.std():.1f} | "
              f"{' '.join(f'{x:.0f}' for x in test)} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
