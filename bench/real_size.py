"""The real-size path on a CPU: HuBERT-base's exact architecture through one fold of every recipe with the ``hubert`` preset.

The encoder is transformers' ``HubertConfig()`` (HuBERT-base: 12 layers, 768
wide, 95M parameters), randomly initialised and saved locally: nothing is
downloaded. The corpus is the generated one (``--utterances-per-session``
per session). Each recipe runs one fold (``--fold``) through one shared
artifact cache with the ``hubert`` preset's settings, except: ``--epochs``
per training phase, k-means on faiss (CPU) and gradient accumulation over
parts of ``--micro-batch-seconds`` of audio (the same updates as the preset's
160 s batches, in the memory a CPU has). ``--max-batch-seconds`` makes the
batches shorter, so that a few dozen utterances give several updates per epoch:
whether each phase's training loss falls on the real-size architecture.

Per phase it records the wall time and the peak resident memory of the
process (sampled every 50 ms by a thread; the whole process, so it includes
what earlier phases left allocated), and per training phase its updates and
the training loss of each epoch.

Run: ``.venv/bin/python bench/real_size.py`` (defaults: 10 utterances per
session, 2 epochs, every recipe; writes ``bench/results/real_size.md``).
``bench/results/real_size_training.md`` is the same with 8 s batches for 4
epochs (its command is in it). ``tests/test_real_size.py`` runs it with fewer
utterances and one epoch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from transformers import HubertConfig

from machine import describe_machine
from study.cache.chain import FoldChain, run_fold_chain
from study.cache.store import ArtifactCache
from trainables.atomic import atomic_write_text
from trainables.config import PRESETS
from trainables.data.demo_corpus import DemoCorpusConfig, generate_demo_corpus
from trainables.data.folds import FoldProtocol
from trainables.data.iemocap import read_iemocap
from trainables.data.labels import classes_of, get_label_set
from trainables.executors import LocalExecutor
from trainables.models.encoder import save_random_encoder
from trainables.phases.artifacts import read_record

RESULTS = Path(__file__).parent / "results" / "real_size.md"
RECIPES = ("alignment", "gmp_tl", "metadata", "finetune", "tapt", "egemaps")
#: One candidate per recipe at HuBERT-base's layer 9; K small enough for a few dozen utterances.
PARAMS: dict[str, dict[str, Any]] = {
    "alignment": {"layer": 9, "clusters": 50, "mask_ratio": 0.2, "pooling": "attention"},
    "gmp_tl": {"scales": "9:50,9:100", "pooling": "attention"},
    "metadata": {"pooling": "attention"},
    "finetune": {"pooling": "attention"},
    "tapt": {},
    "egemaps": {},
}

logger = logging.getLogger("bench.real_size")


class PeakMemory:
    """The peak resident memory of this process while a ``with`` block runs (sampled by a thread)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


class MeasuredExecutor(LocalExecutor):
    """The local executor, timing each phase and sampling its peak memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def _measure(self, kind: str, phase: str, out: Path, run) -> Any:
        started = time.perf_counter()
        with PeakMemory() as memory:
            value = run()
        row = {"phase": phase, "kind": kind, "seconds": time.perf_counter() - started, "peak_gib": memory.peak / 2**30, "artifact": out}
        self.rows.append(row)
        logger.info("%s: %.0f s, peak %.2f GiB", phase, row["seconds"], row["peak_gib"])
        return value

    def train(self, phase: str, out: Path, **kwargs: Any) -> Any:
        return self._measure("train", phase, out, lambda: super(MeasuredExecutor, self).train(phase, out, **kwargs))

    def task(self, phase: str, out: Path, **kwargs: Any) -> Any:
        return self._measure("task", phase, out, lambda: super(MeasuredExecutor, self).task(phase, out, **kwargs))


def training(row: dict[str, Any]) -> dict[str, Any]:
    """A measured phase's ``losses`` (the training loss of each epoch) and ``updates`` (optimizer updates over all epochs), from its record.

    A task phase trains nothing: no losses, and ``updates`` is None.
    """
    if row["kind"] != "train":
        return {"losses": [], "updates": None}
    history = read_record(row["artifact"]).get("results", {}).get("history") or []
    return {"losses": [epoch["train_loss"] for epoch in history if "train_loss" in epoch], "updates": int(sum(epoch.get("train_steps", 0) for epoch in history))}


def shortest(utterances: list, per_session: int | None) -> list:
    """The ``per_session`` shortest utterances of each session, half of each gender (all of them for None)."""
    if per_session is None:
        return utterances
    kept = []
    for key in sorted({(u.session, u.gender) for u in utterances}):
        group = sorted((u for u in utterances if (u.session, u.gender) == key), key=lambda u: u.duration_s)
        kept += group[: -(-per_session // 2)]
    return sorted(kept, key=lambda u: u.utt_id)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the corpus and encoder under ``args.workdir``, run every recipe; returns what the report needs."""
    workdir = Path(args.workdir)
    corpus = generate_demo_corpus(workdir / "corpus", DemoCorpusConfig(utterances_per_session=args.utterances_per_session, seed=0))
    utterances = shortest(read_iemocap(corpus, get_label_set("4class")).utterances, args.keep_per_session)
    encoder = save_random_encoder(workdir / "hubert-base-random", HubertConfig(), normalize=False, seed=0)
    batches = {} if args.max_batch_seconds is None else {"max_batch_seconds": args.max_batch_seconds}
    settings = PRESETS["hubert"]().with_training(epochs=args.epochs, micro_batch_seconds=args.micro_batch_seconds, **batches)
    settings = replace(settings, kmeans=replace(settings.kmeans, backend="faiss"), tapt=replace(settings.tapt, pretrain_clusters=args.tapt_clusters))
    executor = MeasuredExecutor()
    cache = ArtifactCache(workdir / "cache")
    outcomes = {}
    for method in args.recipes:
        started = time.perf_counter()
        first = len(executor.rows)
        result = run_fold_chain(FoldChain(utterances, args.fold, FoldProtocol(), method, PARAMS[method], settings, str(encoder), classes_of(utterances)), cache, executor)
        phases = [{**row, **training(row)} for row in executor.rows[first:]]
        outcomes[method] = {"seconds": time.perf_counter() - started, "test_ua": result.test["ua"], "phases": phases}
        logger.info("%s: test UA %.3f in %.0f s", method, result.test["ua"], outcomes[method]["seconds"])
    return {"utterances": len(utterances), "audio_s": sum(u.duration_s for u in utterances), "outcomes": outcomes, "peak_gib": max((r["peak_gib"] for r in executor.rows), default=0.0)}


def report(args: argparse.Namespace, measured: dict[str, Any], total_s: float) -> str:
    command = shlex.join([".venv/bin/python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    lines = [
        "# The real-size path on a CPU: HuBERT-base (random init) through one fold of every recipe",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {describe_machine()}",
        f"- command: `{command}`",
        f"- corpus: generated, {measured['utterances']} utterances ({measured['audio_s']:.0f} s of audio), fold {args.fold} (strict)",
        f"- settings: the `hubert` preset, {args.epochs} epoch(s) per training phase, batches of "
        f"{args.max_batch_seconds or PRESETS['hubert']().finetune.train.max_batch_seconds:g} s of audio (gradient accumulation over "
        f"{args.micro_batch_seconds:g} s parts), k-means on faiss, TAPT's pretraining K {args.tapt_clusters}",
        f"- peak resident memory over the whole run: **{measured['peak_gib']:.2f} GiB** (goal: under 12 GiB); total {total_s / 60:.1f} min",
        "- a phase built by an earlier recipe is cached and not run again (the recipes share TAPT, embeddings and k-means where they can)",
        "",
        "| recipe | phase | wall (s) | peak RSS (GiB) | updates | train loss per epoch |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for method, outcome in measured["outcomes"].items():
        for row in outcome["phases"]:
            trend = " ".join(f"{loss:.3f}" for loss in row["losses"]) or "-"
            steps = "-" if row["updates"] is None else str(row["updates"])
            lines.append(f"| {method} | {row['phase']} | {row['seconds']:.0f} | {row['peak_gib']:.2f} | {steps} | {trend} |")
        lines.append(f"| {method} | **fold total** (test UA {100 * outcome['test_ua']:.1f}, untrained-size data: not a result) | {outcome['seconds']:.0f} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances-per-session", type=int, default=10, help="generated per session (at least 10)")
    parser.add_argument("--keep-per-session", type=int, help="keep only this many of each session, the shortest, half of each gender")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--micro-batch-seconds", type=float, default=20.0)
    parser.add_argument("--max-batch-seconds", type=float, help="audio per update (default: the preset's 160 s); shorter gives more updates per epoch")
    parser.add_argument("--tapt-clusters", type=int, default=100, help="TAPT's masked-pretraining K (the preset's 500 needs more frames than a few dozen utterances)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--workdir", help="where the corpus, encoder and cache go (default: a temporary folder, removed)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON (the test reads it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="real-size-") as scratch:
        args.workdir = args.workdir or scratch
        measured = run(args)
        text = report(args, measured, time.perf_counter() - started)
    print(text)
    atomic_write_text(args.output, text)
    if args.json:
        plain = {**measured, "outcomes": {m: {**o, "phases": [{**r, "artifact": str(r["artifact"])} for r in o["phases"]]} for m, o in measured["outcomes"].items()}}
        atomic_write_text(args.json, json.dumps(plain, indent=2))


if __name__ == "__main__":
    main()
