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
Log F0 is standardised over voiced frames only, unvoiced frames sitting at the
voiced mean: standardised over all frames, the gap between unvoiced (0) and
voiced (about 5) frames is the feature's whole spread, and k-means hardly splits
voiced frames by pitch (voicing itself is the third feature).
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
#: F0 search range (Hz) of the prosodic features, and the window-corrected autocorrelation peak above which a frame is voiced.
F0_RANGE_HZ = (70.0, 400.0)
VOICED_PEAK = 0.4
#: A shorter lag whose autocorrelation peak is this close to the highest one is taken as the period (no octave errors down).
OCTAVE_TOLERANCE = 0.9
#: Noise splits a peak into bumps: the period is the highest point within this fraction of that lag.
PEAK_WIDTH = 0.08
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

    Energy is that of the frame's receptive field (Hann window). Pitch is
    measured on a longer window centred on the same frame, three periods of
    the lowest F0 searched (Praat's rule; the 25 ms receptive field holds less
    than two periods of a low male voice), zero-padded at the edges. F0 is the
    lag of the highest peak of the normalised autocorrelation within
    :data:`F0_RANGE_HZ`, corrected for the window's own autocorrelation
    (Boersma 1993), so that a periodic frame peaks near 1 at any pitch; a frame
    whose peak is below :data:`VOICED_PEAK` is unvoiced.
    """
    samples = waveform.numpy().astype(np.float64)
    frames, window, hop, rate = info.frame_count(samples.size), info.receptive_field, info.total_stride, info.sample_rate
    if frames == 0:
        return np.zeros((0, 3), dtype=np.float32)
    starts = np.arange(frames)[:, None] * hop
    energy = np.log(np.mean((samples[starts + np.arange(window)[None]] * np.hanning(window)) ** 2, axis=1) + 1e-8)

    shortest, longest = int(rate / F0_RANGE_HZ[1]), int(np.ceil(rate / F0_RANGE_HZ[0]))
    span = max(window, 3 * longest)
    pad = span  # enough zeros on both sides for any centred window
    padded = np.concatenate([np.zeros(pad), samples, np.zeros(pad)])
    offset = pad + window // 2 - span // 2  # each pitch window shares its frame's centre
    taper = np.hanning(span)
    windowed = padded[offset + starts + np.arange(span)[None]] * taper
    size = 1 << int(np.ceil(np.log2(2 * span)))
    autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(windowed, size)) ** 2)[:, : longest + 1]
    autocorrelation /= autocorrelation[:, :1] + 1e-12
    taper_autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(taper, size)) ** 2)[: longest + 1]
    autocorrelation /= taper_autocorrelation / taper_autocorrelation[0]
    search = autocorrelation[:, shortest - 1 : longest + 2]
    centre = search[:, 1:-1]
    local_max = (centre >= search[:, :-2]) & (centre >= search[:, 2:])
    best = np.where(local_max, centre, -np.inf).max(axis=1, keepdims=True)
    # Every multiple of the period peaks too: the shortest lag within OCTAVE_TOLERANCE of the best is the period.
    candidate = np.argmax(local_max & (centre >= OCTAVE_TOLERANCE * best), axis=1)
    near = np.abs(np.arange(centre.shape[1])[None] - candidate[:, None]) <= PEAK_WIDTH * (candidate + shortest)[:, None]
    lag = shortest + np.argmax(np.where(near, centre, -np.inf), axis=1)
    peak = np.clip(autocorrelation[np.arange(frames), lag], 0.0, 1.0)
    log_f0 = np.where(peak > VOICED_PEAK, np.log(rate / lag), 0.0)
    return np.stack([energy, log_f0, peak], axis=1).astype(np.float32)


def acoustic_features(waveform: torch.Tensor, info: EncoderInfo, prosody: bool = True) -> np.ndarray:
    """MFCCs with deltas, and with ``prosody`` the prosodic features: ``[frames, 39 (+3)]`` float32."""
    features = mfcc_features(waveform, info)
    return np.concatenate([features, prosody_features(waveform, info)], axis=1) if prosody else features


def standardise_targets(frames: np.ndarray, prosody: bool) -> np.ndarray:
    """Frames ``[N, 39 (+3)]`` from :func:`acoustic_features`, standardised per column for k-means: ``[N, 39 (+3)]`` float32.

    With ``prosody``, log F0 (the second last column) is standardised over the
    voiced frames (F0 > 0) and unvoiced frames are set to 0, the voiced mean;
    the prosodic columns are then weighted by :data:`PROSODY_WEIGHTS`.
    """
    out = (frames - frames.mean(0)) / (frames.std(0) + 1e-6)
    if prosody:
        log_f0 = frames[:, -2]
        voiced = log_f0 > 0
        if voiced.any():
            out[:, -2] = np.where(voiced, (log_f0 - log_f0[voiced].mean()) / (log_f0[voiced].std() + 1e-6), 0.0)
        out[:, -3:] *= PROSODY_WEIGHTS
    return out.astype(np.float32)


def build_acoustic_targets(utterances: Sequence[Utterance], info: EncoderInfo, clusters: int, out: Path, seed: int = 0, prosody: bool = True) -> None:
    """Write a clustering-format artifact of k-means labels of acoustic frames for ``utterances`` at ``out``."""
    features = [acoustic_features(load_waveform(u.path, info.sample_rate), info, prosody) for u in utterances]
    stacked = standardise_targets(np.concatenate(features), prosody)
    result = fit_kmeans(stacked, KMeansConfig(n_clusters=clusters, seed=seed, n_init=1))
    labels = assign_labels(stacked, result.centroids)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in features])]).tolist()
    out.mkdir(parents=True)
    np.save(out / LABELS_FILE, labels.astype(np.int32))
    np.save(out / CENTROIDS_FILE, result.centroids)
    (out / INDEX_FILE).write_text(json.dumps({"utt_ids": [u.utt_id for u in utterances], "offsets": offsets}))
    params = {"features": "mfcc39+prosody3 (log F0 standardised over voiced frames)" if prosody else "mfcc39", "clusters": clusters}
    write_record(out, PhaseRecord(phase="clustering", params=params, upstream={}, used={"fit_on": describe_utterances(utterances)}, results=result.record()))


def pretrain_on_acoustic_clusters(
    encoder: str | Path,
    utterances: Sequence[Utterance],
    out: Path,
    cfg: CptConfig,
    clusters: int = 50,
    mask_ratio: float = 0.5,
    prosody: bool = True,
    unmasked_weight: float = 1.0,
) -> None:
    """Pretrain ``encoder`` by masked prediction of acoustic clusters and save the result as an encoder directory ``out``.

    HuBERT masks about half of the frames in pretraining, hence ``mask_ratio`` 0.5;
    the CNN is trained too (``cfg.freeze_feature_encoder`` is forced off): it starts random.
    ``unmasked_weight`` weighs the loss on the unmasked frames (HuBERT-base: 0):
    a random CNN given minutes learns each frame's own pitch and spectrum from
    that loss, which reaches it directly; the masked frames' loss reaches it only
    through their context (``docs/learning.md``).
    """
    info = read_encoder_info(encoder)
    work = Path(tempfile.mkdtemp(prefix=".pretrain.", dir=out.parent))
    try:
        build_acoustic_targets(utterances, info, clusters, work / "targets", seed=cfg.train.seed, prosody=prosody)
        artifact = work / "cpt"
        run_cpt(encoder, utterances, {"acoustic": work / "targets"}, mask_ratio, replace(cfg, freeze_feature_encoder=False, unmasked_weight=unmasked_weight), artifact,
                LocalRuntime(work / "ckpt"))
        # What the encoder heard, by content: an audit can tell a separate pretraining corpus from a study's test session.
        record = json.loads((artifact / RECORD_FILE).read_text())
        record["used"]["trained_on"]["audio"] = sorted({audio_digest(u.path) for u in utterances})
        (encoder_dir(artifact) / PRETRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
        encoder_dir(artifact).rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
