"""Each phase of one fold on tiny data, their artifacts and records, the chain through the cache, run-fold."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from study.cache.store import ArtifactCache
from study.cache.chain import FoldChain, run_fold_chain
from study.cli import main
from trainables.data.folds import FoldSpec, build_fold
from trainables.data.manifest import fingerprint
from trainables.executors import LocalExecutor
from trainables.config import KMeansConfig
from trainables.models.encoder import load_encoder
from trainables.atomic import atomic_directory
from trainables.phases.artifacts import PhaseRecord, classifier_dir, encoder_dir, read_record, verify_artifact, write_record
from trainables.phases.classifier import load_classifier
from trainables.phases.clustering import load_pseudo_labels, run_clustering
from trainables.phases.cpt import PseudoLabelError, run_cpt
from trainables.phases.embeddings import load_layer, read_index, run_embeddings
from trainables.phases.evaluation import PREDICTIONS_FILE, read_metrics
from trainables.phases.finetune import run_finetune
from trainables.config import smoke_settings
from trainables.data.folds import FoldProtocol
from trainables.phases.tapt import run_tapt
from trainables.runtime import LocalRuntime

CLASSES = ("neu", "hap", "ang", "sad")


@pytest.fixture(scope="module")
def settings():
    """Two epochs on short crops: the phases' mechanics, not their accuracy."""
    base = smoke_settings(epochs=2)
    return replace(base, kmeans=replace(base.kmeans, max_fit_frames=5000, n_init=1))


@pytest.fixture(scope="module")
def fold(small_utterances):
    split = build_fold(small_utterances, FoldSpec(test_session=1, seed=0))
    pick = lambda s: [u for u in small_utterances if u.utt_id in set(s.utt_ids)]  # noqa: E731
    return pick(split.train), pick(split.val), pick(split.test)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_encoder, fold, settings):
    """TAPT -> embeddings -> k-means -> CPT -> fine-tuning, each phase called directly."""
    root = tmp_path_factory.mktemp("phases")
    train, val, test = fold
    run_tapt(tiny_encoder, train, val, CLASSES, settings.tapt, root / "tapt", LocalRuntime())
    run_embeddings(encoder_dir(root / "tapt"), train + val, [1, 3], root / "emb", LocalRuntime())
    run_clustering(root / "emb", 1, KMeansConfig(n_clusters=4, max_fit_frames=5000, n_init=1, seed=0), root / "km")
    run_cpt(tiny_encoder, train + val, {"k4": root / "km"}, 0.3, settings.cpt, root / "cpt", LocalRuntime())
    run_finetune(encoder_dir(root / "cpt"), "attention", train, val, test, CLASSES, settings.finetune, root / "ft", LocalRuntime())
    return root


def test_tapt_saves_an_encoder_and_a_record_of_what_it_trained_on(chain, fold, tiny_encoder):
    train, val, _ = fold
    record = read_record(chain / "tapt")
    assert record["phase"] == "tapt"
    assert record["used"]["trained_on"] == {"fingerprint": fingerprint(u.utt_id for u in train), "count": len(train), "sessions": [2, 3, 4, 5]}
    assert record["used"]["selected_on"]["count"] == len(val)
    assert len(record["results"]["history"]) == 2 and "val_ua" in record["results"]["best"]
    assert record["device"] and record["wall_seconds"] > 0
    assert load_encoder(encoder_dir(chain / "tapt")).info.num_layers == 3


def test_the_smoke_preset_trains_every_phase_without_attention_dropout(chain, tiny_encoder):
    """``attention_dropout: 0`` reaches the encoder each training phase loads, and is saved with it; the pretrained encoder keeps its own."""
    saved = lambda directory: json.loads((directory / "config.json").read_text())["attention_dropout"]  # noqa: E731
    assert saved(tiny_encoder) == 0.1
    assert saved(encoder_dir(chain / "tapt")) == saved(encoder_dir(chain / "cpt")) == saved(classifier_dir(chain / "ft") / "encoder") == 0.0


def test_embeddings_keep_several_layers_in_fp16_with_frame_offsets(chain, fold):
    train, val, _ = fold
    ids, offsets = read_index(chain / "emb")
    assert sorted(ids) == sorted(u.utt_id for u in train + val)
    info = load_encoder(encoder_dir(chain / "tapt")).info
    durations = {u.utt_id: u.duration_s for u in train + val}
    expected = [info.frame_count(round(durations[i] * info.sample_rate)) for i in ids]
    assert np.diff(offsets).tolist() == expected
    for layer in (1, 3):
        frames = load_layer(chain / "emb", layer)
        assert frames.dtype == np.float16 and frames.shape == (offsets[-1], 32)


def test_clustering_labels_every_frame_and_records_its_fit(chain):
    labels = load_pseudo_labels(chain / "km")
    _, offsets = read_index(chain / "emb")
    assert sum(len(v) for v in labels.values()) == offsets[-1]
    assert set(np.concatenate(list(labels.values())).tolist()) <= set(range(4))
    results = read_record(chain / "km")["results"]
    assert results["inertia"] > 0 and results["frames_used"] <= 5000 and results["fit_seconds"] >= 0


def test_clustering_is_deterministic_for_a_seed(chain, tmp_path):
    run_clustering(chain / "emb", 1, KMeansConfig(n_clusters=4, max_fit_frames=5000, n_init=1, seed=0), tmp_path / "again")
    first, second = load_pseudo_labels(chain / "km"), load_pseudo_labels(tmp_path / "again")
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_cpt_masks_the_requested_fraction_and_predicts_pseudo_labels(chain):
    record = read_record(chain / "cpt")
    final = record["results"]["final"]
    assert final["train_mask_ratio"] == pytest.approx(0.3, abs=0.02)
    assert 0.0 <= final["train_k4_accuracy"] <= 1.0
    assert record["params"]["mask_ratio"] == 0.3


def test_cpt_refuses_pseudo_labels_that_do_not_match_the_frames(chain, fold, tiny_encoder, settings, tmp_path):
    train, val, _ = fold
    broken = tmp_path / "km"
    import shutil

    shutil.copytree(chain / "km", broken)
    labels = np.load(broken / "labels.npy")
    np.save(broken / "labels.npy", labels[:-7])  # as if from an encoder with other frame arithmetic
    with pytest.raises(PseudoLabelError):
        run_cpt(tiny_encoder, train + val, {"k4": broken}, 0.3, settings.cpt, tmp_path / "cpt", LocalRuntime())
    assert not (tmp_path / "cpt").exists()


def test_cpt_with_an_unmasked_weight_adds_the_loss_of_the_unmasked_frames(chain, fold, tiny_encoder, settings, tmp_path):
    train, val, _ = fold
    one_update = replace(settings.cpt, train=replace(settings.cpt.train, epochs=1, max_updates=1))
    first_loss = {}
    for weight in (0.0, 1.0):
        final = run_cpt(tiny_encoder, train + val, {"k4": chain / "km"}, 0.3, replace(one_update, unmasked_weight=weight), tmp_path / f"w{weight}", LocalRuntime())
        first_loss[weight] = final["train_loss"]
        assert 0.0 <= final["train_k4_accuracy"] <= 1.0 and final["train_mask_ratio"] == pytest.approx(0.3, abs=0.05)
    # The same first batch and masks from the same start: weight 1 adds the other 70 % of the frames' loss, of about the same size.
    assert 1.5 < first_loss[1.0] / first_loss[0.0] < 2.5


def test_finetune_scores_the_test_session_and_saves_predictions(chain, fold):
    _, _, test = fold
    metrics = read_metrics(chain / "ft")
    assert set(metrics["test"]) >= {"ua", "wa", "macro_f1", "confusion", "count"}
    assert metrics["test"]["count"] == len(test) and np.array(metrics["test"]["confusion"]).shape == (4, 4)
    rows = (chain / "ft" / PREDICTIONS_FILE).read_text().splitlines()
    assert len(rows) == len(test) + 1 and rows[0].startswith("utt_id,label,predicted,p_neu")
    model, classes = load_classifier(classifier_dir(chain / "ft"))
    assert classes == list(CLASSES) and model.pooling_name == "attention"
    record = read_record(chain / "ft")
    assert record["used"]["tested_on"]["sessions"] == [1] and 1 not in record["used"]["trained_on"]["sessions"]


def test_the_chain_reuses_every_cached_phase(small_utterances, tiny_encoder, settings, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    candidate = {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "average"}
    run = lambda c: run_fold_chain(FoldChain(small_utterances, 2, FoldProtocol(), "alignment", c, settings, str(tiny_encoder), CLASSES), cache, LocalExecutor())  # noqa: E731
    first = run(candidate)
    assert first.built == ["tapt", "embeddings", "clustering", "cpt", "finetune"]
    assert first.fold["test_session"] == 2 and first.fold["strict"] is True
    again = run(candidate)
    assert again.built == [] and again.test == first.test
    other_pooling = run({**candidate, "pooling": "attention"})
    assert other_pooling.built == ["finetune"] and other_pooling.artifacts["cpt"] == first.artifacts["cpt"]
    assert set(first.history) == {"tapt", "cpt", "finetune"} and len(first.history["tapt"]) == 2
    built = [e for e in cache.events() if e["event"] == "built"]
    assert [e["phase"] for e in built].count("tapt") == 1


def _damage_record(path: Path) -> None:
    (path / "record.json").write_text("{not json")


def _truncate(path: Path) -> None:
    weights = path / "encoder" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])


def _flip_a_byte(path: Path) -> None:
    weights = path / "encoder" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[500] ^= 0xFF
    weights.write_bytes(bytes(data))


def _remove_a_file(path: Path) -> None:
    (path / "encoder" / "weights.bin").unlink()


def _drop_the_manifest(path: Path) -> None:
    record = json.loads((path / "record.json").read_text())
    del record["files"]
    (path / "record.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_damage_record, "record.json is unreadable"),
        (_truncate, "encoder/weights.bin has 100 bytes, the record says 1000"),
        (_flip_a_byte, "encoder/weights.bin does not match its recorded SHA-256"),
        (_remove_a_file, "encoder/weights.bin is missing"),
        (_drop_the_manifest, "lists no files"),
    ],
)
def test_a_damaged_artifact_is_never_reused_but_moved_aside_and_rebuilt(tmp_path, damage, problem):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(out: Path) -> None:  # a phase: files first, then the record with their manifest, renamed into place
        calls.append(out)
        with atomic_directory(out) as tmp:
            (tmp / "encoder").mkdir()
            (tmp / "encoder" / "weights.bin").write_bytes(bytes(range(250)) * 4)
            write_record(tmp, PhaseRecord(phase="tapt", params={}, upstream={}, used={}))

    key, path = cache.get_or_build("tapt", {"x": 1}, build)
    assert verify_artifact(path) is None
    damage(path)
    assert problem in verify_artifact(path)
    assert cache.get_or_build("tapt", {"x": 1}, build) == (key, path)
    assert len(calls) == 2 and verify_artifact(path) is None
    (moved,) = path.parent.glob(f"{key}.corrupt-*")
    assert problem in verify_artifact(moved)
    events = cache.events()
    assert [e["event"] for e in events] == ["built", "corrupt", "built"]
    assert problem in events[1]["problem"] and events[1]["moved_to"] == str(moved)


def test_run_fold_end_to_end(small_manifest, tiny_encoder, tmp_path, capsys):
    out = tmp_path / "fold"
    code = main(["run-fold", "--data", str(small_manifest), "--encoder", str(tiny_encoder), "--fold", "3", "--layer", "2",
                 "--clusters", "4", "--mask-ratio", "0.2", "--pooling", "attention", "--out", str(out), "--preset", "smoke", "--epochs", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test: UA" in printed and "WA" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["test_session"] == 3 and 0.0 <= result["test"]["ua"] <= 1.0
    assert result["strict"] is True


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--layer": "7"}, "outside the encoder"),
        ({"--fold": "9"}, "--fold 9 has no utterances"),
        ({"--mask-ratio": "1.5"}, "mask_ratio must be in"),
        ({"--clusters": "1"}, "clusters must be at least 2"),
        ({"--epochs": "0"}, "--epochs must be at least 1"),
        ({"--data": "/nonexistent/manifest.csv"}, "manifest.csv"),
    ],
)
def test_run_fold_refuses_bad_input_before_any_work(small_manifest, tiny_encoder, tmp_path, capsys, change, message):
    args = {"--data": str(small_manifest), "--encoder": str(tiny_encoder), "--fold": "1", "--layer": "2", "--clusters": "4",
            "--mask-ratio": "0.2", "--pooling": "average", "--out": str(tmp_path / "out"), "--preset": "smoke"}
    args.update(change)
    argv = ["run-fold"] + [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_phase_rebuilt_after_other_work_gives_the_same_model(small_utterances, tiny_encoder, fold, settings, tmp_path):
    """Phases seed every global generator they draw from, so the cache never hides a different rebuild."""
    import torch

    train, val, _ = fold
    first = run_tapt(tiny_encoder, train, val, CLASSES, settings.tapt, tmp_path / "a", LocalRuntime())
    torch.rand(1000), np.random.rand(1000)  # what another phase in the same process would consume
    second = run_tapt(tiny_encoder, train, val, CLASSES, settings.tapt, tmp_path / "b", LocalRuntime())
    timing = ("train_seconds", "train_audio_s_per_s")
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    weights = [load_encoder(encoder_dir(tmp_path / name)).state_dict() for name in ("a", "b")]
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])] == []


def test_tapt_pretrains_on_the_pretrained_encoders_clusters_before_its_labels(small_utterances, tiny_encoder, settings, tmp_path):
    """The paper's TAPT: masked prediction of k-means targets of the pretrained encoder's layer, then fine-tuning on the labels."""
    from study.audit.checks import audit_fold
    from trainables.phases.artifacts import encoder_fingerprint

    masked = replace(settings, tapt=replace(settings.tapt, pretrain="masked", pretrain_layer=1, pretrain_clusters=4, pretrain_mask_ratio=0.4))
    cache = ArtifactCache(tmp_path / "cache")
    result = run_fold_chain(FoldChain(small_utterances, 2, FoldProtocol(), "tapt", {}, masked, str(tiny_encoder), CLASSES), cache, LocalExecutor())
    assert result.built == ["embeddings@tapt", "clustering@tapt", "cpt@tapt", "tapt", "score"]
    assert result.links["tapt"] == ["cpt@tapt"] and result.links["cpt@tapt"] == ["clustering@tapt"]
    path = lambda step: cache.path(result.phases[step], result.artifacts[step])  # noqa: E731
    embedded = read_record(path("embeddings@tapt"))
    assert embedded["upstream"]["encoder"] == str(tiny_encoder) and embedded["params"]["layers"] == [1]  # the pretrained encoder's own layer
    pretrain = read_record(path("cpt@tapt"))
    assert pretrain["params"]["mask_ratio"] == 0.4 and pretrain["params"]["label_sets"] == {"k4": 4}
    assert pretrain["upstream"]["init_fingerprint"] == encoder_fingerprint(tiny_encoder)
    assert pretrain["results"]["final"]["train_mask_ratio"] == pytest.approx(0.4, abs=0.03) and "train_k4_accuracy" in pretrain["results"]["final"]
    assert read_record(path("tapt"))["upstream"]["encoder"] == str(encoder_dir(path("cpt@tapt")))  # fine-tuned from the pretrained-on-the-task encoder
    audit = audit_fold(result.to_dict(), tmp_path / "cache")
    assert audit.strict and not audit.unverified


def test_under_the_published_validation_the_test_sessions_speaker_stays_out_of_the_unsupervised_phases(small_utterances, tiny_encoder, settings, tmp_path):
    from study.audit.checks import audit_fold
    from trainables.data.folds import Validation

    protocol = FoldProtocol(validation=Validation.TEST_SESSION_SPEAKER, unsupervised_audio="train")
    result = run_fold_chain(FoldChain(small_utterances, 2, protocol, "alignment", {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "average"},
                                      settings, str(tiny_encoder), CLASSES), ArtifactCache(tmp_path / "cache"), LocalExecutor())
    embedded = read_record(ArtifactCache(tmp_path / "cache").path("embeddings", result.artifacts["embeddings"]))
    assert 2 not in embedded["used"]["embedded"]["sessions"]  # the validating speaker of session 2 is test-session audio
    audit = audit_fold(result.to_dict(), tmp_path / "cache")
    assert audit.clean and not audit.strict and not audit.leaks  # clean; not strict because validation is in the test session


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_the_pooled_norm_is_calibrated_to_the_whole_utterances_evaluation_pools(small_utterances, tmp_path, norm):
    """After calibration the running statistics are the exact mean and variance of the pooled vectors, each utterance encoded as evaluation does."""
    from trainables.config import TinyEncoderConfig
    from trainables.models.encoder import make_tiny_encoder
    from trainables.models.heads import UtteranceClassifier
    from trainables.phases.classifier import CALIBRATION_UTTERANCES, calibrate_pooled_norm, calibration_dataset

    encoder = load_encoder(make_tiny_encoder(tmp_path / "enc", TinyEncoderConfig(hidden_size=16, num_layers=1, intermediate_size=32, feat_extract_norm=norm)))
    model = UtteranceClassifier(encoder, "stats", {"emotion": 4}, head_norm="batch", loudness=True, spectral_balance=True).eval()  # running statistics: mean 0, variance 1
    label_index = {c: i for i, c in enumerate(CLASSES)}
    dataset = calibration_dataset(small_utterances[:12], label_index, encoder.info.sample_rate)
    calibrate_pooled_norm(model, dataset, 320.0, LocalRuntime())

    with torch.no_grad():
        vectors, levels, balances = [], [], []
        for item in (dataset[i] for i in range(len(dataset))):
            mask = torch.ones(1, item["waveform"].numel(), dtype=torch.long)
            out = encoder(item["waveform"][None], mask)
            vectors.append(model.pooling(out.last_hidden, out.frame_mask))
            levels.append(model.levels["loudness"].level(item["waveform"][None], mask))
            balances.append(model.levels["spectral_balance"].level(item["waveform"][None], mask))
        vectors, levels, balances = torch.cat(vectors), torch.cat(levels), torch.cat(balances)
    assert torch.allclose(model.norm.running_mean, vectors.mean(0), atol=1e-5)
    assert torch.allclose(model.norm.running_var, vectors.var(0), rtol=1e-3, atol=1e-7)
    # The loudness and spectral balance inputs have norms of their own, calibrated the same way.
    for name, inputs in (("loudness", levels), ("spectral_balance", balances)):
        assert torch.allclose(model.levels[name].norm.running_mean, inputs.mean(0), atol=1e-4)
        assert torch.allclose(model.levels[name].norm.running_var, inputs.var(0), rtol=1e-3)
    assert not torch.allclose(model.norm.running_var, torch.ones_like(model.norm.running_var))
    # A large training set is spread evenly over at most CALIBRATION_UTTERANCES utterances.
    many = calibration_dataset(small_utterances * 5, label_index, encoder.info.sample_rate)
    assert len(small_utterances) * 5 > CALIBRATION_UTTERANCES >= len(many) > CALIBRATION_UTTERANCES // 2
    assert many.utterances[0] == small_utterances[0]


@pytest.mark.parametrize("kind", ["classifier", "multitask"])
def test_head_init_probe_starts_the_emotion_head_at_the_logistic_regression_of_its_pooled_vectors(small_utterances, tiny_encoder, kind):
    """LP-FT's start: the head's logits are the probe's decision function on the calibrated pooled vectors; an absent class is never predicted."""
    from sklearn.linear_model import LogisticRegression

    from trainables.config import ClassifierConfig
    from trainables.data.audio import Crop
    from trainables.data.batching import UtteranceDataset
    from trainables.models.heads import UtteranceClassifier
    from trainables.models.multitask import MultitaskClassifier
    from trainables.phases.classifier import init_head_by_probe
    from trainables.training import inference_outputs

    encoder = load_encoder(tiny_encoder)
    label_index = {c: i for i, c in enumerate(CLASSES)}
    cfg = ClassifierConfig(head_init="probe", head_norm="batch", loudness=True, spectral_balance=True)
    without_sad = [u for u in small_utterances if u.label != "sad"]
    dataset = UtteranceDataset(without_sad, label_index, encoder.info.sample_rate, None, Crop.NONE)
    if kind == "classifier":
        model = UtteranceClassifier(encoder, "stats", {"emotion": 4}, head_norm="batch", loudness=True, spectral_balance=True)
    else:
        model = MultitaskClassifier(encoder, "stats", 4, {"gender": 2}, head_norm="batch", loudness=True, spectral_balance=True)
    init_head_by_probe(model, dataset, cfg, LocalRuntime())
    assert model.training  # left as it was
    model.eval()

    def head_input(net, batch):
        seen = []
        handle = net.heads["emotion"].register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
        net(batch.waveforms, batch.attention_mask)
        handle.remove()
        return seen[0]

    indices, pooled = inference_outputs(model, dataset, 320.0, LocalRuntime(), head_input)
    assert pooled.shape[1] == 2 * 32 + 2 + 8  # stats pooling of the 32-wide tiny encoder, the loudness level, the spectral balance
    _, logits = inference_outputs(model, dataset, 320.0, LocalRuntime(), lambda net, batch: net(batch.waveforms, batch.attention_mask)["emotion"])
    labels = [label_index[dataset.utterances[i].label] for i in indices]
    probe = LogisticRegression(C=cfg.probe_c, class_weight="balanced", max_iter=2000).fit(pooled.numpy(), labels)
    assert list(probe.classes_) == [0, 1, 2]
    assert np.allclose(logits[:, :3].numpy(), probe.decision_function(pooled.numpy()), atol=1e-3)
    assert (logits[:, 3] < logits[:, :3].min(dim=1).values - 5).all()  # sad was not among the training utterances
    assert (logits.argmax(1).numpy() == probe.predict(pooled.numpy())).all()
    cosine = UtteranceClassifier(encoder, "average", {"emotion": 4}, head_kinds={"emotion": "cosine"})
    with pytest.raises(ValueError, match="linear emotion head"):
        init_head_by_probe(cosine, dataset, cfg, LocalRuntime())
