"""k-means of phase 3: sampling, fitting, labelling, backends and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from trainables.kmeans import (
    KMEANS_BACKENDS,
    KMeansConfig,
    KMeansResult,
    assign_labels,
    fit_kmeans,
    get_backend,
    sample_frames,
)

REPO = Path(__file__).resolve().parents[1]


def blobs(n_per_blob: int = 200, n_blobs: int = 6, dim: int = 16, seed: int = 0):
    """Well separated gaussian blobs: (frames float32 [N, D], true labels [N])."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=10.0, size=(n_blobs, dim))
    truth = np.repeat(np.arange(n_blobs), n_per_blob)
    frames = means[truth] + rng.normal(scale=0.5, size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return frames[order].astype(np.float32), truth[order]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same clustering up to a renaming of clusters."""
    return adjusted_rand_score(a, b) == pytest.approx(1.0)


def cuml_importable() -> bool:
    try:
        import cuml  # noqa: F401
    except Exception:
        return False
    return True


# --- fitting -----------------------------------------------------------------------


CPU_BACKENDS = ("faiss", "sklearn")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_recovers_separable_blobs(backend):
    frames, truth = blobs()
    result = fit_kmeans(frames, KMeansConfig(n_clusters=6, backend=backend))
    assert isinstance(result, KMeansResult)
    assert result.centroids.shape == (6, 16) and result.centroids.dtype == np.float32
    assert result.backend == backend
    assert result.frames_used == result.total_frames == len(frames)
    assert result.n_iter >= 1 and result.fit_seconds >= 0
    labels = assign_labels(frames, result.centroids, device="cpu")
    assert same_partition(labels, truth)
    # The backend's inertia is the sample's sum of squared distances to the nearest centroid.
    brute = ((frames[:, None, :].astype(np.float64) - result.centroids[None]) ** 2).sum(-1).min(1).sum()
    assert result.inertia == pytest.approx(brute, rel=1e-4)


def test_faiss_is_the_default_backend():
    assert KMeansConfig(n_clusters=2).backend == "faiss"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_seed_same_labels_different_seed_still_valid(backend):
    frames, truth = blobs(seed=1)
    first = fit_kmeans(frames, KMeansConfig(n_clusters=6, seed=3, backend=backend))
    again = fit_kmeans(frames, KMeansConfig(n_clusters=6, seed=3, backend=backend))
    np.testing.assert_array_equal(first.centroids, again.centroids)
    np.testing.assert_array_equal(assign_labels(frames, first.centroids), assign_labels(frames, again.centroids))
    other = fit_kmeans(frames, KMeansConfig(n_clusters=6, seed=4, backend=backend))
    assert same_partition(assign_labels(frames, other.centroids), truth)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_different_seed_may_differ_on_unstructured_data(backend):
    frames = np.random.default_rng(0).uniform(size=(600, 4)).astype(np.float32)
    a = fit_kmeans(frames, KMeansConfig(n_clusters=8, n_init=1, seed=0, backend=backend))
    b = fit_kmeans(frames, KMeansConfig(n_clusters=8, n_init=1, seed=1, backend=backend))
    assert not np.array_equal(a.centroids, b.centroids)


def overlapping_mixture(count: int = 6000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Many overlapping anisotropic gaussians: a fit whose quality depends on seeding and convergence."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(40, dim))
    owner = rng.integers(0, 40, size=count)
    stretch = rng.uniform(0.5, 2.0, size=(40, dim))
    return (means[owner] + rng.normal(size=(count, dim)) * stretch[owner]).astype(np.float32)


def test_faiss_matches_sklearn_inertia_on_overlapping_clusters():
    """The default backend is no worse than the reference on data with no clean answer (within 1 %)."""
    frames = overlapping_mixture()
    fast = fit_kmeans(frames, KMeansConfig(n_clusters=25, backend="faiss"))
    reference = fit_kmeans(frames, KMeansConfig(n_clusters=25, backend="sklearn"))
    assert fast.inertia <= reference.inertia * 1.01
    brute = ((frames[:, None, :].astype(np.float64) - fast.centroids[None]) ** 2).sum(-1).min(1).sum()
    assert fast.inertia == pytest.approx(brute, rel=1e-4)
    assert 1 <= fast.n_iter <= 100


def test_faiss_stops_at_max_iter_and_uses_the_torch_thread_count():
    import faiss
    import torch

    frames = overlapping_mixture(count=2000)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit_kmeans(frames, KMeansConfig(n_clusters=25, max_iter=3, n_init=1, backend="faiss"))
        assert faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(previous)
    assert result.n_iter == 3


def test_importing_kmeans_does_not_import_faiss():
    code = "import sys, trainables.kmeans; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fit_uses_bounded_sample_and_record_is_json():
    frames, _ = blobs(n_per_blob=100)
    result = fit_kmeans(frames, KMeansConfig(n_clusters=6, max_fit_frames=250))
    assert result.frames_used == 250 and result.total_frames == 600
    record = result.record()
    assert "centroids" not in record
    assert json.loads(json.dumps(record)) == record
    assert record["n_clusters"] == 6 and record["dim"] == 16 and record["backend"] == "faiss"


def test_more_clusters_than_frames_is_refused():
    frames = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="10 clusters but only 5 frames.*lower n_clusters or embed more audio"):
        fit_kmeans(frames, KMeansConfig(n_clusters=10))


# --- sampling ----------------------------------------------------------------------


def indexed_frames(count: int = 1000, dim: int = 5) -> np.ndarray:
    """float16 frames whose first column is the row index (exact in float16 below 2048)."""
    frames = np.random.default_rng(0).normal(size=(count, dim)).astype(np.float16)
    frames[:, 0] = np.arange(count)
    return frames


def test_sample_frames_is_bounded_sorted_and_deterministic():
    frames = indexed_frames()
    sample = sample_frames(frames, 300, seed=5)
    assert sample.shape == (300, 5) and sample.dtype == np.float32
    rows = sample[:, 0].astype(int)
    assert np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < 1000
    np.testing.assert_array_equal(sample, frames[rows].astype(np.float32))
    np.testing.assert_array_equal(sample, sample_frames(frames, 300, seed=5))
    assert not np.array_equal(sample, sample_frames(frames, 300, seed=6))


def test_sample_frames_returns_everything_when_small():
    frames = indexed_frames(count=50)
    sample = sample_frames(frames, 300, seed=0)
    assert sample.dtype == np.float32
    np.testing.assert_array_equal(sample, frames.astype(np.float32))


def test_sample_frames_and_fit_on_float16_memmap(tmp_path):
    frames = indexed_frames()
    path = tmp_path / "frames.f16"
    writer = np.memmap(path, dtype=np.float16, mode="w+", shape=frames.shape)
    writer[:] = frames
    writer.flush()
    del writer
    mapped = np.memmap(path, dtype=np.float16, mode="r", shape=frames.shape)
    np.testing.assert_array_equal(sample_frames(mapped, 300, seed=2), sample_frames(frames, 300, seed=2))
    result = fit_kmeans(mapped, KMeansConfig(n_clusters=4, max_fit_frames=500))
    assert result.frames_used == 500
    labels = assign_labels(mapped, result.centroids, batch_size=128)
    np.testing.assert_array_equal(labels, assign_labels(frames.astype(np.float32), result.centroids))


# --- labelling ---------------------------------------------------------------------


def test_assign_labels_matches_brute_force_argmin():
    rng = np.random.default_rng(7)
    frames = rng.normal(size=(1003, 24)).astype(np.float32)
    centroids = rng.normal(size=(17, 24)).astype(np.float32)
    labels = assign_labels(frames, centroids, batch_size=100, device="cpu")
    assert labels.dtype == np.int32 and labels.shape == (1003,)
    distances = ((frames[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, distances.argmin(axis=1))


def test_assign_labels_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimension"):
        assign_labels(np.zeros((4, 3), np.float32), np.zeros((2, 5), np.float32))


# --- configuration and backends ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_clusters": 0}, "n_clusters"),
        ({"n_clusters": 2.5}, "n_clusters"),
        ({"n_clusters": True}, "n_clusters"),
        ({"max_fit_frames": 0}, "max_fit_frames"),
        ({"n_init": 0}, "n_init"),
        ({"max_iter": -1}, "max_iter"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"backend": "annoy"}, "backend"),
        ({"n_clusters": 50, "max_fit_frames": 10}, "max_fit_frames"),
    ],
)
def test_bad_config_fields_raise_clear_errors(changes, field):
    config = KMeansConfig(**{"n_clusters": 4, **changes})
    with pytest.raises(ValueError, match=f"KMeansConfig.{field}"):
        config.validate()
    with pytest.raises(ValueError, match=f"KMeansConfig.{field}"):
        fit_kmeans(np.zeros((100, 2), np.float32), config)


def test_bad_backend_config_names_allowed_values():
    with pytest.raises(ValueError, match=r"backend must be one of \('faiss', 'cuml', 'sklearn'\)"):
        KMeansConfig(n_clusters=4, backend="annoy").validate()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown k-means backend 'annoy'.*faiss.*cuml.*sklearn"):
        get_backend("annoy")


def test_backends_share_one_shape():
    assert KMEANS_BACKENDS == ("faiss", "cuml", "sklearn")
    for name in CPU_BACKENDS:
        backend = get_backend(name)
        assert backend.name == name and callable(backend.fit)


def test_cuml_backend_passes_its_settings(monkeypatch):
    """The cuML code path on CPU: a stand-in ``cuml.cluster.KMeans`` records its arguments."""
    from sklearn.cluster import KMeans

    seen = {}

    class FakeCumlKMeans:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self._model = KMeans(
                n_clusters=kwargs["n_clusters"], n_init=kwargs["n_init"],
                max_iter=kwargs["max_iter"], random_state=kwargs["random_state"],
            )

        def fit(self, sample):
            seen["dtype"] = sample.dtype
            self._model.fit(sample)
            self.cluster_centers_ = self._model.cluster_centers_.astype(np.float64)
            self.inertia_ = self._model.inertia_
            self.n_iter_ = self._model.n_iter_
            return self

    cuml = types.ModuleType("cuml")
    cluster = types.ModuleType("cuml.cluster")
    cluster.KMeans = FakeCumlKMeans
    cuml.cluster = cluster
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.cluster", cluster)

    frames, truth = blobs()
    result = fit_kmeans(frames, KMeansConfig(n_clusters=6, n_init=2, max_iter=50, seed=9, backend="cuml"))
    assert seen == {
        "n_clusters": 6, "init": "scalable-k-means++", "n_init": 2, "max_iter": 50,
        "random_state": 9, "output_type": "numpy", "dtype": np.float32,
    }
    assert result.backend == "cuml" and result.centroids.dtype == np.float32
    assert same_partition(assign_labels(frames, result.centroids), truth)


def test_cuml_missing_raises_runtime_error_about_gpu():
    if cuml_importable():
        pytest.skip("cuML imports here, so the missing-cuML error cannot be shown")
    with pytest.raises(RuntimeError, match=r"CUDA GPU.*pip install ser-study\[gpu\]"):
        get_backend("cuml")


def test_importing_kmeans_does_not_import_cuml():
    code = "import sys, trainables.kmeans; print('cuml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cuml_recovers_blobs_and_agrees_with_sklearn():
    pytest.importorskip("cuml", reason="cuML needs a CUDA GPU and RAPIDS; not installable on this CPU machine")
    frames, truth = blobs(n_per_blob=500)
    on_gpu = fit_kmeans(frames, KMeansConfig(n_clusters=6, backend="cuml"))
    on_cpu = fit_kmeans(frames, KMeansConfig(n_clusters=6, backend="sklearn"))
    assert on_gpu.backend == "cuml" and on_gpu.centroids.shape == (6, 16)
    gpu_labels = assign_labels(frames, on_gpu.centroids)
    assert same_partition(gpu_labels, truth)
    assert same_partition(gpu_labels, assign_labels(frames, on_cpu.centroids))
    assert on_gpu.inertia == pytest.approx(on_cpu.inertia, rel=0.01)
