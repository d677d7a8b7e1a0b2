"""k-means over frame embeddings: the pseudo emotion labels of phase 3 ("Clustering").

Design
------
* **Fit on a bounded sample, label everything.** The centroids are fitted on a
  seeded, uniformly drawn subset of at most ``KMeansConfig.max_fit_frames``
  frames (:func:`sample_frames`); every frame is then labelled by
  :func:`assign_labels`. Fit cost therefore stays flat as the corpus grows, while
  labels cover the whole corpus.
* **Three interchangeable fit backends, one labeller.** ``"faiss"`` (CPU, the
  default, as P-TAPT clusters: k-means++ seeding then faiss's Lloyd
  iterations), ``"cuml"`` (RAPIDS, GPU, scalable k-means++) and ``"sklearn"``
  (CPU, the reference: Lloyd with k-means++ init) all implement
  :class:`KMeansBackend`: they turn a float32 sample into centroids. Labels
  never come from a backend's own ``predict``; they come from
  :func:`assign_labels` (torch, batched, float32, CPU or CUDA), so the same
  centroids give the same labels whichever backend fitted them.
* **faiss and cuML are imported lazily,** inside :func:`get_backend`, so
  importing this module needs neither (nor a GPU).
* **Deterministic.** The sample depends only on ``(N, max_fit_frames, seed)``
  and the faiss and sklearn fits on ``seed`` (faiss with its threads fixed):
  the same inputs give the same centroids and labels on CPU.
* **Memory.** ``frames`` may be a float16 ``np.memmap`` ``[N, D]`` far larger
  than RAM; only the sample (float32) and one batch at a time are materialised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from trainables.config import KMEANS_BACKENDS, KMeansConfig, is_int

logger = logging.getLogger(__name__)

# Rows gathered from ``frames`` at a time when sampling (bounds the float16 -> float32 copy).
_GATHER_ROWS = 65536


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """Outcome of :func:`fit_kmeans`.

    ``centroids`` is ``[K, D]`` float32; ``inertia`` is the sum of squared
    distances of the fit sample (``frames_used`` rows out of ``total_frames``)
    to their nearest centroid, as reported by the backend.
    """

    centroids: np.ndarray
    inertia: float
    frames_used: int
    total_frames: int
    n_iter: int
    fit_seconds: float
    backend: str

    def record(self) -> dict:
        """JSON-able summary (no centroids)."""
        return {
            "backend": self.backend,
            "n_clusters": int(self.centroids.shape[0]),
            "dim": int(self.centroids.shape[1]),
            "inertia": float(self.inertia),
            "frames_used": int(self.frames_used),
            "total_frames": int(self.total_frames),
            "n_iter": int(self.n_iter),
            "fit_seconds": float(self.fit_seconds),
        }


class KMeansBackend(Protocol):
    """Fits centroids on an in-memory float32 sample."""

    name: str

    def fit(self, sample: np.ndarray, config: KMeansConfig) -> tuple[np.ndarray, float, int]:
        """``sample`` ``[M, D]`` float32 -> (centroids ``[K, D]`` float32, inertia, n_iter)."""
        ...


class SklearnBackend:
    """scikit-learn ``KMeans`` (Lloyd, k-means++ init) on CPU."""

    name = "sklearn"

    def fit(self, sample: np.ndarray, config: KMeansConfig) -> tuple[np.ndarray, float, int]:
        from sklearn.cluster import KMeans

        model = KMeans(
            n_clusters=config.n_clusters,
            init="k-means++",
            n_init=config.n_init,
            max_iter=config.max_iter,
            random_state=config.seed,
        )
        model.fit(sample)
        return (
            np.ascontiguousarray(model.cluster_centers_, dtype=np.float32),
            float(model.inertia_),
            int(model.n_iter_),
        )


# faiss's Lloyd loop has no convergence test: it runs ``niter`` iterations in
# chunks of this many and stops once a chunk improves the objective by less than
# ``_RELATIVE_TOL`` (sklearn's KMeans stops on a comparable centre shift).
_FAISS_CHUNK = 5
_RELATIVE_TOL = 1e-4
# k-means++ seeding is O(K^2 * points): seed on at most this many points per
# cluster (drawn from the fit sample), which keeps it near k-means++ quality.
_SEED_POINTS_PER_CLUSTER = 64
# With several seedings, each runs this many Lloyd iterations; only the best
# one then runs on to convergence (most of a run's drop in inertia comes in its
# first iterations, and the ranking of seedings rarely changes after them).
_SCREEN_ITERS = 10


def kmeans_plusplus_seeds(sample: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means++ initial centroids ``[clusters, D]`` float32 of ``sample`` ``[M, D]``.

    Seeds on a seeded subset of at most ``_SEED_POINTS_PER_CLUSTER * clusters``
    rows with scikit-learn's ``kmeans_plusplus`` (in float64: its float32 path
    upcasts chunk by chunk and is several times slower).
    """
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    points = min(len(sample), _SEED_POINTS_PER_CLUSTER * clusters)
    subset = sample if points == len(sample) else sample[np.sort(rng.choice(len(sample), size=points, replace=False))]
    centres, _ = kmeans_plusplus(subset.astype(np.float64), clusters, random_state=seed)
    return np.ascontiguousarray(centres, dtype=np.float32)


class FaissBackend:
    """faiss Lloyd iterations from k-means++ seeds on CPU; the best of ``n_init`` seedings.

    With ``n_init > 1`` every seeding runs ``_SCREEN_ITERS`` iterations and the
    best of them continues to convergence (``bench/results/kmeans_backends.md``).

    Built by :func:`get_backend`, which imports faiss and passes the module.
    faiss's OpenMP threads follow ``torch.get_num_threads()``, which the
    runtime sets from the CPUs the phase was given.
    """

    name = "faiss"

    def __init__(self, faiss_module) -> None:
        self._faiss = faiss_module

    def fit(self, sample: np.ndarray, config: KMeansConfig) -> tuple[np.ndarray, float, int]:
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        self._faiss.omp_set_num_threads(torch.get_num_threads())
        screen = config.max_iter if config.n_init == 1 else min(_SCREEN_ITERS, config.max_iter)
        runs = []
        for attempt in range(config.n_init):
            seed = (config.seed + attempt) % 2**32
            runs.append((seed, self._lloyd(sample, kmeans_plusplus_seeds(sample, config.n_clusters, seed), screen, seed)))
        seed, (centroids, objective, iterations, converged) = min(runs, key=lambda run: run[1][1])
        if not converged and iterations < config.max_iter:
            centroids, objective, more, _ = self._lloyd(sample, centroids, config.max_iter - iterations, seed, objective)
            iterations += more
        return centroids, self._inertia(sample, centroids), iterations

    def _lloyd(
        self, sample: np.ndarray, centroids: np.ndarray, max_iter: int, seed: int, previous: float | None = None
    ) -> tuple[np.ndarray, float, int, bool]:
        """At most ``max_iter`` iterations from ``centroids``; returns (centroids, objective, iterations, converged).

        ``previous`` is the objective ``centroids`` had, when they continue an earlier run.
        """
        done, objective, converged = 0, np.inf, False
        while done < max_iter and not converged:
            steps = min(_FAISS_CHUNK, max_iter - done)
            model = self._faiss.Kmeans(
                sample.shape[1], len(centroids), niter=steps, seed=seed, verbose=False,
                max_points_per_centroid=len(sample), min_points_per_centroid=1,
            )
            model.train(sample, init_centroids=centroids)
            centroids, objective, done = model.centroids, float(model.obj[-1]), done + steps
            converged = previous is not None and previous - objective <= _RELATIVE_TOL * previous
            previous = objective
        return np.ascontiguousarray(centroids, dtype=np.float32), objective, done, converged

    def _inertia(self, sample: np.ndarray, centroids: np.ndarray) -> float:
        index = self._faiss.IndexFlatL2(sample.shape[1])
        index.add(centroids)
        distances, _ = index.search(sample, 1)
        return float(distances.sum(dtype=np.float64))


class CumlBackend:
    """RAPIDS cuML ``KMeans`` (scalable k-means++ init) on a CUDA GPU.

    Built by :func:`get_backend`, which imports cuML and passes its ``KMeans`` class.
    """

    name = "cuml"

    def __init__(self, kmeans_class) -> None:
        self._kmeans_class = kmeans_class

    def fit(self, sample: np.ndarray, config: KMeansConfig) -> tuple[np.ndarray, float, int]:
        model = self._kmeans_class(
            n_clusters=config.n_clusters,
            init="scalable-k-means++",
            n_init=config.n_init,
            max_iter=config.max_iter,
            random_state=config.seed,
            output_type="numpy",
        )
        model.fit(np.ascontiguousarray(sample, dtype=np.float32))
        return (
            np.ascontiguousarray(np.asarray(model.cluster_centers_), dtype=np.float32),
            float(model.inertia_),
            int(model.n_iter_),
        )


def get_backend(name: str) -> KMeansBackend:
    """The fit backend called ``name`` (one of ``KMEANS_BACKENDS``).

    ``"faiss"`` and ``"cuml"`` import their library here and only here; where
    it cannot be imported a ``RuntimeError`` says what it needs.
    """
    if name == "sklearn":
        return SklearnBackend()
    if name == "faiss":
        try:
            import faiss
        except ImportError as exc:
            raise RuntimeError(
                "k-means backend 'faiss' is unavailable: install it with `pip install faiss-cpu` "
                f"(a dependency of ser-study), or use backend='sklearn' ({type(exc).__name__}: {exc})"
            ) from exc
        return FaissBackend(faiss)
    if name == "cuml":
        try:
            from cuml.cluster import KMeans as CumlKMeans
        except Exception as exc:  # ImportError, or OSError/RuntimeError when CUDA is missing
            raise RuntimeError(
                "k-means backend 'cuml' is unavailable: cuML needs a CUDA GPU and RAPIDS, "
                "installed with `pip install ser-study[gpu]`; use backend='sklearn' on CPU "
                f"(import failed: {type(exc).__name__}: {exc})"
            ) from exc
        return CumlBackend(CumlKMeans)
    raise ValueError(f"unknown k-means backend {name!r}; allowed: {KMEANS_BACKENDS}")


def _check_frames(frames: np.ndarray, name: str = "frames") -> None:
    if getattr(frames, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {getattr(frames, 'shape', None)}")
    if frames.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns: shape {frames.shape}")


def sample_frames(frames: np.ndarray, max_frames: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of rows, without replacement, in their original order.

    ``frames`` ``[N, D]`` (any float dtype, e.g. a float16 ``np.memmap``) ->
    float32 ``[min(N, max_frames), D]``. When ``N <= max_frames`` every row is
    returned. The drawn indices depend only on ``(N, max_frames, seed)``; they
    are sorted so that a memmap is read front to back.
    """
    _check_frames(frames)
    if not is_int(max_frames) or max_frames < 1:
        raise ValueError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    total = frames.shape[0]
    if total <= max_frames:
        indices = np.arange(total)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))
    sample = np.empty((len(indices), frames.shape[1]), dtype=np.float32)
    for start in range(0, len(indices), _GATHER_ROWS):
        chunk = indices[start : start + _GATHER_ROWS]
        if total <= max_frames:  # contiguous slice: cheaper than fancy indexing
            sample[start : start + len(chunk)] = frames[chunk[0] : chunk[-1] + 1]
        else:
            sample[start : start + len(chunk)] = frames[chunk]
    return sample


def fit_kmeans(frames: np.ndarray, config: KMeansConfig) -> KMeansResult:
    """Fit ``config.n_clusters`` centroids to ``frames`` ``[N, D]``.

    Validates ``config``, draws at most ``config.max_fit_frames`` rows with
    :func:`sample_frames` and fits them with ``config.backend``. Label all
    frames afterwards with :func:`assign_labels`.
    """
    config.validate()
    _check_frames(frames)
    total = int(frames.shape[0])
    if config.n_clusters > total:
        raise ValueError(
            f"{config.n_clusters} clusters but only {total} frames to cluster: "
            "lower n_clusters or embed more audio"
        )
    backend = get_backend(config.backend)
    started = time.perf_counter()
    sample = sample_frames(frames, config.max_fit_frames, config.seed)
    sampled = time.perf_counter()
    centroids, inertia, n_iter = backend.fit(sample, config)
    fit_seconds = time.perf_counter() - sampled
    if centroids.shape != (config.n_clusters, frames.shape[1]):
        raise RuntimeError(
            f"backend {backend.name!r} returned centroids of shape {centroids.shape}, "
            f"expected {(config.n_clusters, frames.shape[1])}"
        )
    logger.info(
        "k-means %s: K=%d on %d of %d frames (D=%d), %d iterations, inertia %.6g; "
        "sampling %.2f s, fit %.2f s",
        backend.name, config.n_clusters, len(sample), total, frames.shape[1], n_iter, inertia,
        sampled - started, fit_seconds,
    )
    return KMeansResult(
        centroids=centroids,
        inertia=inertia,
        frames_used=len(sample),
        total_frames=total,
        n_iter=n_iter,
        fit_seconds=fit_seconds,
        backend=backend.name,
    )


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def nearest_centroids(
    frames: np.ndarray,
    centroids: np.ndarray,
    batch_size: int = 65536,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every frame and its squared euclidean distance.

    ``frames`` ``[N, D]`` (any float dtype, memmap allowed), ``centroids``
    ``[K, D]`` -> (labels int32 ``[N]``, squared distances float64 ``[N]``).
    The argmin uses ``|c|^2 - 2 x.c`` in float32 on ``device`` (default: CUDA
    if available, else CPU), ``batch_size`` frames at a time; the returned
    distance is recomputed directly as ``|x - c|^2`` so it does not suffer the
    cancellation of the expanded form.
    """
    _check_frames(frames)
    _check_frames(centroids, "centroids")
    if centroids.shape[1] != frames.shape[1]:
        raise ValueError(
            f"centroids have dimension {centroids.shape[1]} but frames have {frames.shape[1]}"
        )
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = torch.device(device or _default_device())
    total = frames.shape[0]
    labels = np.empty(total, dtype=np.int32)
    distances = np.empty(total, dtype=np.float64)
    with torch.inference_mode():
        centres = torch.as_tensor(np.ascontiguousarray(centroids, dtype=np.float32), device=device)
        centre_norms = (centres * centres).sum(dim=1)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            batch = torch.as_tensor(np.ascontiguousarray(frames[start:stop], dtype=np.float32), device=device)
            scores = centre_norms.unsqueeze(0) - 2.0 * (batch @ centres.T)
            nearest = scores.argmin(dim=1)
            diff = centres[nearest].sub_(batch)
            labels[start:stop] = nearest.to(torch.int32).cpu().numpy()
            distances[start:stop] = diff.square_().sum(dim=1, dtype=torch.float64).cpu().numpy()
    return labels, distances


def assign_labels(
    frames: np.ndarray,
    centroids: np.ndarray,
    batch_size: int = 65536,
    device: str | None = None,
) -> np.ndarray:
    """Index of the nearest centroid (squared euclidean) of every frame.

    ``frames`` ``[N, D]`` (any float dtype, memmap allowed), ``centroids``
    ``[K, D]`` -> int32 ``[N]``. Computed with torch in float32, ``batch_size``
    frames at a time, on ``device`` (default: CUDA if available, else CPU).
    Both backends' centroids are labelled here, so labels are consistent.
    """
    return nearest_centroids(frames, centroids, batch_size=batch_size, device=device)[0]
