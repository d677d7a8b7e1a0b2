"""The metadata-enhanced method: transcripts in the manifest, ARI, co-attention, CTC, its two stages through the cache and the audit."""

from __future__ import annotations

import copy
import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from study.audit.checks import audit_fold
from study.cache.chain import FoldChain, run_fold_chain
from study.cache.store import ArtifactCache
from study.config.base import StudyConfigError
from study.config.loading import load_study, shipped_studies
from trainables.config import smoke_settings
from trainables.data.folds import FoldProtocol
from trainables.data.iemocap import read_iemocap
from trainables.data.labels import get_label_set
from trainables.data.manifest import MANIFEST_COLUMNS, read_manifest, write_manifest
from trainables.data.transcripts import VOCAB_SIZE, encode
from trainables.executors import LocalExecutor
from trainables.models.encoder import load_encoder
from trainables.models.multitask import CoAttention, MultitaskClassifier, ctc_loss
from trainables.data.batching import UtteranceDataset, collate
from trainables.data.audio import Crop

CLASSES = ("neu", "hap", "ang", "sad")
LINE = re.compile(r"^(\S+) \[[^\]]*\]: (.*)$")


def _lines(release: Path) -> dict[str, tuple[Path, str]]:
    out = {}
    for path in sorted(release.glob("Session*/dialog/transcriptions/*.txt")):
        for line in path.read_text().splitlines():
            match = LINE.match(line)
            if match:
                out[match[1]] = (path, match[2])
    return out


def test_transcripts_are_read_exactly_and_a_missing_line_is_reported(corpus_copy):
    lines = _lines(corpus_copy)
    reading = read_iemocap(corpus_copy, get_label_set("4class"))
    assert reading.utterances and all(u.transcript == lines[u.utt_id][1] for u in reading.utterances)
    assert all(encode(u.transcript) for u in reading.utterances)
    # Drop one utterance's line and one whole dialog's file.
    victim = reading.utterances[0]
    path, _ = lines[victim.utt_id]
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith(victim.utt_id + " ")))
    other = next(u for u in reading.utterances if lines[u.utt_id][0] != path)
    lines[other.utt_id][0].unlink()
    again = read_iemocap(corpus_copy, get_label_set("4class"))
    by_id = {u.utt_id: u for u in again.utterances}
    assert len(by_id) == len(reading.utterances)  # nobody excluded
    assert by_id[victim.utt_id].transcript == "" and by_id[other.utt_id].transcript == ""
    problems = {(p.utt_id, p.problem, p.action) for p in again.problems}
    assert (victim.utt_id, "no line in its dialog's transcription file", "kept: empty transcript") in problems
    assert (other.utt_id, "no transcription file for its dialog", "kept: empty transcript") in problems


def test_a_manifest_without_the_transcript_column_still_reads(small_utterances, tmp_path):
    path = tmp_path / "old.csv"
    write_manifest(small_utterances, path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in MANIFEST_COLUMNS if c != "transcript"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert {u.transcript for u in read_manifest(path)} == {""}


def _batch(utterances, count=4):
    dataset = UtteranceDataset(utterances[:count], {c: i for i, c in enumerate(CLASSES)}, 16000, None, Crop.NONE, transcripts=True)
    return collate([dataset[i] for i in range(len(dataset))])


def test_ari_with_zero_alphas_is_exactly_the_plain_encoder(tiny_encoder, small_utterances):
    batch = _batch(small_utterances)
    encoder = load_encoder(tiny_encoder).eval()
    with torch.no_grad():
        plain = encoder(batch.waveforms, batch.attention_mask, output_hidden_states=True)
        model = MultitaskClassifier(encoder, "average", 4, {"gender": 2}, integration="ari").eval()  # hooks ARI into the encoder's layers
        out = model(batch.waveforms, batch.attention_mask)
        wrapped = encoder(batch.waveforms, batch.attention_mask, output_hidden_states=True)
        assert torch.equal(wrapped.last_hidden, plain.last_hidden)
        assert all(torch.equal(a, b) for a, b in zip(wrapped.hidden_states, plain.hidden_states))
        # The states ARI integrates are the layers' inputs: h_0 .. h_{L-1} are HF's hidden_states (its last one is after the final norm).
        assert len(model.ari.states) == len(plain.hidden_states)
        assert all(torch.equal(a, b) for a, b in zip(model.ari.states[:-1], plain.hidden_states[:-1]))
        model.ari.alpha.fill_(0.5)
        shifted = model(batch.waveforms, batch.attention_mask)
    assert not torch.equal(shifted["emotion"], out["emotion"])


def test_the_emotion_branch_reads_the_classifiers_layers_and_statistics_pooling(tiny_encoder, small_utterances):
    batch = _batch(small_utterances)
    model = MultitaskClassifier(load_encoder(tiny_encoder), "stats", 4, {"gender": 2}, coattention=True, head_norm="batch", layers="weighted")
    assert model.ser_mix is not None and model.heads["emotion"].in_features == 2 * 2 * 32  # SER frames + the gender view, mean and std
    out = model(batch.waveforms, batch.attention_mask)
    assert out["emotion"].shape == (len(batch.waveforms), 4)
    out["emotion"].sum().backward()
    assert model.ser_mix.logits.grad.abs().sum() > 0
    assert MultitaskClassifier(load_encoder(tiny_encoder), "average", 4, {}).ser_mix is None


def test_the_emotion_branch_reads_the_loudness_level_and_spectral_balance_beside_its_pooled_frames(tiny_encoder, small_utterances):
    batch = _batch(small_utterances)
    model = MultitaskClassifier(load_encoder(tiny_encoder), "average", 4, {"gender": 2}, head_norm="batch", loudness=True, spectral_balance=True).eval()
    assert model.heads["emotion"].in_features == 32 + 2 + 8 and model.heads["gender"].in_features == 32
    with torch.no_grad():
        quiet, loud = model(batch.waveforms, batch.attention_mask), model(4 * batch.waveforms, batch.attention_mask)
    assert not torch.allclose(quiet["emotion"], loud["emotion"], atol=1e-3)  # the encoder alone hardly tells them apart
    assert torch.allclose(quiet["gender"], loud["gender"], atol=5e-2)
    emphasised = torch.nn.functional.pad(batch.waveforms[:, 1:] - 0.97 * batch.waveforms[:, :-1], (1, 0))
    with torch.no_grad():
        balance = model.levels["spectral_balance"]
        assert (balance(emphasised, batch.attention_mask) - balance(batch.waveforms, batch.attention_mask)).abs().max() > 1.0


def test_co_attention_never_attends_to_padded_frames():
    torch.manual_seed(0)
    attention = CoAttention(8, 2).eval()
    query, view = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    changed = view.clone()
    changed[1, 3:] = 1e3  # only padded frames change
    with torch.no_grad():
        assert torch.allclose(attention(query, view, mask), attention(query, changed, mask), atol=1e-6)
        unmasked = attention(query, changed, torch.ones_like(mask))
    assert not torch.allclose(attention(query, view, mask)[1], unmasked[1])


def test_ctc_loss_falls_on_the_demo_transcripts(tiny_encoder, small_utterances):
    torch.manual_seed(0)
    batch = _batch([u for u in small_utterances if u.duration_s < 2.5], count=6)
    assert int(batch.text_lengths.min()) > 0
    model = MultitaskClassifier(load_encoder(tiny_encoder), "average", 4, {}, ctc_vocab=VOCAB_SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(batch.waveforms, batch.attention_mask)
        loss = ctc_loss(out["ctc"], out["frame_mask"], batch.text, batch.text_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_utterances, tiny_encoder):
    base = smoke_settings(epochs=1)
    settings = replace(base, kmeans=replace(base.kmeans, max_fit_frames=5000, n_init=1))
    cache_dir = tmp_path_factory.mktemp("metadata") / "cache"
    result = run_fold_chain(FoldChain(small_utterances, 1, FoldProtocol(), "metadata", {"pooling": "average"}, settings, str(tiny_encoder), CLASSES),
                            ArtifactCache(cache_dir), LocalExecutor())
    return cache_dir, json.loads(json.dumps(result.to_dict()))


def test_two_stages_through_the_cache_and_the_audit_covers_both(chain, tmp_path):
    cache_dir, fold = chain
    assert fold["links"] == {"mtl_stage1": [], "mtl_stage2": ["mtl_stage1"]}
    assert 0 <= fold["test"]["ua"] <= 1
    stage2 = json.loads((cache_dir / "mtl_stage2" / fold["artifacts"]["mtl_stage2"] / "record.json").read_text())
    objective = stage2["params"]["objective"]
    assert objective["integration"] == "ari" and objective["coattention"] and objective["aux"] == {"gender": 1.0, "style": 1.0}
    assert objective["transcript_weight"] == 0.3 and objective["encoder_lr_scale"] == 0.1
    assert {"train_gender_accuracy", "train_style_accuracy", "train_ctc_loss"} <= set(stage2["results"]["history"][0])
    audit = audit_fold(fold, cache_dir)
    assert audit.clean and audit.strict
    roles = {(f.phase, f.role) for f in audit.findings}
    assert {("mtl_stage1", "trained_on"), ("mtl_stage1", "selected_on"), ("mtl_stage2", "trained_on"), ("mtl_stage2", "tested_on")} <= roles
    # Stage 1 trained on the test session: a leak naming stage 1.
    leaky = tmp_path / "cache"
    for step, key in fold["artifacts"].items():
        (leaky / step / key).mkdir(parents=True)
        record = json.loads((cache_dir / step / key / "record.json").read_text())
        if step == "mtl_stage1":
            record["used"]["trained_on"]["sessions"] = [1, 2, 3, 4, 5]
        (leaky / step / key / "record.json").write_text(json.dumps(record))
    assert [(f.phase, f.role) for f in audit_fold(copy.deepcopy(fold), leaky).leaks] == [("mtl_stage1", "trained_on")]


def test_the_transcript_task_on_a_manifest_without_transcripts_is_refused_before_ray(small_utterances, tiny_encoder, tmp_path):
    path = tmp_path / "no_text.csv"
    write_manifest([replace(u, transcript="") for u in small_utterances], path)
    config = load_study(shipped_studies()["methods_smoke"], [f"data.manifest={path}", f"encoder={tiny_encoder}", "search.space.method=metadata"])
    with pytest.raises(StudyConfigError, match=r"search.space.transcript_weight: the transcript task is on but no utterance .*ser-study prepare.*transcript_weight 0"):
        config.check_inputs()
    off = load_study(shipped_studies()["methods_smoke"], [f"data.manifest={path}", f"encoder={tiny_encoder}", "search.space.method=metadata",
                                                          "search.space.metadata={transcript_weight: 0}"])
    off.check_inputs()
