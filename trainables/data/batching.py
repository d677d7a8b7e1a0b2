"""Datasets, length-bucketed batches capped by audio seconds, and padding collate.

IEMOCAP utterances run from under 1 s to over 30 s: fixed-size random batches
would spend much of their compute on padding. :class:`BucketBatchSampler` groups
utterances of similar length and caps each batch's *padded* audio seconds
(batch size x longest utterance), which bounds memory as well as waste.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from trainables.data.audio import Crop, crop, load_waveform
from trainables.data.manifest import Utterance

logger = logging.getLogger(__name__)


class UtteranceDataset(Dataset):
    """Utterances as ``{"waveform": [samples], "label": int, "utt_id": str, "index": int}``.

    ``max_seconds`` crops longer utterances by ``crop_policy``; ``label_index``
    maps class names to indices (utterances whose label it lacks get -1).
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        label_index: dict[str, int],
        sample_rate: int = 16000,
        max_seconds: float | None = None,
        crop_policy: Crop = Crop.RANDOM,
        seed: int = 0,
    ):
        self.utterances = list(utterances)
        self.label_index = label_index
        self.sample_rate = sample_rate
        self.max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
        self.crop_policy = crop_policy
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.utterances)

    def durations(self) -> list[float]:
        """Seconds of audio each item yields (after cropping): what the batch sampler packs."""
        cap = math.inf if self.max_samples is None or self.crop_policy is Crop.NONE else self.max_samples / self.sample_rate
        return [min(u.duration_s, cap) for u in self.utterances]

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        waveform = crop(load_waveform(utt.path, self.sample_rate), self.max_samples, self.crop_policy, self.generator)
        return {"waveform": waveform, "label": self.label_index.get(utt.label, -1), "utt_id": utt.utt_id, "index": index}


@dataclass
class Batch:
    """A padded batch.

    waveforms: ``[B, T]`` float, zero-padded; attention_mask: ``[B, T]`` long (1 = real sample);
    labels: ``[B]`` long; utt_ids: B ids; indices: ``[B]`` long positions in the dataset;
    frame_labels: per label set ``[B, frames]`` long (continued pretraining only).
    """

    waveforms: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    utt_ids: list[str]
    indices: torch.Tensor
    frame_labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.waveforms.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.utt_ids,
            self.indices,
            {name: labels.to(device, non_blocking=True) for name, labels in self.frame_labels.items()},
        )

    def __len__(self) -> int:
        return len(self.utt_ids)


def collate(items: Sequence[dict]) -> Batch:
    """Pad the waveforms of ``items`` to the longest and stack them into a :class:`Batch`."""
    lengths = [item["waveform"].numel() for item in items]
    longest = max(lengths)
    waveforms = torch.zeros(len(items), longest)
    mask = torch.zeros(len(items), longest, dtype=torch.long)
    for row, (item, length) in enumerate(zip(items, lengths)):
        waveforms[row, :length] = item["waveform"]
        mask[row, :length] = 1
    labels = torch.tensor([item["label"] for item in items], dtype=torch.long)
    indices = torch.tensor([item["index"] for item in items], dtype=torch.long)
    return Batch(waveforms, mask, labels, [item["utt_id"] for item in items], indices)


def padding_fraction(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Share of the padded samples that are padding, over ``batches`` of dataset indices."""
    padded = sum(len(b) * max(durations[i] for i in b) for b in batches)
    real = sum(durations[i] for b in batches for i in b)
    return 1.0 - real / padded if padded else 0.0


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances whose padded seconds stay under a cap.

    Each epoch the utterances are sorted by a slightly jittered duration (so
    batches vary between epochs), packed greedily so that
    ``len(batch) * longest_in_batch <= max_batch_seconds``, and the batches are
    shuffled. An utterance longer than the cap forms a batch of its own.

    Under DDP (``num_replicas > 1``) every rank builds the same batch list from
    the shared seed and epoch and takes every ``num_replicas``-th batch; batches
    are split until their count divides evenly, so every rank runs the same
    number of steps and every utterance is seen exactly once per epoch.
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        length_jitter: float = 0.05,  # +-5% on the sort key: new batches each epoch for about 1% more padding
    ):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if len(durations) < num_replicas:
            raise ValueError(f"{len(durations)} utterances cannot be shared among {num_replicas} ranks; use fewer workers")
        self.durations = np.asarray(durations, dtype=float)
        self.max_batch_seconds = max_batch_seconds
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.length_jitter = length_jitter if shuffle else 0.0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def all_batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in the order they are dealt out."""
        rng = np.random.default_rng([self.seed, self.epoch])
        keys = self.durations * (1.0 + rng.uniform(-self.length_jitter, self.length_jitter, len(self.durations)))
        order = np.argsort(keys, kind="stable")
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for index in order.tolist():
            duration = self.durations[index]
            if current and (len(current) + 1) * max(longest, duration) > self.max_batch_seconds:
                batches.append(current)
                current, longest = [], 0.0
            current.append(index)
            longest = max(longest, duration)
        if current:
            batches.append(current)
        batches = self._divisible(batches)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _divisible(self, batches: list[list[int]]) -> list[list[int]]:
        """Split the largest batches until the count is a multiple of ``num_replicas``."""
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[largest]
            if len(batch) < 2:
                raise ValueError(
                    f"cannot deal {len(self.durations)} utterances into equal batch counts for {self.num_replicas} ranks; use fewer workers"
                )
            half = len(batch) // 2
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.all_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return len(self.all_batches()) // self.num_replicas


def inference_batches(durations: Sequence[float], max_batch_seconds: float, one_at_a_time: bool) -> list[list[int]]:
    """Batches for a pass without gradients (evaluation, embeddings): length-bucketed, or one utterance each.

    ``one_at_a_time`` for encoders whose CNN normalises over time (group norm):
    there, zero padding changes the valid frames' features, so an utterance
    must be encoded alone to give the same features whatever its batch.
    """
    if one_at_a_time:
        return [[index] for index in range(len(durations))]
    return BucketBatchSampler(durations, max_batch_seconds, shuffle=False).all_batches()
