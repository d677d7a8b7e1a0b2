"""Phase 3: k-means over one layer's frame embeddings; every frame's centroid is its pseudo label.

Artifact: ``labels.npy`` int32 ``[total_frames]`` aligned with the embeddings'
``index.json`` (copied alongside), ``centroids.npy`` float32 ``[K, hidden]``,
and the record (inertia, fit time, frames used).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from trainables.atomic import atomic_directory
from trainables.kmeans import KMeansConfig, assign_labels, fit_kmeans
from trainables.phases.artifacts import PhaseRecord, read_record, write_record
from trainables.phases.embeddings import INDEX_FILE, load_layer, read_index
from trainables.runtime import Runtime

LABELS_FILE = "labels.npy"
CENTROIDS_FILE = "centroids.npy"


def load_pseudo_labels(artifact: Path) -> dict[str, np.ndarray]:
    """Each utterance's frame labels ``[frames]`` int32, by utterance id."""
    utt_ids, offsets = read_index(artifact)
    labels = np.load(artifact / LABELS_FILE)
    return {utt: labels[offsets[i] : offsets[i + 1]] for i, utt in enumerate(utt_ids)}


def run_clustering(embeddings: Path, layer: int, cfg: KMeansConfig, out: Path, runtime: Runtime | None = None) -> dict:
    """Fit k-means on ``layer`` of the ``embeddings`` artifact and label every frame (on ``runtime``'s device, default: CUDA if there is one)."""
    started = time.perf_counter()
    frames = load_layer(embeddings, layer)
    result = fit_kmeans(frames, cfg)
    labels = assign_labels(frames, result.centroids, device=None if runtime is None else runtime.device.type)
    counts = np.bincount(labels, minlength=cfg.n_clusters)
    results = {**result.record(), "empty_clusters": int((counts == 0).sum()), "largest_cluster_share": float(counts.max() / counts.sum())}
    upstream_record = read_record(embeddings)
    with atomic_directory(out) as tmp:
        np.save(tmp / LABELS_FILE, labels.astype(np.int32))
        np.save(tmp / CENTROIDS_FILE, result.centroids.astype(np.float32))
        shutil.copyfile(embeddings / INDEX_FILE, tmp / INDEX_FILE)
        write_record(
            tmp,
            PhaseRecord(
                phase="clustering",
                params={"layer": layer, "kmeans": cfg},
                upstream={"embeddings": str(embeddings)},
                used={"fit_on": upstream_record["used"]["embedded"]},
                results=results,
                wall_seconds=time.perf_counter() - started,
                device=result.backend,
            ),
        )
    return results
