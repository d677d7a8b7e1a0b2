"""GMP-TL as a recipe: AM-Softmax, multi-scale pseudo labels, gender from the ids, its chain through the cache and the audit."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

from study.audit.checks import audit_fold
from study.cache.chain import FoldChain, run_fold_chain
from study.cache.store import ArtifactCache
from trainables.config import UtteranceObjective, smoke_settings
from trainables.data.folds import FoldProtocol, build_fold
from trainables.data.metadata import IGNORE_INDEX, METADATA_TASKS, task_coverage
from trainables.executors import LocalExecutor
from trainables.models.heads import CosineClassHead, am_softmax_loss
from trainables.phases.artifacts import read_record
from trainables.phases.tapt import run_tapt
from trainables.recipes.gmp_tl import parse_scales
from trainables.recipes.registry import get_recipe
from trainables.runtime import LocalRuntime

CLASSES = ("neu", "hap", "ang", "sad")
TEST_SESSION = 1
PARAMS = {"scales": "2:3,2:4,1:4", "mask_ratio": 0.3, "pooling": "average"}


def test_am_softmax_logits_and_loss_match_a_hand_computation():
    head = CosineClassHead(2, 3, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    pooled = torch.tensor([[3.0, 4.0]])  # unit vector (0.6, 0.8)
    cosines = [0.6, 0.8, -(0.6 + 0.8) / math.sqrt(2)]
    logits = head(pooled)
    assert logits[0].tolist() == pytest.approx([10 * c for c in cosines], abs=1e-5)
    # Target class 0, margin 0.2: its logit becomes 10 * (0.6 - 0.2), the others stay 10 * cos.
    shifted = [10 * (cosines[0] - 0.2), 10 * cosines[1], 10 * cosines[2]]
    expected = -shifted[0] + math.log(sum(math.exp(v) for v in shifted))
    assert am_softmax_loss(logits, torch.tensor([0]), scale=10.0, margin=0.2).item() == pytest.approx(expected, rel=1e-5)
    # No margin: plain cross-entropy of the scaled cosines.
    plain = -10 * cosines[0] + math.log(sum(math.exp(10 * c) for c in cosines))
    assert am_softmax_loss(logits, torch.tensor([0]), scale=10.0, margin=0.0).item() == pytest.approx(plain, rel=1e-5)


def test_scales_parse_and_bad_scales_say_the_form():
    assert parse_scales("9:50,9:100, 6:150") == ((9, 50), (9, 100), (6, 150))
    recipe = get_recipe("gmp_tl")
    assert recipe.reconstructed and recipe.layers({"scales": "9:50,6:100"}) == {6, 9} and recipe.max_clusters({"scales": "9:50,6:100"}) == 100
    for bad in ("9", "9:1", "a:50", "9:50,9:50", ""):
        with pytest.raises(ValueError, match="scales: .* not allowed: scales is a comma-separated list of layer:K pairs"):
            recipe.resolve({"scales": bad})


def test_gender_and_style_come_from_the_generated_corpus_ids(small_utterances):
    gender = METADATA_TASKS["gender"]
    for utterance in small_utterances:
        assert gender.classes[gender.index(utterance)] == utterance.utt_id.rsplit("_", 1)[1][0]
    counts = task_coverage(gender, small_utterances)
    assert counts["F"] > 0 and counts["M"] > 0 and counts["missing"] == 0
    style = METADATA_TASKS["style"]
    assert {style.classes[style.index(u)] for u in small_utterances} <= {"improvised", "scripted"}
    assert gender.index(replace(small_utterances[0], gender="")) == IGNORE_INDEX


@pytest.fixture(scope="module")
def settings():
    """One epoch per phase; TAPT with its masked pretraining (the paper's), which every recipe's TAPT shares."""
    base = smoke_settings(epochs=1)
    tapt = replace(base.tapt, pretrain="masked", pretrain_layer=1, pretrain_clusters=4)
    return replace(base, tapt=tapt, kmeans=replace(base.kmeans, max_fit_frames=5000, n_init=1))


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_utterances, tiny_encoder, settings):
    """One real GMP-TL fold through the cache (tiny encoder, one epoch per phase), then a second recipe on the same cache."""
    cache_dir = tmp_path_factory.mktemp("gmp") / "cache"
    cache = ArtifactCache(cache_dir)
    run = lambda method, params: run_fold_chain(  # noqa: E731
        FoldChain(small_utterances, TEST_SESSION, FoldProtocol(), method, params, settings, str(tiny_encoder), CLASSES), cache, LocalExecutor()
    )
    gmp = run("gmp_tl", PARAMS)
    alignment = run("alignment", {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "average"})
    return cache_dir, json.loads(json.dumps(gmp.to_dict())), json.loads(json.dumps(alignment.to_dict()))


def _record(cache_dir, fold, step):
    return read_record(cache_dir / fold["phases"][step] / fold["artifacts"][step])


def test_the_chain_embeds_once_for_every_scale_and_clusters_each(chain):
    cache_dir, fold, _ = chain
    assert sorted(fold["built"]) == sorted(
        ["embeddings@tapt", "clustering@tapt", "cpt@tapt", "tapt", "embeddings", "clustering@l2k3", "clustering@l2k4", "clustering@l1k4", "cpt", "finetune"]
    )
    assert _record(cache_dir, fold, "embeddings")["params"]["layers"] == [1, 2]
    assert sorted(fold["links"]["cpt"]) == ["clustering@l1k4", "clustering@l2k3", "clustering@l2k4"]
    for name, (layer, clusters) in {"clustering@l2k3": (2, 3), "clustering@l2k4": (2, 4), "clustering@l1k4": (1, 4)}.items():
        record = _record(cache_dir, fold, name)
        assert record["params"]["layer"] == layer and record["params"]["kmeans"]["n_clusters"] == clusters
        assert fold["links"][name] == ["embeddings"]
    assert 0.0 <= fold["test"]["ua"] <= 1.0


def test_stage_one_sums_one_loss_per_scale_on_labels_that_line_up(chain):
    cache_dir, fold, _ = chain
    record = _record(cache_dir, fold, "cpt")
    assert record["params"]["label_sets"] == {"l1k4": 4, "l2k3": 3, "l2k4": 4}
    [epoch] = record["results"]["history"]
    assert {"train_l1k4_accuracy", "train_l2k3_accuracy", "train_l2k4_accuracy"} <= set(epoch)
    assert epoch["train_mask_ratio"] == pytest.approx(0.3, abs=0.05)
    assert epoch["train_loss"] > 0  # (a PseudoLabelError would have stopped the chain had any set's labels not lined up)


def test_multitask_tapt_and_stage_two_learn_gender_beside_emotion(chain):
    cache_dir, fold, alignment = chain
    tapt = _record(cache_dir, fold, "tapt")
    assert tapt["params"]["objective"] == {"emotion_head": "linear", "am_scale": 30.0, "am_margin": 0.2, "aux": {"gender": 1.0}}
    assert "train_gender_accuracy" in tapt["results"]["history"][0]
    stage2 = _record(cache_dir, fold, "finetune")
    assert stage2["params"]["objective"] == {"emotion_head": "am_softmax", "am_scale": 30.0, "am_margin": 0.2, "aux": {"gender": 0.5}}
    classifier = json.loads((cache_dir / "finetune" / fold["artifacts"]["finetune"] / "classifier" / "classifier.json").read_text())
    assert classifier["head_kinds"] == {"emotion": "cosine", "gender": "linear"} and classifier["tasks"] == {"emotion": 4, "gender": 2}
    # The task-adaptive pretraining is shared with alignment; the supervised TAPT (with gender) is not.
    assert fold["artifacts"]["cpt@tapt"] == alignment["artifacts"]["cpt@tapt"]
    assert fold["artifacts"]["tapt"] != alignment["artifacts"]["tapt"]
    assert "objective" not in _record(cache_dir, alignment, "tapt")["params"] or _record(cache_dir, alignment, "tapt")["params"]["objective"]["aux"] == {}


def test_the_strict_chain_audits_clean_and_a_leaking_multitask_tapt_is_caught(chain, small_utterances, tiny_encoder, settings, tmp_path):
    cache_dir, fold, _ = chain
    audit = audit_fold(fold, cache_dir)
    assert audit.clean and audit.strict
    audited = {f.phase for f in audit.findings}
    assert {"tapt", "embeddings", "clustering", "cpt", "finetune"} <= audited
    # The multi-task TAPT rebuilt on train + test, where the fold record points.
    leaky_cache = tmp_path / "cache"
    shutil.copytree(cache_dir, leaky_cache, ignore=shutil.ignore_patterns("events"))
    split = build_fold(small_utterances, FoldProtocol().fold_spec(TEST_SESSION))
    pick = lambda s: [u for u in small_utterances if u.utt_id in set(s.utt_ids)]  # noqa: E731
    artifact = leaky_cache / "tapt" / fold["artifacts"]["tapt"]
    shutil.rmtree(artifact)
    run_tapt(str(tiny_encoder), pick(split.train) + pick(split.test), pick(split.val), CLASSES, settings.tapt, artifact, LocalRuntime(),
             UtteranceObjective(aux={"gender": 1.0}))
    leaked = audit_fold(fold, leaky_cache)
    assert not leaked.clean and [(f.phase, f.role) for f in leaked.leaks] == [("tapt", "trained_on")]
