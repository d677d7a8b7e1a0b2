"""k-means for pseudo labels: our ``fit_kmeans`` (sklearn backend) against the published MiniBatchKMeans.

Both run side by side in one process on the same generated frame embeddings
(a deterministic mixture of anisotropic gaussians standing in for HuBERT layer
outputs, stored as float16 like the embedding cache and fitted as float32):

* ours: ``fit_kmeans(frames, KMeansConfig(n_clusters=K))`` - default config
  (Lloyd, k-means++ init, n_init=3, max_iter=100, fit sample <= 200k frames);
* published: ``MiniBatchKMeans(init="k-means++", n_init=20, batch_size=10000,
  max_iter=100, random_state=0)`` fitted on all frames, as the reference code does.

Both are scored the same way: inertia (sum of squared distances to the nearest
centroid) over the FULL frame set, via ``trainables.kmeans.nearest_centroids``,
the logic ``assign_labels`` uses.

Run: ``.venv/bin/python bench/kmeans_backends.py --frames 200000 --dim 768 --clusters 50 150``
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


def full_inertia(frames: np.ndarray, centroids: np.ndarray) -> tuple[float, np.ndarray]:
    labels, distances = nearest_centroids(frames, centroids, device="cpu")
    return float(distances.sum()), labels


def run_k(frames: np.ndarray, k: int) -> list[dict]:
    rows = []
    logger.info("K=%d: ours (fit_kmeans, sklearn backend, default config)", k)
    started = time.perf_counter()
    ours = fit_kmeans(frames, KMeansConfig(n_clusters=k))
    ours_wall = time.perf_counter() - started
    ours_inertia, ours_labels = full_inertia(frames, ours.centroids)
    rows.append(
        {
            "method": "ours: fit_kmeans (KMeans, n_init=3, max_iter=100)",
            "frames_fit": ours.frames_used,
            "seconds": ours_wall,
            "iterations": f"{ours.n_iter} (best init)",
            "inertia": ours_inertia,
            "labels": ours_labels,
        }
    )
    logger.info("K=%d: ours %.1f s, full inertia %.6g", k, ours_wall, ours_inertia)

    logger.info("K=%d: published MiniBatchKMeans", k)
    model = MiniBatchKMeans(
        n_clusters=k, init="k-means++", n_init=20, batch_size=10000, max_iter=100, random_state=0
    )
    started = time.perf_counter()
    model.fit(frames)
    mbk_wall = time.perf_counter() - started
    mbk_inertia, mbk_labels = full_inertia(frames, model.cluster_centers_.astype(np.float32))
    rows.append(
        {
            "method": "published: MiniBatchKMeans (n_init=20, batch 10000, max_iter=100)",
            "frames_fit": len(frames),
            "seconds": mbk_wall,
            "iterations": f"{model.n_steps_} steps ({model.n_iter_:.1f} epochs)",
            "inertia": mbk_inertia,
            "labels": mbk_labels,
        }
    )
    logger.info("K=%d: MiniBatchKMeans %.1f s, full inertia %.6g", k, mbk_wall, mbk_inertia)
    return rows


def table(frames: np.ndarray, clusters: list[int]) -> list[str]:
    lines = [
        "| K | method | frames fitted | fit time (s) | iterations | inertia on all frames | vs ours | ARI vs ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in clusters:
        rows = run_k(frames, k)
        reference = rows[0]
        for row in rows:
            relative = 100.0 * (row["inertia"] / reference["inertia"] - 1.0)
            ari = adjusted_rand_score(reference["labels"], row["labels"])
            lines.append(
                f"| {k} | {row['method']} | {row['frames_fit']:,} | {row['seconds']:.1f} | "
                f"{row['iterations']} | {row['inertia']:.5e} | {relative:+.2f} % | {ari:.3f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000, help="frames to generate (N)")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (D)")
    parser.add_argument("--clusters", type=int, nargs="+", default=[50, 150], help="cluster counts K")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated frames")
    parser.add_argument("--quick", action="store_true", help="smoke run: <= 20000 frames, <= 128 dims")
    parser.add_argument("--output", type=Path, help=f"results file (default {RESULTS} unless --quick)")
    parser.add_argument("--note", default="", help="free text added to the results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.quick:
        args.frames, args.dim = min(args.frames, 20_000), min(args.dim, 128)
    output = args.output if args.output is not None else (None if args.quick else RESULTS)

    started = time.perf_counter()
    frames = generate_frames(args.frames, args.dim, seed=args.seed)
    logger.info("generated %d x %d frames in %.1f s", *frames.shape, time.perf_counter() - started)
    lines = table(frames, args.clusters)
    total = time.perf_counter() - started

    command = shlex.join([".venv/bin/python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    text = "\n".join(
        [
            "# k-means: ours (fit_kmeans, sklearn backend) vs the published MiniBatchKMeans",
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {describe_machine()}; torch threads={torch.get_num_threads()}",
            f"- command: `{command}`",
            f"- data: {frames.shape[0]:,} x {frames.shape[1]} generated frames (mixture of 300 anisotropic "
            "gaussians, float16 rounded, fitted as float32), seed "
            f"{args.seed}",
            "- inertia: sum of squared distances of ALL frames to their nearest centroid, computed the same "
            "way for both (`trainables.kmeans.nearest_centroids`, the logic of `assign_labels`); lower is "
            "better. `vs ours`: relative difference; ARI: adjusted Rand index of the two labelings.",
            "- fit time: wall clock of the fit call alone (ours includes drawing the fit sample).",
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
