"""Phase 2: frame embeddings of the TAPT encoder at the requested layers, in one pass.

Storage (per artifact): ``layer_<L>.npy`` float16 ``[total_frames, hidden]``
for every requested layer, and ``index.json`` with the utterance ids and their
frame offsets (``offsets[i]:offsets[i+1]`` are utterance i's frames). Whole
utterances are encoded (no crop), so every frame gets an embedding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from trainables.atomic import atomic_directory
from trainables.data.audio import Crop
from trainables.data.batching import UtteranceDataset, collate
from trainables.data.manifest import Utterance
from trainables.models.encoder import load_encoder
from trainables.phases.artifacts import PhaseRecord, describe_utterances, write_record
from trainables.runtime import Runtime, autocast, device_name

INDEX_FILE = "index.json"


def layer_file(artifact: Path, layer: int) -> Path:
    return artifact / f"layer_{layer}.npy"


def read_index(artifact: Path) -> tuple[list[str], np.ndarray]:
    """Utterance ids and frame offsets ``[N + 1]`` of an embeddings (or clustering) artifact."""
    index = json.loads((artifact / INDEX_FILE).read_text())
    return index["utt_ids"], np.asarray(index["offsets"], dtype=np.int64)


def load_layer(artifact: Path, layer: int) -> np.ndarray:
    """Frames of one layer, memory-mapped: ``[total_frames, hidden]`` float16."""
    return np.load(layer_file(artifact, layer), mmap_mode="r")


def run_embeddings(
    encoder_path: Path,
    utterances: Sequence[Utterance],
    layers: Sequence[int],
    out: Path,
    runtime: Runtime,
    max_batch_seconds: float = 320.0,  # inference only: no activations kept for backward
) -> dict:
    """Encode ``utterances`` and store the hidden states of ``layers``; returns frame counts."""
    started = time.perf_counter()
    encoder = load_encoder(encoder_path).to(runtime.device).eval()
    for layer in layers:
        encoder.info.check_layer(layer)
    dataset = UtteranceDataset(utterances, {}, encoder.info.sample_rate, None, Crop.NONE)
    batches = encoder.inference_batches(dataset.durations(), max_batch_seconds, runtime.device)
    frames: dict[int, list[np.ndarray | None]] = {layer: [None] * len(dataset) for layer in layers}
    audio_seconds = 0.0
    with torch.no_grad():
        for batch_indices in batches:
            batch = collate([dataset[i] for i in batch_indices]).to(runtime.device)
            with autocast(runtime.device):
                out_ = encoder(batch.waveforms, batch.attention_mask, output_hidden_states=True)
            lengths = out_.frame_mask.sum(dim=1).tolist()
            for layer in layers:
                hidden = out_.hidden_states[layer].to(torch.float16).cpu().numpy()
                for row, index in enumerate(batch_indices):
                    frames[layer][index] = hidden[row, : lengths[row]]
            audio_seconds += float(batch.attention_mask.sum()) / encoder.info.sample_rate
    counts = [len(f) for f in frames[layers[0]]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    elapsed = time.perf_counter() - started
    with atomic_directory(out) as tmp:
        for layer in layers:
            np.save(layer_file(tmp, layer), np.concatenate(frames[layer]))
        (tmp / INDEX_FILE).write_text(json.dumps({"utt_ids": [u.utt_id for u in utterances], "offsets": offsets, "layers": list(layers)}))
        write_record(
            tmp,
            PhaseRecord(
                phase="embeddings",
                params={"layers": list(layers)},
                upstream={"encoder": str(encoder_path)},
                used={"embedded": describe_utterances(utterances)},
                results={"total_frames": offsets[-1], "audio_seconds": audio_seconds, "audio_s_per_s": audio_seconds / max(elapsed, 1e-9)},
                wall_seconds=elapsed,
                device=device_name(runtime.device),
            ),
        )
    return {"total_frames": offsets[-1], "audio_s_per_s": audio_seconds / max(elapsed, 1e-9)}
