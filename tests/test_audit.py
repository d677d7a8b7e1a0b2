"""The leakage audit: real tiny fold chains audit clean (strict) or shared (looser protocol); leaking splits are caught and named."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from study.audit.checks import audit_fold, audit_trial
from study.audit.findings import ENCODER, LEAK, OK, SHARED, SPLIT, UNVERIFIED
from study.audit.study import audit_study
#: The phases of an alignment fold, in chain order.
PHASES = ("tapt", "embeddings", "clustering", "cpt", "finetune")
from study.cache.store import ArtifactCache
from study.cache.chain import FoldChain, run_fold_chain
from study.cli import main
from trainables.data.folds import Fold, Split, Validation, build_fold
from trainables.data.manifest import fingerprint
from trainables.executors import LocalExecutor
from trainables.config import smoke_settings
from trainables.data.folds import FoldProtocol
from trainables.phases.tapt import run_tapt
from trainables.runtime import LocalRuntime

CLASSES = ("neu", "hap", "ang", "sad")
TEST_SESSION = 1
CANDIDATE = {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "average"}


@pytest.fixture(scope="module")
def settings():
    """One epoch on short crops, a small k-means fit: the records, not the accuracy."""
    base = smoke_settings(epochs=1)
    return replace(base, kmeans=replace(base.kmeans, max_fit_frames=5000, n_init=1))


def _trial_record(trial_id: str, protocol: FoldProtocol, folds: list[dict]) -> dict:
    """The parts of a trial record (study.tune.trial.run_trial) that the audit reads."""
    return {"trial_id": trial_id, "status": "complete", "protocol": {"strict": protocol.strict, "description": protocol.describe()}, "folds": folds, "started": 1.0}


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_utterances, tiny_encoder, settings):
    """A study directory with a real strict fold chain and a real train+test one in its cache, one trial record each."""
    study_dir = tmp_path_factory.mktemp("study")
    cache = ArtifactCache(study_dir / "cache")
    folds = {}
    for name, protocol in (("strict", FoldProtocol()), ("shared", FoldProtocol(unsupervised_audio="train+test"))):
        result = run_fold_chain(FoldChain(small_utterances, TEST_SESSION, protocol, "alignment", CANDIDATE, settings, str(tiny_encoder), CLASSES), cache, LocalExecutor())
        folds[name] = json.loads(json.dumps(result.to_dict()))  # as read back from the trial record
        (study_dir / "trials").mkdir(exist_ok=True)
        (study_dir / "trials" / f"trial-{name}.json").write_text(json.dumps(_trial_record(f"trial-{name}", protocol, [folds[name]])))
    return study_dir, folds


def _records_only(study_dir: Path, fold: dict, target: Path) -> Path:
    """A cache holding just the fold's five record.json files (all the audit reads), for editing."""
    for phase, key in fold["artifacts"].items():
        (target / phase / key).mkdir(parents=True)
        shutil.copy(study_dir / "cache" / phase / key / "record.json", target / phase / key / "record.json")
    return target


def _edit(cache_root: Path, fold: dict, phase: str, change) -> Path:
    path = cache_root / phase / fold["artifacts"][phase] / "record.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path.parent


def _kinds(audit, phase: str) -> set[str]:
    return {f.kind for f in audit.findings if f.phase == phase}


def test_a_strict_fold_audits_clean(study, small_utterances):
    study_dir, folds = study
    audit = audit_fold(folds["strict"], study_dir / "cache")
    assert audit.clean and audit.strict and not audit.leaks and not audit.shared
    assert all(audit.status(phase) == "✓" for phase in (*PHASES, SPLIT)) and audit.status(ENCODER) == "-"
    assert all(f.kind == OK for f in audit.findings)
    roles = {(f.phase, f.role) for f in audit.findings}
    assert {("tapt", "trained_on"), ("tapt", "selected_on"), ("embeddings", "embedded"), ("clustering", "fit_on"), ("cpt", "trained_on"),
            ("finetune", "trained_on"), ("finetune", "selected_on"), ("finetune", "tested_on")} <= roles
    # With the fold rebuilt from the manifest, validation and training are checked against the test by utterance id.
    split = build_fold(small_utterances, FoldProtocol().fold_spec(TEST_SESSION))
    by_id = audit_fold(folds["strict"], study_dir / "cache", split)
    assert by_id.strict and any("share no utterance id" in f.message for f in by_id.findings if f.phase == SPLIT)


def test_test_session_audio_under_train_plus_test_is_shared_not_leaked(study):
    study_dir, folds = study
    audit = audit_fold(folds["shared"], study_dir / "cache")
    assert audit.clean and not audit.strict and not audit.leaks
    assert {f.phase for f in audit.shared} == {"embeddings", "clustering", "cpt"}
    assert audit.shared_statements() == ["test-session audio without labels in embeddings, k-means, CPT"]
    assert [audit.status(p) for p in PHASES] == ["✓", "shared", "shared", "shared", "✓"]
    # TAPT was shared with the strict chain (same train/val): the unsupervised phases alone differ.
    assert folds["shared"]["artifacts"]["tapt"] == folds["strict"]["artifacts"]["tapt"]
    trial = audit_trial(_trial_record("t", FoldProtocol(unsupervised_audio="train+test"), [folds["shared"]]), study_dir / "cache")
    assert trial.summary() == {"verdict": "shared", "clean": True, "strict": False, "shared": audit.shared_statements(), "leaks": 0}
    assert trial.verdict() == "shared" and "NOT strict" in trial.format() and "shared: test-session audio without labels in embeddings, k-means, CPT" in trial.format()


def test_tapt_trained_on_the_test_session_is_a_leak_naming_tapt_and_its_artifact(study, small_utterances, tiny_encoder, settings, tmp_path):
    """A deliberately leaking split: TAPT built on train + test into the cache path the fold record points to."""
    study_dir, folds = study
    fold = folds["strict"]
    cache_root = tmp_path / "cache"
    shutil.copytree(study_dir / "cache", cache_root, ignore=shutil.ignore_patterns("events"))
    split = build_fold(small_utterances, FoldProtocol().fold_spec(TEST_SESSION))
    pick = lambda s: [u for u in small_utterances if u.utt_id in set(s.utt_ids)]  # noqa: E731
    artifact = cache_root / "tapt" / fold["artifacts"]["tapt"]
    shutil.rmtree(artifact)
    run_tapt(tiny_encoder, pick(split.train) + pick(split.test), pick(split.val), CLASSES, settings.tapt, artifact, LocalRuntime())

    audit = audit_fold(fold, cache_root)
    assert not audit.clean and audit.status("tapt") == "LEAK"
    [leak] = audit.leaks
    assert (leak.phase, leak.role, leak.artifact) == ("tapt", "trained_on", str(artifact))
    assert "include test session 1" in leak.message and "[1, 2, 3, 4, 5]" in leak.message
    assert all(audit.status(p) == "✓" for p in ("embeddings", "clustering", "cpt", "finetune"))
    text = audit_trial(_trial_record("leaky", FoldProtocol(), [fold]), cache_root).format()
    assert "LEAK" in text and "TAPT" in text and str(artifact) in text


@pytest.mark.parametrize("phase, role", [("tapt", "trained_on"), ("finetune", "trained_on"), ("tapt", "selected_on")])
def test_labelled_test_session_data_is_a_leak_even_under_train_plus_test(study, tmp_path, phase, role):
    study_dir, folds = study
    fold = folds["shared"]
    cache_root = _records_only(study_dir, fold, tmp_path / "cache")
    artifact = _edit(cache_root, fold, phase, lambda r: r["used"][role].update(sessions=[1, 2, 3, 4, 5]))
    audit = audit_fold(fold, cache_root)
    assert [(f.phase, f.role, f.artifact) for f in audit.leaks] == [(phase, role, str(artifact))]
    assert {f.phase for f in audit.shared} == {"embeddings", "clustering", "cpt"}


def test_test_session_audio_under_the_strict_protocol_is_a_leak(study, tmp_path):
    """The same records a train+test chain leaves, claimed by a fold whose protocol says unsupervised_audio: train."""
    study_dir, folds = study
    fold = copy.deepcopy(folds["shared"])
    fold["fold"]["unsupervised_audio"] = "train"
    audit = audit_fold(fold, study_dir / "cache")
    assert {f.phase for f in audit.leaks} == {"embeddings", "clustering", "cpt"} and not audit.shared
    assert all("include test session 1" in f.message for f in audit.leaks)


def test_validation_equal_to_test_is_a_leak(study, tmp_path):
    study_dir, folds = study
    fold = copy.deepcopy(folds["strict"])
    summary = fold["fold"]
    summary["val_fingerprint"], summary["val"] = summary["test_fingerprint"], summary["test"]
    cache_root = _records_only(study_dir, fold, tmp_path / "cache")
    artifact = _edit(cache_root, fold, "finetune", lambda r: r["used"].update(selected_on=dict(r["used"]["tested_on"])))
    audit = audit_fold(fold, cache_root)
    assert not audit.clean
    assert any(f.phase == "finetune" and f.role == "selected_on" and f.artifact == str(artifact) for f in audit.leaks)
    assert any(f.phase == SPLIT and "validation is the test set" in f.message for f in audit.leaks)
    assert any(f.phase == SPLIT and "selected on the very set it was tested on" in f.message for f in audit.leaks)


def test_validation_on_a_test_session_speaker_is_shared_only_when_the_protocol_says_so(study, tmp_path):
    study_dir, folds = study
    fold = copy.deepcopy(folds["strict"])
    cache_root = _records_only(study_dir, fold, tmp_path / "cache")
    for phase in ("tapt", "finetune"):
        _edit(cache_root, fold, phase, lambda r: r["used"]["selected_on"].update(sessions=[TEST_SESSION]))
    assert {(f.phase, f.role) for f in audit_fold(fold, cache_root).leaks} == {("tapt", "selected_on"), ("finetune", "selected_on")}
    fold["fold"]["validation"] = Validation.TEST_SESSION_SPEAKER.value
    # Validation from the test session is test-session audio: the unsupervised phases saw the training utterances alone.
    train = {"fingerprint": fold["fold"]["train_fingerprint"], "count": fold["fold"]["train"]}
    fold["fold"]["unsupervised_fingerprint"] = train["fingerprint"]
    for phase, role in (("embeddings", "embedded"), ("clustering", "fit_on"), ("cpt", "trained_on")):
        _edit(cache_root, fold, phase, lambda r, role=role: r["used"][role].update(train))
    audit = audit_fold(fold, cache_root)
    assert audit.clean and not audit.strict
    assert audit.shared_statements() == ["a test-session speaker's labelled utterances as validation (early stopping, model selection) in TAPT, fine-tuning"]


def test_validation_overlapping_test_is_caught_by_utterance_id(study, small_utterances, tmp_path):
    """Under test_session_speaker both sets are in the test session: only the ids can show an overlap."""
    study_dir, folds = study
    fold = copy.deepcopy(folds["strict"])
    test_ids = sorted(u.utt_id for u in small_utterances if u.session == TEST_SESSION)
    val, test = Split(tuple(test_ids[:6])), Split(tuple(test_ids[4:]))  # two utterances in both
    honest = build_fold(small_utterances, FoldProtocol().fold_spec(TEST_SESSION))
    split = Fold(replace(honest.spec, validation=Validation.TEST_SESSION_SPEAKER), honest.train, val, test)
    fold["fold"].update(validation="test_session_speaker", val_fingerprint=val.fingerprint, test_fingerprint=test.fingerprint, val=len(val), test=len(test))
    audit = audit_fold(fold, study_dir / "cache", split)
    assert any(f.phase == SPLIT and "2 test utterances are also in validation" in f.message for f in audit.leaks)


def test_a_missing_record_or_a_broken_chain_cannot_be_vouched_for(study, tmp_path):
    study_dir, folds = study
    fold = folds["strict"]
    cache_root = _records_only(study_dir, fold, tmp_path / "cache")
    _edit(cache_root, fold, "finetune", lambda r: r["upstream"].update(encoder="/elsewhere/cpt/0123456789abcdef0123/encoder"))
    audit = audit_fold(fold, cache_root)
    assert not audit.clean and not audit.leaks and audit.status("finetune") == "?"
    assert any("not from the fold's cpt artifact" in f.message for f in audit.unverified)
    (cache_root / "cpt" / fold["artifacts"]["cpt"] / "record.json").unlink()
    audit = audit_fold(fold, cache_root)
    assert any(f.phase == "cpt" and f.kind == UNVERIFIED and "is missing" in f.message for f in audit.findings)


def test_an_encoder_pretrained_on_the_test_session_is_reported_as_shared(study, tmp_path):
    study_dir, folds = study
    fold = folds["strict"]
    cache_root = _records_only(study_dir, fold, tmp_path / "cache")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    used = {"trained_on": {"fingerprint": fingerprint(["a"]), "count": 80, "sessions": [1, 2, 3, 4, 5]}}
    (encoder / "pretraining_record.json").write_text(json.dumps({"phase": "cpt", "used": used}))
    _edit(cache_root, fold, "tapt", lambda r: r["upstream"].update(encoder=str(encoder)))
    audit = audit_fold(fold, cache_root)
    assert audit.clean and _kinds(audit, ENCODER) == {SHARED}
    assert audit.shared_statements() == ["test-session audio without labels in the initial encoder's pretraining"]


def test_audit_command_passes_a_strict_study_and_writes_the_report(study, tmp_path, capsys):
    study_dir, folds = study
    strict_dir = tmp_path / "strict"
    shutil.copytree(study_dir / "trials", strict_dir / "trials")
    (strict_dir / "trials" / "trial-shared.json").unlink()
    (strict_dir / "cache").symlink_to(study_dir / "cache")
    assert main(["audit", str(strict_dir)]) == 0
    out = capsys.readouterr().out
    assert "CLEAN, strict" in out and "trial trial-strict: CLEAN" in out and "no study.yaml" in out
    report = json.loads((strict_dir / "report" / "audit.json").read_text())
    assert report["clean"] and report["strict"] and report["trials"][0]["folds"][0]["status"]["tapt"] == "✓"

    assert main(["audit", str(study_dir)]) == 0  # the train+test trial shares, it does not leak
    out = capsys.readouterr().out
    assert "CLEAN, NOT strict" in out and "test-session audio without labels in embeddings, k-means, CPT" in out
    report = json.loads((study_dir / "report" / "audit.json").read_text())
    assert report["clean"] and not report["strict"] and {t["verdict"] for t in report["trials"]} == {"clean", "shared"}


def test_a_study_with_its_manifest_is_audited_by_utterance_id(study, small_manifest, tiny_encoder, tmp_path):
    from study.config.loading import load_study, shipped_studies

    study_dir, _ = study
    with_yaml = tmp_path / "study"
    shutil.copytree(study_dir / "trials", with_yaml / "trials")
    (with_yaml / "cache").symlink_to(study_dir / "cache")
    config = load_study(shipped_studies()["smoke"], [f"data.manifest={small_manifest}", f"encoder={tiny_encoder}"])
    (with_yaml / "study.yaml").write_text(config.to_yaml())
    audit = audit_study(with_yaml)
    assert audit.clean and not audit.notes and len(audit.trials) == 2
    for trial in audit.trials:
        assert any(f.phase == SPLIT and "validation (7 utterances) and test (15) share no utterance id" in f.message for f in trial.folds[0].findings)
    # A protocol that no longer gives the recorded split (another seed) cannot be checked by id: said, not passed.
    (with_yaml / "study.yaml").write_text(load_study(shipped_studies()["smoke"], [f"data.manifest={small_manifest}", f"encoder={tiny_encoder}", "protocol.seed=5"]).to_yaml())
    audit = audit_study(with_yaml)
    assert not audit.clean and not audit.leaks
    assert any("the study's manifest and protocol no longer give this fold's split" in f.message for t in audit.trials for f in t.folds[0].unverified)


def test_audit_command_fails_on_a_leak_and_on_an_empty_study(study, tmp_path, capsys):
    study_dir, folds = study
    leaky = tmp_path / "leaky"
    fold = folds["strict"]
    _records_only(study_dir, fold, leaky / "cache")
    _edit(leaky / "cache", fold, "cpt", lambda r: r["used"]["trained_on"].update(sessions=[1, 2, 3, 4, 5]))
    (leaky / "trials").mkdir()
    (leaky / "trials" / "t.json").write_text(json.dumps(_trial_record("t", FoldProtocol(), [fold])))
    assert main(["audit", str(leaky)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"Leakage audit of {leaky}\nLEAK") and "LEAK       CPT: pretrained on" in out
    audit = audit_study(leaky)
    assert not audit.clean and [f.phase for f in audit.leaks] == ["cpt"]
    assert json.loads((leaky / "report" / "audit.json").read_text())["trials"][0]["verdict"] == LEAK

    assert main(["audit", str(tmp_path / "nothing")]) == 2
    assert "no trial records" in capsys.readouterr().err


def test_the_audit_is_logged_to_the_trial_run(study, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from study.io import layout
    from study.tracking import runs as tracking
    from study.tracking.runs import log_audit

    study_dir, folds = study
    uri = layout.sqlite_uri(tmp_path)
    run_id = tracking.start_trial(uri, "audit", "t1", {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "average"})
    audit = audit_trial(_trial_record("t1", FoldProtocol(unsupervised_audio="train+test"), [folds["shared"]]), study_dir / "cache")
    log_audit(run_id, audit, uri=uri)
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["audit"] == "shared" and run.data.tags["audit_strict"] == "false"
    assert run.data.tags["audit_shared"] == "test-session audio without labels in embeddings, k-means, CPT"
    assert run.data.metrics["audit_leak_count"] == 0.0
    assert [a.path for a in MlflowClient(uri).list_artifacts(run_id)] == ["audit.json"]
