"""Where bit-equality stops on CPU: one fold's five phases under 1 and 2 torch threads, each run twice.

ser-study's determinism guarantee (tests/test_determinism.py) is for the same
study file, seed and machine set-up. One set-up detail changes floating-point
results without changing anything a user wrote: the number of torch intra-op
threads, which sets the order of the additions inside matrix products. Fold
tasks on Ray run with one thread; ``ser-study run-fold`` run by hand uses
torch's default (the machine's cores). This benchmark measures how far apart
the two are, so that a rerun's numbers can be read against a bound.

For each fold it runs the chain (TAPT, embeddings, k-means, CPT, fine-tuning;
``LocalExecutor``, its own empty cache each time) four times: 1 thread twice,
2 threads twice. It compares

* each phase artifact's files (SHA-256 from its ``record.json``): identical or not;
* the k-means pseudo labels: the share of frames with the same label, after
  matching cluster ids (Hungarian), since differing centroids may be numbered
  differently;
* validation and test UA and WA.

Inputs: a generated corpus (``--utterances-per-session``) and a tiny HuBERT
given a short MFCC-cluster pretraining (as ``make demo`` does), so the
fine-tuned metrics are above chance and their differences mean something.

Run (as recorded in bench/results/cpu_threads.md; about 5 minutes on 2 vCPUs):

    .venv/bin/python bench/cpu_threads.py
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from machine import describe_machine
from study.cache.store import ArtifactCache
from study.cache.chain import FoldChain, FoldResult, run_fold_chain
from trainables.atomic import atomic_write_text
from trainables.data.demo_corpus import DemoCorpusConfig, generate_demo_corpus
from trainables.data.iemocap import read_iemocap
from trainables.data.labels import get_label_set
from trainables.executors import LocalExecutor
from trainables.config import TinyEncoderConfig
from trainables.models.encoder import make_tiny_encoder
from trainables.phases.artifacts import read_record
from trainables.phases.clustering import LABELS_FILE
from trainables.phases.acoustic_pretrain import pretrain_on_acoustic_clusters
from trainables.config import smoke_settings
from trainables.data.folds import FoldProtocol

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "cpu_threads.md"
PHASES = ("tapt", "embeddings", "clustering", "cpt", "finetune")
#: The candidate every run trains: the demo's best configuration (bench/results/demo.md).
CANDIDATE = {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "attention"}
#: The runs per fold: (label, torch threads).
RUNS = (("1 thread, run 1", 1), ("1 thread, run 2", 1), ("2 threads, run 1", 2), ("2 threads, run 2", 2))
#: The comparisons reported: the same set-up twice, then 1 vs 2 threads.
PAIRS = (("1 thread, run 1", "1 thread, run 2"), ("2 threads, run 1", "2 threads, run 2"), ("1 thread, run 1", "2 threads, run 1"),
         ("1 thread, run 2", "2 threads, run 2"))

logger = logging.getLogger("cpu_threads")


def make_inputs(workdir: Path, utterances_per_session: int, pretrain_epochs: int) -> tuple[list, Path]:
    """The generated corpus's utterances and a tiny encoder pretrained on MFCC clusters (on 1 thread, once)."""
    corpus = generate_demo_corpus(workdir / "corpus", DemoCorpusConfig(utterances_per_session=utterances_per_session, seed=7))
    utterances = read_iemocap(corpus, get_label_set("4class")).utterances
    initial = make_tiny_encoder(workdir / "initial", TinyEncoderConfig())
    settings = smoke_settings(epochs=pretrain_epochs)
    encoder = workdir / "encoder"
    pretrain_on_acoustic_clusters(initial, utterances, encoder, replace(settings.cpt, train=replace(settings.cpt.train, seed=0)))
    return utterances, encoder


def file_hashes(cache: ArtifactCache, result: FoldResult) -> dict[str, dict[str, str]]:
    """Phase -> {file: SHA-256} of the artifacts a chain built (from each artifact's record)."""
    return {phase: {name: entry["sha256"] for name, entry in read_record(cache.path(phase, result.artifacts[phase]))["files"].items()}
            for phase in PHASES}


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of frames with the same pseudo label after the best one-to-one matching of cluster ids."""
    if a.shape != b.shape:
        raise ValueError(f"pseudo labels of different shapes: {a.shape} vs {b.shape}")
    k = int(max(a.max(), b.max())) + 1
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (a.astype(np.int64), b.astype(np.int64)), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / a.size)


def run_fold(utterances: list, encoder: Path, fold: int, threads: int, cache: Path, epochs: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    classes = get_label_set("4class").classes
    started = time.perf_counter()
    artifacts = ArtifactCache(cache)
    result = run_fold_chain(FoldChain(utterances, fold, FoldProtocol(), "alignment", CANDIDATE, smoke_settings(epochs=epochs), str(encoder), classes), artifacts, LocalExecutor())
    labels = np.load(artifacts.path("clustering", result.artifacts["clustering"]) / LABELS_FILE)
    return {"seconds": time.perf_counter() - started, "val": result.val, "test": result.test, "hashes": file_hashes(artifacts, result), "labels": labels}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "identical": [phase for phase in PHASES if a["hashes"][phase] == b["hashes"][phase]],
        "label_agreement": label_agreement(a["labels"], b["labels"]),
        **{f"d_{split}_{metric}": abs(a[split][metric] - b[split][metric]) for split in ("val", "test") for metric in ("ua", "wa")},
    }


def render(args: argparse.Namespace, runs: dict[int, dict[str, dict]], comparisons: dict[int, dict[tuple, dict]], started_at: str, seconds: float) -> str:
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/cpu_threads.py", *sys.argv[1:]])
    lines = [
        "# Where bit-equality stops on CPU: torch threads",
        "",
        f"- date: {started_at}; run time {seconds / 60:.1f} min",
        f"- machine: {describe_machine()}",
        f"- command: `{command}`",
        f"- corpus: generated, {args.utterances_per_session} utterances per session; encoder: tiny HuBERT (`TinyEncoderConfig()`) "
        f"pretrained {args.pretrain_epochs} epochs on MFCC clusters; phases `smoke_settings(epochs={args.epochs})`; "
        f"candidate layer {CANDIDATE['layer']}, K {CANDIDATE['clusters']}, mask {CANDIDATE['mask_ratio']}, {CANDIDATE['pooling']} pooling; strict protocol",
        "",
        "## Runs",
        "",
        "| fold | run | seconds | val UA | val WA | test UA | test WA |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fold, by_label in runs.items():
        for label, run in by_label.items():
            lines.append(f"| {fold} | {label} | {run['seconds']:.1f} | {100 * run['val']['ua']:.2f} | {100 * run['val']['wa']:.2f} | "
                         f"{100 * run['test']['ua']:.2f} | {100 * run['test']['wa']:.2f} |")
    lines += ["", "## Comparisons", "", "| fold | runs compared | identical artifacts | pseudo-label agreement | val UA difference | test UA difference | test WA difference |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for fold, pairs in comparisons.items():
        for (a, b), c in pairs.items():
            identical = "all 5" if len(c["identical"]) == len(PHASES) else (", ".join(c["identical"]) or "none")
            lines.append(f"| {fold} | {a} vs {b} | {identical} | {100 * c['label_agreement']:.2f} % | {100 * c['d_val_ua']:.2f} | "
                         f"{100 * c['d_test_ua']:.2f} | {100 * c['d_test_wa']:.2f} |")
    across = [c for pairs in comparisons.values() for (a, b), c in pairs.items() if a.split(",")[0] != b.split(",")[0]]
    same = [c for pairs in comparisons.values() for (a, b), c in pairs.items() if a.split(",")[0] == b.split(",")[0]]
    lines += [
        "",
        "## Summary",
        "",
        f"- Same thread count twice: {sum(len(c['identical']) == len(PHASES) for c in same)} of {len(same)} pairs byte-identical in every phase.",
        f"- 1 vs 2 threads: the largest differences over {len(across)} pairs are {100 * max(c['d_test_ua'] for c in across):.2f} points of test UA, "
        f"{100 * max(c['d_test_wa'] for c in across):.2f} of test WA and {100 * max(c['d_val_ua'] for c in across):.2f} of validation UA; "
        f"pseudo labels agree on at least {100 * min(c['label_agreement'] for c in across):.2f} % of frames.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", default="1,2", help="test sessions (default 1,2)")
    parser.add_argument("--utterances-per-session", type=int, default=30, help="size of the generated corpus")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="epochs of the encoder's MFCC-cluster pretraining")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of TAPT, CPT and fine-tuning")
    parser.add_argument("--workdir", type=Path, help="where corpus, encoder and caches go (default: a temporary directory, removed)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    folds = [int(f) for f in args.folds.split(",")]
    started_at, started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="cpu-threads-"))
    try:
        torch.set_num_threads(1)
        utterances, encoder = make_inputs(root, args.utterances_per_session, args.pretrain_epochs)
        runs: dict[int, dict[str, dict]] = {}
        for fold in folds:
            runs[fold] = {}
            for label, threads in RUNS:
                cache = root / f"cache-fold{fold}-{label.replace(' ', '').replace(',', '-')}"
                shutil.rmtree(cache, ignore_errors=True)
                runs[fold][label] = run_fold(utterances, encoder, fold, threads, cache, args.epochs)
                logger.info("fold %d, %s: test UA %.4f in %.1f s", fold, label, runs[fold][label]["test"]["ua"], runs[fold][label]["seconds"])
        comparisons = {fold: {pair: compare(runs[fold][pair[0]], runs[fold][pair[1]]) for pair in PAIRS} for fold in folds}
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    text = render(args, runs, comparisons, started_at, time.perf_counter() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
