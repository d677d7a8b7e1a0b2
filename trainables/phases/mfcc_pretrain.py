"""HuBERT's first pretraining iteration for the tiny encoder: predict k-means clusters of MFCC frames.

The demo and the tests start from a randomly initialised tiny encoder; a few
epochs of masked prediction of MFCC clusters give it a self-supervised CNN and
transformer, as real use starts from a pretrained HuBERT. It reuses the
continued-pretraining phase with MFCC targets in place of emotion pseudo labels.

MFCC frames use the encoder's receptive field as window and its stride as hop
(400 and 320 samples for HuBERT), without centring, so there is exactly one
MFCC frame per encoder frame.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchaudio

from trainables.data.audio import load_waveform
from trainables.data.manifest import Utterance
from trainables.kmeans import KMeansConfig, assign_labels, fit_kmeans
from trainables.models.encoder import EncoderInfo, read_encoder_info
from trainables.phases.artifacts import RECORD_FILE, PhaseRecord, describe_utterances, encoder_dir, write_record
from trainables.phases.clustering import CENTROIDS_FILE, LABELS_FILE
from trainables.phases.cpt import CptConfig, run_cpt
from trainables.phases.embeddings import INDEX_FILE
from trainables.runtime import LocalRuntime

logger = logging.getLogger(__name__)

MFCC_COEFFICIENTS = 13  # HuBERT's first iteration: 13 MFCCs with first and second derivatives


def mfcc_features(waveform: torch.Tensor, info: EncoderInfo) -> np.ndarray:
    """MFCCs with deltas, one row per encoder frame: ``[frames, 39]`` float32."""
    frames = info.frame_count(waveform.numel())
    transform = torchaudio.transforms.MFCC(
        sample_rate=info.sample_rate,
        n_mfcc=MFCC_COEFFICIENTS,
        melkwargs={"n_fft": info.receptive_field, "hop_length": info.total_stride, "n_mels": 40, "center": False},
    )
    mfcc = transform(waveform.unsqueeze(0))[0]  # [13, frames]
    deltas = torchaudio.functional.compute_deltas(mfcc)
    features = torch.cat([mfcc, deltas, torchaudio.functional.compute_deltas(deltas)]).T
    if features.shape[0] != frames:
        raise RuntimeError(f"MFCC gave {features.shape[0]} frames for {waveform.numel()} samples, the encoder {frames}")
    return features.numpy().astype(np.float32)


def build_mfcc_targets(utterances: Sequence[Utterance], info: EncoderInfo, clusters: int, out: Path, seed: int = 0) -> None:
    """Write a clustering-format artifact of MFCC k-means labels for ``utterances`` at ``out``."""
    features = [mfcc_features(load_waveform(u.path, info.sample_rate), info) for u in utterances]
    stacked = np.concatenate(features)
    stacked = (stacked - stacked.mean(0)) / (stacked.std(0) + 1e-6)
    result = fit_kmeans(stacked, KMeansConfig(n_clusters=clusters, seed=seed, n_init=1))
    labels = assign_labels(stacked, result.centroids)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in features])]).tolist()
    out.mkdir(parents=True)
    np.save(out / LABELS_FILE, labels.astype(np.int32))
    np.save(out / CENTROIDS_FILE, result.centroids)
    (out / INDEX_FILE).write_text(json.dumps({"utt_ids": [u.utt_id for u in utterances], "offsets": offsets}))
    write_record(out, PhaseRecord(phase="clustering", params={"features": "mfcc39", "clusters": clusters}, upstream={}, used={"fit_on": describe_utterances(utterances)}, results=result.record()))


def pretrain_on_mfcc_clusters(
    encoder: str | Path, utterances: Sequence[Utterance], out: Path, cfg: CptConfig, clusters: int = 50, mask_ratio: float = 0.5
) -> None:
    """Pretrain ``encoder`` by masked prediction of MFCC clusters and save the result as an encoder directory ``out``.

    HuBERT masks about half of the frames in pretraining, hence ``mask_ratio`` 0.5;
    the CNN is trained too (``cfg.freeze_feature_encoder`` is forced off): it starts random.
    """
    info = read_encoder_info(encoder)
    work = Path(tempfile.mkdtemp(prefix=".pretrain.", dir=out.parent))
    try:
        build_mfcc_targets(utterances, info, clusters, work / "targets", seed=cfg.train.seed)
        artifact = work / "cpt"
        run_cpt(encoder, utterances, {"mfcc": work / "targets"}, mask_ratio, replace(cfg, freeze_feature_encoder=False), artifact, LocalRuntime(work / "ckpt"))
        shutil.copyfile(artifact / RECORD_FILE, encoder_dir(artifact) / "pretraining_record.json")
        encoder_dir(artifact).rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
