"""Soak: a study of many cheap trials, watched for leaked Ray resources, memory growth and hangs.

The study is ``search_spaces/smoke.yaml`` on a small generated corpus with a
tiny random encoder, two folds, one epoch per phase, and a search space of ONE
point (layer 2, K 4, mask 0.2, attention) searched by TPE ``--trials`` times.
The first trial builds the 10 phase artifacts (5 phases x 2 folds); every later
trial finds them all in the cache, so it costs what the study machinery costs
per trial: a Tune trial, two fold tasks (cache lookups with SHA-256 checks,
metrics), its MLflow runs (trial, two folds, plots), its record and its audit.

Checked (exit status 1 if any check fails):

* every trial completes and the whole study ends within ``--timeout-s`` (no hang);
* exactly 10 artifacts were built, every other lookup was a hit;
* MLflow holds one finished run per trial, two per trial's folds, and the summary;
* after the study, Ray's available resources equal its total resources, no
  placement group is left unremoved, and the only live actor is the cache
  coordinator (nothing leaked by finished trials);
* the driver's resident memory, sampled as each trial ends, grows by less than
  ``--rss-bound-mib`` from the ``--warmup``-th trial to the last;
* the resident memory of every Ray worker process alive at that trial (the
  reused trial actors, the workers that run fold tasks) grows by less than
  ``--worker-rss-bound-mib`` up to the last trial or the worker's exit.

Run (as recorded in bench/results/soak.md):

    .venv/bin/python bench/soak.py

``tests/test_soak.py`` runs it with ``--trials 100 --no-write`` and reads its ``--json`` output.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import ray
from ray import tune

from machine import describe_machine
from study.cache.store import ArtifactCache
from study.config.loading import load_study
from study.io.layout import cache_dir
from study.tune.runner import run_study
from study.io.records import read_trial_records
from trainables.data.demo_corpus import DemoCorpusConfig, generate_demo_corpus
from trainables.data.iemocap import read_iemocap
from trainables.data.labels import get_label_set
from trainables.data.manifest import write_manifest
from trainables.config import TinyEncoderConfig
from trainables.models.encoder import make_tiny_encoder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "soak.md"
CORPUS = DemoCorpusConfig(utterances_per_session=16, median_duration_s=1.2, max_duration_s=3.0, seed=7)
ENCODER = TinyEncoderConfig(hidden_size=32, num_layers=3, intermediate_size=64)

logger = logging.getLogger("soak")


def ray_workers() -> dict[str, tuple[str, float]]:
    """Every Ray worker process on this machine: pid -> (its title now, its resident memory in MiB).

    Ray titles its workers ``ray::<what runs>`` (``ray::ImplicitFunc`` for a
    trial's reused actor, ``ray::run_fold`` while a fold task runs,
    ``ray::IDLE`` for a pooled worker between tasks); the title changes, the pid does not.
    """
    found: dict[str, tuple[str, float]] = {}
    for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::") and process.info["memory_info"] is not None:
            found[str(process.info["pid"])] = (title.split()[0], round(process.info["memory_info"].rss / 2**20, 1))
    return found


class MemorySampler(tune.Callback):
    """Samples the resident memory of the driver and of the Ray workers each time a trial ends (in the driver process)."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []  # plain data only: Tune pickles its callbacks with the experiment
        self.started = time.monotonic()

    def _sample(self, status: str) -> None:
        rss = psutil.Process(os.getpid()).memory_info().rss
        workers = ray_workers()
        self.samples.append({"trial": len(self.samples) + 1, "status": status, "seconds": round(time.monotonic() - self.started, 2),
                             "rss_mib": round(rss / 2**20, 1), "workers": len(workers), "workers_rss_mib": round(sum(r for _, r in workers.values()), 1),
                             "worker_rss_mib": {pid: rss for pid, (_, rss) in workers.items()},
                             "worker_title": {pid: title for pid, (title, _) in workers.items()}})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._sample("complete")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._sample("error")


def worker_growth(samples: list[dict[str, Any]], warmup: int) -> tuple[float, str]:
    """The largest RSS growth (MiB) of one Ray worker process after trial ``warmup``, and which process.

    For each worker alive at trial ``warmup``: its largest later RSS minus its
    RSS then (a worker that exits before the last trial counts up to its exit).
    """
    if not samples:
        return 0.0, "none"
    start = min(warmup, len(samples)) - 1
    first = samples[start]["worker_rss_mib"]
    growth = {pid: max(s["worker_rss_mib"].get(pid, rss) for s in samples[start:]) - rss for pid, rss in first.items()}
    if not growth:
        return 0.0, "none"
    pid = max(growth, key=growth.get)
    return round(growth[pid], 1), f"pid {pid}, {samples[start]['worker_title'][pid]}"


def make_inputs(workdir: Path) -> tuple[Path, Path]:
    """The generated corpus's manifest and a tiny encoder under ``workdir``."""
    corpus = generate_demo_corpus(workdir / "corpus", CORPUS)
    manifest = workdir / "manifest.csv"
    write_manifest(read_iemocap(corpus, get_label_set("4class")).utterances, manifest)
    return manifest, make_tiny_encoder(workdir / "encoder", ENCODER)


def leaks() -> dict[str, Any]:
    """What is still held in Ray after the study: resources, placement groups, live actors."""
    from ray.util.state import list_actors

    total, available = ray.cluster_resources(), ray.available_resources()
    held = {k: round(total[k] - available.get(k, 0.0), 6) for k in total if not k.startswith("node:") and total[k] - available.get(k, 0.0) > 1e-6}
    groups = [g for g in ray.util.placement_group_table().values() if g.get("state") != "REMOVED"]
    actors = [a.class_name for a in list_actors(filters=[("state", "=", "ALIVE")])]
    return {"resources_held": held, "placement_groups_left": len(groups), "live_actors": sorted(actors)}


def mlflow_runs(uri: str, experiment: str) -> dict[str, int]:
    """Runs of the study's MLflow experiment by kind, and how many did not end FINISHED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=10000)
    counts = collections.Counter(r.data.tags.get("ser_study.kind", "?") for r in found)
    return {**counts, "unfinished": sum(r.info.status != "FINISHED" for r in found)}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    manifest, encoder = make_inputs(workdir)
    study_dir = workdir / "study"
    overrides = [
        "name=soak", f"data.manifest={manifest}", f"encoder={encoder}", f"storage.study_dir={study_dir}", "folds=[1, 2]",
        "phases.epochs=1", "phases.kmeans.max_fit_frames=5000", "baselines=[]",
        "search.space.layer={choice: [2]}", "search.space.clusters={choice: [4]}", "search.space.pooling={choice: [attention]}",
        "search.algorithm=tpe", f"search.num_trials={args.trials}", f"search.max_concurrent={args.max_concurrent}",
    ]
    config = load_study(REPO / "search_spaces" / "smoke.yaml", overrides)
    memory = MemorySampler()
    started = time.monotonic()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        run_study(config, callbacks=[memory])
        wall = time.monotonic() - started
        held = leaks()
    finally:
        ray.shutdown()
    records = read_trial_records(study_dir)
    events = collections.Counter(e["event"] for e in ArtifactCache(cache_dir(study_dir)).events())
    runs = mlflow_runs(config.tracking_uri(), config.name)
    rss = [s["rss_mib"] for s in memory.samples]
    warm = rss[min(args.warmup, len(rss)) - 1] if rss else 0.0
    growth = (max(rss[min(args.warmup, len(rss)) - 1:]) - warm) if rss else 0.0
    workers_growth, grown_worker = worker_growth(memory.samples, args.warmup)
    result = {
        "trials": args.trials,
        "max_concurrent": args.max_concurrent,
        "complete": sum(r["status"] == "complete" for r in records),
        "wall_seconds": round(wall, 1),
        "seconds_per_trial": round(wall / max(args.trials, 1), 2),
        "built": events.get("built", 0),
        "hits": events.get("hit", 0),
        "mlflow_runs": runs,
        "leaks": held,
        "rss_mib_at_warmup": warm,
        "rss_mib_last": rss[-1] if rss else 0.0,
        "rss_growth_mib": round(growth, 1),
        "rss_bound_mib": args.rss_bound_mib,
        "worker_rss_growth_mib": workers_growth,
        "worker_rss_bound_mib": args.worker_rss_bound_mib,
        "worker_grown_most": grown_worker,
        "warmup": args.warmup,
        "samples": memory.samples,
    }
    result["checks"] = {
        "every trial complete": result["complete"] == args.trials,
        "10 artifacts built, the rest hits": result["built"] == 10 and result["hits"] == 10 * (args.trials - 1),
        "every trial and fold in MLflow, finished": runs == {"trial": args.trials, "fold": 2 * args.trials, "summary": 1, "unfinished": 0},
        "no Ray resources held": not held["resources_held"],
        "no placement group left": held["placement_groups_left"] == 0,
        "only the cache coordinator alive": held["live_actors"] in ([], ["CacheCoordinator"]),
        f"driver RSS growth < {args.rss_bound_mib} MiB after trial {args.warmup}": growth < args.rss_bound_mib,
        f"no Ray worker's RSS grows by {args.worker_rss_bound_mib} MiB after trial {args.warmup}": workers_growth < args.worker_rss_bound_mib,
        f"finished within {args.timeout_s} s": wall < args.timeout_s,
    }
    return result


def write_results(result: dict[str, Any], command: str, path: Path) -> None:
    samples = result["samples"]
    every = max(1, len(samples) // 10)
    lines = [
        "# Soak: many cheap trials",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {describe_machine()}",
        f"- command: `{command}`",
        f"- study: smoke.yaml, one-point space (layer 2, K 4, mask 0.2, attention), TPE, {result['trials']} trials, "
        f"{result['max_concurrent']} at a time, 2 folds each; tiny encoder {ENCODER}",
        "",
        "## Result",
        "",
        f"- trials complete: {result['complete']} of {result['trials']}; wall time {result['wall_seconds']} s "
        f"({result['seconds_per_trial']} s per trial, including the first trial's 10 phase builds)",
        f"- phase artifacts built: {result['built']}; cache hits: {result['hits']}",
        f"- MLflow runs: {result['mlflow_runs']}",
        f"- after the study: resources held {result['leaks']['resources_held'] or 'none'}, "
        f"placement groups left {result['leaks']['placement_groups_left']}, live actors {result['leaks']['live_actors']}",
        f"- driver RSS: {result['rss_mib_at_warmup']} MiB after trial {result['warmup']}, {result['rss_mib_last']} MiB after the last; "
        f"growth {result['rss_growth_mib']} MiB (bound {result['rss_bound_mib']} MiB)",
        f"- Ray workers (the reused trial actors, the workers that run fold tasks): the largest RSS growth of one worker alive at trial "
        f"{result['warmup']}, up to the last trial or its exit: {result['worker_rss_growth_mib']} MiB ({result['worker_grown_most']}; "
        f"bound {result['worker_rss_bound_mib']} MiB)",
        "",
        "| check | passed |",
        "| --- | --- |",
        *[f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in result["checks"].items()],
        "",
        "## Memory as trials end",
        "",
        "| trial | seconds | driver RSS (MiB) | Ray workers | their RSS, summed (MiB) |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {s['trial']} | {s['seconds']} | {s['rss_mib']} | {s['workers']} | {s['workers_rss_mib']} |" for s in samples[::every] + ([samples[-1]] if samples and (len(samples) - 1) % every else [])],
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials in the study (all the same cheap candidate)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at a time")
    parser.add_argument("--warmup", type=int, default=10, help="RSS growth is measured from the end of this trial on")
    parser.add_argument("--rss-bound-mib", type=float, default=150.0, help="allowed driver RSS growth after the warm-up")
    # A reused trial actor grows by about 1-3 MiB per trial it runs (native memory, see bench/results/soak.md);
    # each of the 2 actors runs about 45 trials after the warm-up.
    parser.add_argument("--worker-rss-bound-mib", type=float, default=300.0, help="allowed RSS growth of one Ray worker after the warm-up")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="the study must end within this")
    parser.add_argument("--workdir", type=Path, help="where the corpus and study go (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(REPO)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="ser-study-soak-") as scratch:
        result = run(args, args.workdir or Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.no_write:
        write_results(result, " ".join([".venv/bin/python bench/soak.py", *sys.argv[1:]]), RESULTS)
    failed = [name for name, ok in result["checks"].items() if not ok]
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
