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
from trainables.data.metadata import MetadataTask
from trainables.data.transcripts import encode

logger = logging.getLogger(__name__)


class UtteranceDataset(Dataset):
    """Utterances as ``{"waveform": [samples], "label": int, "utt_id": str, "index": int, "aux": {task: int}}``.

    ``max_seconds`` crops longer utterances by ``crop_policy``; ``label_index``
    maps class names to indices (utterances whose label it lacks get -1);
    ``aux_tasks`` are metadata tasks whose class index each item carries
    (:data:`~trainables.data.metadata.IGNORE_INDEX` where the manifest lacks it);
    with ``transcripts`` each item also carries its transcript's CTC ids
    (``"text"``), empty when the utterance has none or was cropped (a crop no
    longer says the whole transcript).
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        label_index: dict[str, int],
        sample_rate: int = 16000,
        max_seconds: float | None = None,
        crop_policy: Crop = Crop.RANDOM,
        seed: int = 0,
        aux_tasks: Sequence[MetadataTask] = (),
        transcripts: bool = False,
    ):
        self.utterances = list(utterances)
        self.aux_tasks = tuple(aux_tasks)
        self.transcripts = transcripts
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
        full = load_waveform(utt.path, self.sample_rate)
        waveform = crop(full, self.max_samples, self.crop_policy, self.generator)
        aux = {task.name: task.index(utt) for task in self.aux_tasks}
        item = {"waveform": waveform, "label": self.label_index.get(utt.label, -1), "utt_id": utt.utt_id, "index": index, "aux": aux}
        if self.transcripts:
            item["text"] = encode(utt.transcript) if waveform.numel() == full.numel() else []
        return item


@dataclass
class Batch:
    """A padded batch.

    waveforms: ``[B, T]`` float, zero-padded; attention_mask: ``[B, T]`` long (1 = real sample);
    labels: ``[B]`` long; utt_ids: B ids; indices: ``[B]`` long positions in the dataset;
    frame_labels: per label set ``[B, frames]`` long and frame_mask: ``[B, frames]``
    bool, True = masked (continued pretraining only); aux_labels: per metadata
    task ``[B]`` long (-100 where unknown); text: CTC targets ``[B, S]`` long
    (padded with 0) and text_lengths ``[B]`` (0: no transcript), when asked.
    """

    waveforms: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    utt_ids: list[str]
    indices: torch.Tensor
    frame_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    frame_mask: torch.Tensor | None = None
    aux_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    text: torch.Tensor | None = None
    text_lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.waveforms.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.utt_ids,
            self.indices,
            {name: labels.to(device, non_blocking=True) for name, labels in self.frame_labels.items()},
            None if self.frame_mask is None else self.frame_mask.to(device, non_blocking=True),
            {name: labels.to(device, non_blocking=True) for name, labels in self.aux_labels.items()},
            None if self.text is None else self.text.to(device, non_blocking=True),
            None if self.text_lengths is None else self.text_lengths.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return len(self.utt_ids)

    def split(self, max_seconds: float | None, sample_rate: int) -> list["Batch"]:
        """Consecutive parts of at most ``max_seconds`` of padded audio each (at least one utterance), for gradient accumulation.

        Every part keeps the batch's padded length, so frame-level fields stay
        aligned; a bucketed batch holds utterances of similar length, so little is padding.
        """
        seconds = self.waveforms.shape[1] / sample_rate
        rows = len(self) if max_seconds is None else max(1, int(max_seconds // max(seconds, 1e-9)))
        if rows >= len(self):
            return [self]

        def part(start: int, stop: int) -> "Batch":
            pick = lambda tensor: None if tensor is None else tensor[start:stop]  # noqa: E731
            return Batch(
                self.waveforms[start:stop], self.attention_mask[start:stop], self.labels[start:stop], self.utt_ids[start:stop],
                self.indices[start:stop], {name: labels[start:stop] for name, labels in self.frame_labels.items()}, pick(self.frame_mask),
                {name: labels[start:stop] for name, labels in self.aux_labels.items()}, pick(self.text), pick(self.text_lengths),
            )

        return [part(start, min(start + rows, len(self))) for start in range(0, len(self), rows)]


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
    aux = {name: torch.tensor([item["aux"][name] for item in items], dtype=torch.long) for name in items[0].get("aux", {})}
    batch = Batch(waveforms, mask, labels, [item["utt_id"] for item in items], indices, aux_labels=aux)
    if "text" in items[0]:
        batch.text_lengths = torch.tensor([len(item["text"]) for item in items], dtype=torch.long)
        batch.text = torch.zeros(len(items), max(1, int(batch.text_lengths.max())), dtype=torch.long)
        for row, item in enumerate(items):
            batch.text[row, : len(item["text"])] = torch.tensor(item["text"], dtype=torch.long)
    return batch


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

    ``one_at_a_time`` for encoders whose frames depend on zero padding (a CNN
    that normalises over time, group norm, without
    :class:`~trainables.models.masked_norm.MaskedGroupNorm`): there an
    utterance must be encoded alone to give the same features whatever its batch.
    """
    if one_at_a_time:
        return [[index] for index in range(len(durations))]
    return BucketBatchSampler(durations, max_batch_seconds, shuffle=False).all_batches()
