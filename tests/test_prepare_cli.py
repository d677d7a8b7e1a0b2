"""``ser-study prepare``, ``ser-study demo-data`` and ``ser-study tiny-encoder`` through the real entry point."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from study.cli import main
from trainables.data.demo_corpus import DemoCorpusConfig, generate_demo_corpus
from trainables.data.espeak_voice import espeak_available
from trainables.data.iemocap import problem_report_path
from trainables.data.manifest import MANIFEST_COLUMNS, ManifestError, read_manifest


def test_prepare_writes_manifest_and_report(corpus_copy, tmp_path, capsys):
    next(corpus_copy.rglob("*.wav")).unlink()
    out = tmp_path / "out" / "manifest.csv"
    assert main(["prepare", str(corpus_copy), "--out", str(out)]) == 0
    utterances = read_manifest(out)
    assert out.read_text().splitlines()[0].split(",") == list(MANIFEST_COLUMNS)
    report = problem_report_path(out).read_text().splitlines()
    assert report[0] == "path,utt_id,problem,action" and len(report) == 2 and "wav file is missing" in report[1]
    printed = capsys.readouterr().out
    assert "Session1" in printed and f"{len(utterances)} utterances" in printed


def test_prepare_bad_root_writes_nothing(tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    assert main(["prepare", str(tmp_path), "--out", str(out)]) == 2
    assert "not an IEMOCAP root" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_prepare_missing_session_exits_nonzero(corpus_copy, tmp_path, capsys):
    shutil.rmtree(corpus_copy / "Session2")
    out = tmp_path / "m.csv"
    assert main(["prepare", str(corpus_copy), "--out", str(out)]) == 2
    assert "session 2 is missing" in capsys.readouterr().err
    assert not out.exists()
    assert main(["prepare", str(corpus_copy), "--out", str(out), "--sessions", "1,3,4,5"]) == 0


def test_prepare_rejects_bad_options(corpus_copy, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", str(corpus_copy), "--out", str(tmp_path / "m.csv"), "--sessions", "1,7"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["prepare", str(corpus_copy), "--out", str(tmp_path / "m.csv"), "--label-set", "9class"])


def test_prepare_out_is_a_folder(corpus_copy, tmp_path, capsys):
    assert main(["prepare", str(corpus_copy), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


ESPEAK = pytest.mark.skipif(not espeak_available(), reason="the espeak engine needs espeak-ng and sox on PATH (Debian packages espeak-ng, sox)")


@pytest.mark.parametrize("engine", ["synth", pytest.param("espeak", marks=ESPEAK)])
def test_demo_data_is_deterministic(engine, tmp_path):
    config = DemoCorpusConfig(utterances_per_session=10, median_duration_s=1.0, max_duration_s=2.0, seed=3, engine=engine)
    a = generate_demo_corpus(tmp_path / "a", config)
    b = generate_demo_corpus(tmp_path / "b", config)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    with pytest.raises(FileExistsError):
        generate_demo_corpus(tmp_path / "a", config)


@ESPEAK
def test_an_espeak_corpus_is_read_by_prepare_and_its_emotions_differ_in_level(tmp_path):
    assert main(["demo-data", str(tmp_path / "c"), "--engine", "espeak", "--utterances-per-session", "10"]) == 0
    assert main(["prepare", str(tmp_path / "c"), "--out", str(tmp_path / "m.csv")]) == 0
    utterances = read_manifest(tmp_path / "m.csv")
    assert {u.label for u in utterances} == {"neu", "hap", "ang", "sad"} and {u.session for u in utterances} == {1, 2, 3, 4, 5}
    assert all(u.transcript for u in utterances)
    level = {label: np.mean([10 * np.log10(np.mean(sf.read(u.path)[0] ** 2)) for u in utterances if u.label == label]) for label in ("ang", "sad")}
    assert level["ang"] > level["sad"] + 6, level  # the engine renders anger 13 dB louder than sadness, 3 dB jitter each


def test_the_espeak_engine_names_what_to_install_when_it_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["demo-data", str(tmp_path / "c"), "--engine", "espeak", "--utterances-per-session", "10"]) == 2
    error = capsys.readouterr().err
    assert "espeak-ng" in error and "apt-get install espeak-ng sox" in error
    assert not (tmp_path / "c" / "IEMOCAP_full_release").exists()


def test_demo_data_cli_refuses_existing(tmp_path, capsys):
    args = ["demo-data", str(tmp_path / "c"), "--utterances-per-session", "10", "--median-duration", "1", "--max-duration", "2"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("utt_id,path\nx,y\n")
    with pytest.raises(ManifestError, match="lacks the columns"):
        read_manifest(bad)


def test_demo_data_rejects_too_few_utterances(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "c"), "--utterances-per-session", "3"]) == 2
    assert "at least 10" in capsys.readouterr().err
    assert not (tmp_path / "c" / "IEMOCAP_full_release").exists()


def test_tiny_encoder_pretrains_a_group_norm_cnn_on_masked_and_unmasked_frames(small_manifest, tmp_path, capsys):
    import json

    from trainables.models.encoder import load_encoder
    from trainables.phases.artifacts import PRETRAINING_RECORD

    out = tmp_path / "enc"
    assert main(["tiny-encoder", str(out), "--pretrain-on", str(small_manifest), "--pretrain-epochs", "1", "--hidden-size", "16", "--layers", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["feat_extract_norm"] == "group"
    record = json.loads((out / PRETRAINING_RECORD).read_text())
    assert record["params"]["config"]["unmasked_weight"] == 1.0 and record["params"]["mask_ratio"] == 0.5
    assert record["results"]["final"]["train_acoustic_accuracy"] > 0
    assert load_encoder(out).info.num_layers == 1 and [p.name for p in tmp_path.iterdir()] == ["enc"]  # no work folder left behind
    assert f"tiny encoder: {out}" in capsys.readouterr().out
