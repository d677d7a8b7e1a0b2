"""k-means for pseudo labels: our ``fit_kmeans`` backends against the published MiniBatchKMeans.

All run side by side in one process on the same generated frame embeddings
(a deterministic mixture of anisotropic gaussians standing in for HuBERT layer
outputs, stored as float16 like the embedding cache and fitted as float32):

* published: ``MiniBatchKMeans(init="k-means++", n_init=20, batch_size=10000,
  max_iter=100, random_state=0)`` fitted on all frames, as the reference code does;
* ours: ``fit_kmeans(frames, KMeansConfig(n_clusters=K, backend=B))`` with the
  default settings (n_init=3, max_iter=100, fit sample <= 200k frames) for
  ``B`` in ``--backends`` (faiss: k-means++ seeding + faiss Lloyd, the default;
  sklearn: KMeans, the reference).

All are scored the same way: inertia (sum of squared distances to the nearest
centroid) over the FULL frame set, via ``trainables.kmeans.nearest_centroids``,
the logic ``assign_labels`` uses.

Run: ``.venv/bin/python bench/kmeans_backends.py --frames 200000 100000 --dim 768 --clusters 50 150``
(``--quick`` shrinks to <= 20k frames and <= 128 dims for a smoke run and writes
no results file unless ``--output`` is given). A full run writes
``bench/results/kmeans_backends.md``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score

from machine import describe_machine
from trainables.atomic import atomic_write_text
from trainables.kmeans import KMeansConfig, fit_kmeans, nearest_centroids

RESULTS = Path(__file__).parent / "results" / "kmeans_backends.md"

logger = logging.getLogger("bench.kmeans_backends")


def generate_frames(
    count: int,
    dim: int,
    components: int = 300,
    subspace: int = 64,
    rank: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """Deterministic stand-in for frame embeddings: float32 ``[count, dim]`` (rounded through float16).

    A mixture of ``components`` gaussians with Dirichlet weights. Means lie in a
    random ``subspace``-dimensional subspace around a common offset (per-coordinate
    spread ~1); each component has ``rank`` strong random directions (scales
    2-6) on top of isotropic noise (0.8), so clusters overlap as real features do.
    """
    rng = np.random.default_rng(seed)
    subspace = min(subspace, dim)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, subspace)))
    basis *= np.sqrt(dim / subspace)
    offset = rng.normal(scale=0.5, size=dim)
    means = offset + rng.normal(size=(components, subspace)) @ basis.T
    weights = rng.dirichlet(np.ones(components))
    owner = rng.choice(components, size=count, p=weights)
    frames16 = np.empty((count, dim), dtype=np.float16)
    for component in range(components):
        rows = np.flatnonzero(owner == component)
        if not len(rows):
            continue
        directions = rng.normal(size=(dim, rank)) / np.sqrt(dim) * rng.uniform(2.0, 6.0, size=rank)
        values = means[component] + rng.normal(size=(len(rows), rank)) @ directions.T
        values += rng.normal(scale=0.8, size=values.shape)
        frames16[rows] = values
    return frames16.astype(np.float32)


def full_inertia(frames: np.ndarray, centroids: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(inertia over every frame, labels, seconds to label every frame)."""
    started = time.perf_counter()
    labels, distances = nearest_centroids(frames, centroids, device="cpu")
    return float(distances.sum()), labels, time.perf_counter() - started


def fit_ours(frames: np.ndarray, k: int, backend: str) -> dict:
    started = time.perf_counter()
    result = fit_kmeans(frames, KMeansConfig(n_clusters=k, backend=backend))
    seconds = time.perf_counter() - started
    default = " (default)" if backend == KMeansConfig(n_clusters=k).backend else ""
    return {
        "method": f"ours{default}: fit_kmeans backend={backend} (n_init=3, max_iter=100)",
        "frames_fit": result.frames_used,
        "seconds": seconds,
        "iterations": f"{result.n_iter} (best init)",
        "centroids": result.centroids,
    }


def fit_published(frames: np.ndarray, k: int) -> dict:
    model = MiniBatchKMeans(n_clusters=k, init="k-means++", n_init=20, batch_size=10000, max_iter=100, random_state=0)
    started = time.perf_counter()
    model.fit(frames)
    seconds = time.perf_counter() - started
    return {
        "method": "published: MiniBatchKMeans (n_init=20, batch 10000, max_iter=100)",
        "frames_fit": len(frames),
        "seconds": seconds,
        "iterations": f"{model.n_steps_} steps ({model.n_iter_:.1f} epochs)",
        "centroids": model.cluster_centers_.astype(np.float32),
    }


def run_k(frames: np.ndarray, k: int, backends: list[str]) -> list[dict]:
    """The published fit first (the reference of the comparison columns), then ours per backend."""
    rows = []
    for name, fit in [("published", lambda: fit_published(frames, k))] + [
        (backend, lambda backend=backend: fit_ours(frames, k, backend)) for backend in backends
    ]:
        logger.info("N=%d K=%d: %s", len(frames), k, name)
        row = fit()
        row["inertia"], row["labels"], row["label_seconds"] = full_inertia(frames, row.pop("centroids"))
        logger.info("N=%d K=%d: %s %.1f s, full inertia %.6g", len(frames), k, name, row["seconds"], row["inertia"])
        rows.append(row)
    return rows


def table(frames: np.ndarray, clusters: list[int], backends: list[str]) -> list[str]:
    lines = []
    for k in clusters:
        rows = run_k(frames, k, backends)
        reference = rows[0]
        for row in rows:
            relative = 100.0 * (row["inertia"] / reference["inertia"] - 1.0)
            ari = adjusted_rand_score(reference["labels"], row["labels"])
            lines.append(
                f"| {len(frames):,} | {k} | {row['method']} | {row['frames_fit']:,} | {row['seconds']:.1f} | "
                f"{reference['seconds'] / row['seconds']:.1f}x | {row['iterations']} | {row['inertia']:.5e} | "
                f"{relative:+.2f} % | {ari:.3f} | {row['label_seconds']:.1f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[200_000], help="frame counts to generate (N), one table block each")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (D)")
    parser.add_argument("--clusters", type=int, nargs="+", default=[50, 150], help="cluster counts K")
    parser.add_argument("--backends", nargs="+", default=["faiss", "sklearn"], help="our fit backends to time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated frames")
    parser.add_argument("--quick", action="store_true", help="smoke run: <= 20000 frames, <= 128 dims")
    parser.add_argument("--output", type=Path, help=f"results file (default {RESULTS} unless --quick)")
    parser.add_argument("--note", default="", help="free text added to the results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.quick:
        args.frames, args.dim = [min(count, 20_000) for count in args.frames], min(args.dim, 128)
    output = args.output if args.output is not None else (None if args.quick else RESULTS)

    started = time.perf_counter()
    lines = [
        "| N | K | method | frames fitted | fit time (s) | speed-up vs published | iterations | inertia on all frames "
        "| vs published | ARI vs published | label all frames (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count in args.frames:
        frames = generate_frames(count, args.dim, seed=args.seed)
        logger.info("generated %d x %d frames", *frames.shape)
        lines += table(frames, args.clusters, args.backends)
    total = time.perf_counter() - started

    command = shlex.join([".venv/bin/python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    text = "\n".join(
        [
            "# k-means: ours (fit_kmeans: faiss default, sklearn reference) vs the published MiniBatchKMeans",
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {describe_machine()}; torch threads={torch.get_num_threads()}",
            f"- command: `{command}`",
            f"- data: N x {args.dim} generated frames (mixture of 300 anisotropic gaussians, float16 rounded, "
            f"fitted as float32), seed {args.seed}",
            "- inertia: sum of squared distances of ALL frames to their nearest centroid, computed the same "
            "way for every row (`trainables.kmeans.nearest_centroids`, the logic of `assign_labels`); lower is "
            "better. `vs published`: relative difference; ARI: adjusted Rand index of the two labelings.",
            "- fit time: wall clock of the fit call alone (ours includes drawing the fit sample and, for faiss, "
            "the k-means++ seeding). `label all frames`: `nearest_centroids` over all N frames on CPU.",
            f"- total run time: {total / 60:.1f} min",
            *([f"- note: {args.note}"] if args.note else []),
            "",
            *lines,
            "",
        ]
    )
    logger.info("results:\n%s", text)
    if output is not None:
        atomic_write_text(output, text)
        logger.info("wrote %s", output)


if __name__ == "__main__":
    main()
