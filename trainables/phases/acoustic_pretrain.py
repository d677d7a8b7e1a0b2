"""HuBERT's first pretraining iteration for the tiny encoder: predict k-means clusters of acoustic frames.

The demo and the tests start from a randomly initialised tiny encoder; a few
epochs of masked prediction of clustered acoustic frames give it a
self-supervised CNN and transformer, as real use starts from a pretrained
HuBERT. It reuses the continued-pretraining phase with these targets in place
of emotion pseudo labels.

The frames are HuBERT's first-iteration MFCCs (13 with first and second
derivatives) and, with ``prosody`` (the default), three prosodic features:
log energy, log F0 and voicing strength (a normalised autocorrelation peak),
weighted so that k-means gives pitch about as much room as one MFCC block.
HuBERT-base's 960 h of speech teach a large model prosody along with phones;
a tiny model pretrained for minutes on a few hundred utterances learns what its
targets ask for, and an emotion is mostly prosody.

Frames use the encoder's receptive field as window and its stride as hop (400
and 320 samples for HuBERT), without centring, so there is exactly one frame
of targets per encoder frame.
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
from trainables.phases.artifacts import PRETRAINING_RECORD, RECORD_FILE, PhaseRecord, audio_digest, describe_utterances, encoder_dir, write_record
from trainables.phases.clustering import CENTROIDS_FILE, LABELS_FILE
from trainables.phases.cpt import CptConfig, run_cpt
from trainables.phases.embeddings import INDEX_FILE
from trainables.runtime import LocalRuntime

logger = logging.getLogger(__name__)

MFCC_COEFFICIENTS = 13  # HuBERT's first iteration: 13 MFCCs with first and second derivatives
#: F0 search range (Hz) of the prosodic features, and the autocorrelation peak above which a frame is voiced.
F0_RANGE_HZ = (70.0, 400.0)
VOICED_PEAK = 0.4
#: Weights of (log energy, log F0, voicing) after standardisation: pitch weighs as much as a few MFCCs.
PROSODY_WEIGHTS = np.array([1.0, 3.0, 1.0], dtype=np.float32)


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


def prosody_features(waveform: torch.Tensor, info: EncoderInfo) -> np.ndarray:
    """Log energy, log F0 (0 where unvoiced) and voicing strength, one row per encoder frame: ``[frames, 3]`` float32.

    F0 is the lag of the highest normalised autocorrelation peak in the
    frame's window within :data:`F0_RANGE_HZ`; a frame whose peak is below
    :data:`VOICED_PEAK` is unvoiced.
    """
    samples = waveform.numpy().astype(np.float64)
    frames, window, hop = info.frame_count(samples.size), info.receptive_field, info.total_stride
    if frames == 0:
        return np.zeros((0, 3), dtype=np.float32)
    windowed = samples[np.arange(frames)[:, None] * hop + np.arange(window)[None]] * np.hanning(window)
    energy = np.log(np.mean(windowed**2, axis=1) + 1e-8)
    size = 1 << int(np.ceil(np.log2(2 * window)))
    autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(windowed, size)) ** 2)[:, :window]
    autocorrelation /= autocorrelation[:, :1] + 1e-12
    shortest, longest = int(info.sample_rate / F0_RANGE_HZ[1]), min(window - 1, int(info.sample_rate / F0_RANGE_HZ[0]))
    lag = shortest + np.argmax(autocorrelation[:, shortest:longest], axis=1)
    peak = autocorrelation[np.arange(frames), lag]
    log_f0 = np.where(peak > VOICED_PEAK, np.log(info.sample_rate / lag), 0.0)
    return np.stack([energy, log_f0, peak], axis=1).astype(np.float32)


def acoustic_features(waveform: torch.Tensor, info: EncoderInfo, prosody: bool = True) -> np.ndarray:
    """MFCCs with deltas, and with ``prosody`` the prosodic features: ``[frames, 39 (+3)]`` float32."""
    features = mfcc_features(waveform, info)
    return np.concatenate([features, prosody_features(waveform, info)], axis=1) if prosody else features


def build_acoustic_targets(utterances: Sequence[Utterance], info: EncoderInfo, clusters: int, out: Path, seed: int = 0, prosody: bool = True) -> None:
    """Write a clustering-format artifact of k-means labels of acoustic frames for ``utterances`` at ``out``."""
    features = [acoustic_features(load_waveform(u.path, info.sample_rate), info, prosody) for u in utterances]
    stacked = np.concatenate(features)
    stacked = (stacked - stacked.mean(0)) / (stacked.std(0) + 1e-6)
    if prosody:
        stacked[:, -3:] *= PROSODY_WEIGHTS
    result = fit_kmeans(stacked, KMeansConfig(n_clusters=clusters, seed=seed, n_init=1))
    labels = assign_labels(stacked, result.centroids)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in features])]).tolist()
    out.mkdir(parents=True)
    np.save(out / LABELS_FILE, labels.astype(np.int32))
    np.save(out / CENTROIDS_FILE, result.centroids)
    (out / INDEX_FILE).write_text(json.dumps({"utt_ids": [u.utt_id for u in utterances], "offsets": offsets}))
    params = {"features": "mfcc39+prosody3" if prosody else "mfcc39", "clusters": clusters}
    write_record(out, PhaseRecord(phase="clustering", params=params, upstream={}, used={"fit_on": describe_utterances(utterances)}, results=result.record()))


def pretrain_on_acoustic_clusters(
    encoder: str | Path, utterances: Sequence[Utterance], out: Path, cfg: CptConfig, clusters: int = 50, mask_ratio: float = 0.5, prosody: bool = True
) -> None:
    """Pretrain ``encoder`` by masked prediction of acoustic clusters and save the result as an encoder directory ``out``.

    HuBERT masks about half of the frames in pretraining, hence ``mask_ratio`` 0.5;
    the CNN is trained too (``cfg.freeze_feature_encoder`` is forced off): it starts random.
    """
    info = read_encoder_info(encoder)
    work = Path(tempfile.mkdtemp(prefix=".pretrain.", dir=out.parent))
    try:
        build_acoustic_targets(utterances, info, clusters, work / "targets", seed=cfg.train.seed, prosody=prosody)
        artifact = work / "cpt"
        run_cpt(encoder, utterances, {"acoustic": work / "targets"}, mask_ratio, replace(cfg, freeze_feature_encoder=False), artifact, LocalRuntime(work / "ckpt"))
        # What the encoder heard, by content: an audit can tell a separate pretraining corpus from a study's test session.
        record = json.loads((artifact / RECORD_FILE).read_text())
        record["used"]["trained_on"]["audio"] = sorted({audio_digest(u.path) for u in utterances})
        (encoder_dir(artifact) / PRETRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
        encoder_dir(artifact).rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
