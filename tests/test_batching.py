"""Audio loading, the length-bucketed sampler (also under DDP) and the collate."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from trainables.data.audio import AudioError, Crop, chunk, crop, load_waveform
from trainables.data.iemocap import simulated_durations
from trainables.data.batching import BucketBatchSampler, UtteranceDataset, collate, padding_fraction


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("epoch", [0, 1])
def test_every_utterance_once_per_epoch_across_ranks(replicas, epoch):
    durations = simulated_durations(523)
    cap = 40.0
    ranks = [BucketBatchSampler(durations, cap, num_replicas=replicas, rank=r, seed=5) for r in range(replicas)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    per_rank = [list(sampler) for sampler in ranks]
    assert len({len(batches) for batches in per_rank}) == 1, "every rank must run the same number of steps"
    assert all(len(batches) == len(sampler) for batches, sampler in zip(per_rank, ranks))
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(seen) == list(range(len(durations)))
    for batches in per_rank:
        for batch in batches:
            padded = len(batch) * durations[batch].max()
            assert padded <= cap or len(batch) == 1


def test_batches_change_between_epochs_but_not_between_runs():
    durations = simulated_durations(300)
    a = BucketBatchSampler(durations, 30.0, seed=1)
    b = BucketBatchSampler(durations, 30.0, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_overlong_utterance_gets_its_own_batch():
    durations = [1.0, 1.0, 50.0, 1.0]
    batches = list(BucketBatchSampler(durations, 10.0, shuffle=False))
    assert [2] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_padding_is_under_ten_percent_and_below_random_batches():
    durations = simulated_durations(5531)
    bucketed = BucketBatchSampler(durations, 60.0, seed=0).all_batches()
    bucketed_waste = padding_fraction(bucketed, durations)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(durations))
    size = int(round(len(durations) / len(bucketed)))
    random_batches = [order[i : i + size].tolist() for i in range(0, len(order), size)]
    assert bucketed_waste < 0.10
    assert bucketed_waste < padding_fraction(random_batches, durations) / 3


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        BucketBatchSampler([1.0], 0.0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([1.0, 2.0], 5.0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="cannot be shared"):
        BucketBatchSampler([1.0], 5.0, num_replicas=2, rank=0)


def test_load_waveform_resamples_and_mixes_down(tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    path = tmp_path / "s.wav"
    sf.write(str(path), stereo, 8000)
    waveform = load_waveform(path, 16000)
    assert waveform.dtype == torch.float32 and waveform.shape == (16000,)
    assert waveform.abs().max() == pytest.approx(0.5, abs=0.02)
    bad = tmp_path / "bad.wav"
    bad.write_text("hello")
    with pytest.raises(AudioError, match="bad.wav is not readable audio"):
        load_waveform(bad, 16000)


def test_crop_and_chunk():
    waveform = torch.arange(1000, dtype=torch.float32)
    assert crop(waveform, 300, Crop.START).tolist() == list(range(300))
    generator = torch.Generator().manual_seed(0)
    window = crop(waveform, 300, Crop.RANDOM, generator)
    assert window.numel() == 300 and (window[1:] - window[:-1] == 1).all()
    assert crop(waveform, 300, Crop.NONE).numel() == 1000
    chunks = chunk(waveform, 450, min_samples=200)
    assert [c.numel() for c in chunks] == [450, 550]
    assert torch.equal(torch.cat(chunks), waveform)


def test_dataset_and_collate(small_utterances):
    label_index = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
    dataset = UtteranceDataset(small_utterances[:6], label_index, max_seconds=1.0, crop_policy=Crop.RANDOM)
    assert max(dataset.durations()) <= 1.0
    items = [dataset[i] for i in range(6)]
    batch = collate(items)
    lengths = [item["waveform"].numel() for item in items]
    assert batch.waveforms.shape == (6, max(lengths)) and batch.attention_mask.shape == batch.waveforms.shape
    assert batch.attention_mask.sum(dim=1).tolist() == lengths
    assert batch.labels.tolist() == [label_index[u.label] for u in small_utterances[:6]]
    assert batch.utt_ids == [u.utt_id for u in small_utterances[:6]]
    for row, length in enumerate(lengths):
        assert torch.all(batch.waveforms[row, length:] == 0)


def test_a_batch_splits_into_aligned_parts_of_bounded_audio(small_utterances):
    dataset = UtteranceDataset(small_utterances[:7], {"neu": 0, "hap": 1, "ang": 2, "sad": 3}, 16000, None, Crop.NONE, transcripts=True)
    batch = collate([dataset[i] for i in range(7)])
    seconds = batch.waveforms.shape[1] / 16000
    parts = batch.split(2.5 * seconds, 16000)
    assert [len(p) for p in parts] == [2, 2, 2, 1]
    assert sum((p.utt_ids for p in parts), []) == batch.utt_ids
    assert torch.equal(torch.cat([p.waveforms for p in parts]), batch.waveforms)
    assert torch.equal(torch.cat([p.text for p in parts]), batch.text) and torch.equal(torch.cat([p.labels for p in parts]), batch.labels)
    assert batch.split(None, 16000) == [batch] and len(batch.split(0.001, 16000)) == 7  # at least one utterance a part


def test_accumulated_parts_give_the_whole_batch_gradient(small_utterances, tiny_encoder):
    """What the training loop does with micro_batch_seconds: each part's mean loss weighted by its share of the batch."""
    from trainables.models.encoder import load_encoder
    from trainables.models.heads import UtteranceClassifier

    torch.manual_seed(0)
    model = UtteranceClassifier(load_encoder(tiny_encoder), "average", {"emotion": 4}).eval()  # eval: no dropout, so both runs match
    dataset = UtteranceDataset(small_utterances[:6], {"neu": 0, "hap": 1, "ang": 2, "sad": 3}, 16000, 2.0, Crop.START)
    batch = collate([dataset[i] for i in range(6)])

    def gradients(parts):
        model.zero_grad()
        for part in parts:
            loss = torch.nn.functional.cross_entropy(model(part.waveforms, part.attention_mask)["emotion"], part.labels)
            (loss * len(part) / len(batch)).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, accumulated = gradients([batch]), gradients(batch.split(4.0, 16000))
    assert len(whole) == len(accumulated) > 0
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(whole, accumulated))
