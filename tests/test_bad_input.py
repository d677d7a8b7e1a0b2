"""Bad input across `prepare`, the study file and the CLI: a clear message, a non-zero exit, no work, nothing left.

Each case builds one kind of bad input under ``tmp_path``, runs the real command line in-process
(``study.cli.main``) and checks that

- the exit status is non-zero (2 for bad input: ``UserError`` and argparse errors alike),
- stderr names the input (the path or the study field) and says what to do, with no traceback,
- no expensive work starts (Ray, a fold's phases, a model on audio), and
- nothing is left on disk: the tree under ``tmp_path`` is the same before and after the command.

The table of every case, with the messages, is docs/bad_input.md. Kinds that are excluded and
reported rather than fatal (a corrupt wav, an unknown label) are tested at the end of this file.
Two kinds that once were gaps (an unreachable MLflow server, a Ray address that does not answer) are now cases too; see the doc.
"""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from study.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


@dataclass
class Env:
    """What a case's ``build`` gets: the tmp folder, the fixtures it asks for, and ``monkeypatch``."""

    tmp: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    @property
    def manifest(self) -> Path:
        return self.request.getfixturevalue("small_manifest")

    @property
    def encoder(self) -> Path:
        return self.request.getfixturevalue("tiny_encoder")

    @property
    def corpus(self) -> Path:
        """A private writable copy of the small corpus (``tmp/IEMOCAP_full_release``)."""
        return self.request.getfixturevalue("corpus_copy")


@dataclass
class Case:
    id: str
    build: Callable[[Env], list[str]]  # makes the bad input under env.tmp, returns the argv
    expect: tuple[str, ...]  # substrings stderr must contain (the input's name, the fix)
    absent: tuple[str, ...] = field(default=())  # paths (relative to tmp) that must not exist afterwards


# ---- helpers that build argv -------------------------------------------------------------------


def prepare(env: Env, root: Path, out: Path | None = None, *extra: str) -> list[str]:
    return ["prepare", str(root), "--out", str(out or env.tmp / "out" / "manifest.csv"), *extra]


def study(env: Env, *sets: str, study_dir: Path | None = None, study_file: Path = SMOKE, manifest: Path | None = None, encoder: Path | str | None = None) -> list[str]:
    """``run smoke.yaml`` on the small corpus and the tiny encoder (3 layers), with ``sets`` overriding fields."""
    base = [f"data.manifest={manifest or env.manifest}", f"encoder={encoder or env.encoder}", "folds=[1, 2]", "search.space.layer={choice: [2]}"]
    argv = ["run", str(study_file), "--study-dir", str(study_dir or env.tmp / "study")]
    for item in (*base, *sets):
        argv += ["--set", item]
    return argv


def run_fold(env: Env, **change: str) -> list[str]:
    args = {"--data": str(env.manifest), "--encoder": str(env.encoder), "--fold": "1", "--layer": "2", "--clusters": "4",
            "--mask-ratio": "0.2", "--pooling": "average", "--out": str(env.tmp / "fold"), "--preset": "smoke"}
    args.update({f"--{k.replace('_', '-')}": v for k, v in change.items()})
    return ["run-fold"] + [item for pair in args.items() for item in pair]


def fake_study_dir(env: Env) -> Path:
    """A folder that passes the ``study.yaml is present`` check (its content is never read by these cases)."""
    directory = env.tmp / "study"
    directory.mkdir()
    (directory / "study.yaml").write_text("name: fake\n")
    return directory


# ---- builders of bad input -----------------------------------------------------------------------


def _root_not_iemocap(env: Env) -> list[str]:
    (env.tmp / "downloads").mkdir()
    (env.tmp / "downloads" / "readme.txt").write_text("not a corpus")
    return prepare(env, env.tmp / "downloads")


def _root_missing(env: Env) -> list[str]:
    return prepare(env, env.tmp / "no-such-corpus")


def _session_missing(env: Env) -> list[str]:
    shutil.rmtree(env.corpus / "Session2")
    return prepare(env, env.corpus)


def _session_without_evaluations(env: Env) -> list[str]:
    for txt in (env.corpus / "Session3" / "dialog" / "EmoEvaluation").glob("*.txt"):
        txt.unlink()
    return prepare(env, env.corpus)


def _no_usable_wav(env: Env) -> list[str]:
    for wav in env.corpus.rglob("*.wav"):
        wav.write_bytes(b"corrupt")
    return prepare(env, env.corpus)


def _sessions_out_of_range(env: Env) -> list[str]:
    return prepare(env, env.corpus, None, "--sessions", "1,7")


def _out_is_a_folder(env: Env) -> list[str]:
    (env.tmp / "out").mkdir()
    return prepare(env, env.corpus, env.tmp / "out")


def _out_under_a_file(env: Env) -> list[str]:
    (env.tmp / "file.txt").write_text("a file, not a folder")
    return prepare(env, env.corpus, env.tmp / "file.txt" / "manifest.csv")


def _study_file_missing(env: Env) -> list[str]:
    return study(env, study_file=env.tmp / "nope.yaml")


def _study_file_not_a_mapping(env: Env) -> list[str]:
    (env.tmp / "list.yaml").write_text("- layer\n- clusters\n")
    return study(env, study_file=env.tmp / "list.yaml")


def _missing_manifest(env: Env) -> list[str]:
    return study(env, manifest=env.tmp / "missing.csv")


def _manifest_not_a_manifest(env: Env) -> list[str]:
    with open(env.tmp / "notes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["name", "score"], ["a", "1"]])
    return study(env, manifest=env.tmp / "notes.csv")


def _manifest_one_session(env: Env) -> list[str]:
    with open(env.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(env.tmp / "one.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["session"] == "1")
    return study(env, "folds=[1]", manifest=env.tmp / "one.csv")


def _manifest_without_transcripts(env: Env) -> list[str]:
    """A manifest prepared before transcripts were read (no ``transcript`` column), for a study whose method learns them."""
    with open(env.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(env.tmp / "no_text.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in rows[0] if c != "transcript"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return study(env, "search.space.method=metadata", manifest=env.tmp / "no_text.csv")


def _predict_unknown_device(env: Env) -> list[str]:
    (env.tmp / "a.wav").write_bytes(b"")  # never read: the device is checked first
    return ["predict", str(fake_study_dir(env)), str(env.tmp / "a.wav"), "--device", "tpu"]


def _predict_pattern_matching_nothing(env: Env) -> list[str]:
    return ["predict", str(fake_study_dir(env)), str(env.tmp / "recordings" / "*.wav")]


def _predict_missing_file(env: Env) -> list[str]:
    return ["predict", str(fake_study_dir(env)), str(env.tmp / "missing.wav")]


def _plain_dir(env: Env) -> Path:
    (env.tmp / "plain").mkdir()
    return env.tmp / "plain"


CASES = [
    # ---- prepare -------------------------------------------------------------------------------
    Case("prepare-root-not-iemocap", _root_not_iemocap, ("downloads", "is not an IEMOCAP root", "Session1..Session5"), ("out",)),
    Case("prepare-root-missing", _root_missing, ("no-such-corpus", "is not a directory"), ("out",)),
    Case("prepare-session-missing", _session_missing, ("session 2 is missing", "Session2", "--sessions"), ("out",)),
    Case("prepare-session-without-evaluations", _session_without_evaluations, ("session 3 has no evaluation files", "EmoEvaluation"), ("out",)),
    Case("prepare-every-wav-corrupt", _no_usable_wav, ("no usable utterance", "IEMOCAP_full_release"), ("out",)),
    Case("prepare-sessions-out-of-range", _sessions_out_of_range, ("--sessions", "1..5", "'1,7'"), ("out",)),
    Case("prepare-out-is-a-folder", _out_is_a_folder, ("--out", "is a folder", "manifest.csv")),
    Case("prepare-out-under-a-file", _out_under_a_file, ("file.txt", "is not a writable folder", "--out")),
    # ---- the study file (ser-study run) ------------------------------------------------------------
    Case("study-file-missing", _study_file_missing, ("nope.yaml", "study file not found", "smoke"), ("study",)),
    Case("study-file-not-a-mapping", _study_file_not_a_mapping, ("list.yaml", "YAML mapping"), ("study",)),
    Case("study-unknown-field", lambda env: study(env, "search.space.pooing={choice: [average]}"), ("search.space.pooing",), ("study",)),
    Case("study-set-without-value", lambda env: study(env, "search.num_trials"), ("--set", "search.num_trials", "FIELD=VALUE"), ("study",)),
    Case("study-empty-choice", lambda env: study(env, "search.space.clusters={choice: []}"), ("search.space.clusters",), ("study",)),
    Case("study-unknown-pooling", lambda env: study(env, "search.space.pooling={choice: [max]}"), ("search.space.pooling", "max"), ("study",)),
    Case("study-mask-ratio-above-1", lambda env: study(env, "search.space.mask_ratio=1.5"), ("search.space.mask_ratio", "1.5"), ("study",)),
    Case("study-mask-ratio-zero", lambda env: study(env, "search.space.mask_ratio=0"), ("search.space.mask_ratio",), ("study",)),
    Case("study-negative-learning-rate", lambda env: study(env, "phases.tapt.train.lr=-1"), ("phases.tapt.train", "must be positive", "phases.tapt.train.lr=-1"), ("study",)),
    Case("study-layer-beyond-depth", lambda env: study(env, "search.space.layer={choice: [2, 9]}"), ("search.space.layer", "9", "3 transformer layers"), ("study",)),
    Case("study-more-clusters-than-frames", lambda env: study(env, "search.space.clusters={choice: [4, 40000]}"), ("search.space.clusters", "K=40000", "frames k-means sees", "lower K"), ("study",)),
    Case("study-empty-fold", lambda env: study(env, "folds=[1, 7]"), ("folds", "[7]", "no utterances"), ("study",)),
    Case("study-unknown-method", lambda env: study(env, "search.space.method={choice: [alignment, gmp]}"), ("search.space.method", "'gmp'", "known methods", "alignment"), ("study",)),
    Case("study-unknown-baseline", lambda env: study(env, "baselines=[tapt, hubert]"), ("baselines", "'hubert'", "finetune, tapt, egemaps"), ("study",)),
    Case("study-parameter-the-method-lacks", lambda env: study(env, "search.space.finetune={layer: 2}"), ("search.space.finetune.layer", "finetune has no parameter 'layer'", "pooling"), ("study",)),
    Case("study-no-seeds", lambda env: study(env, "study.seeds=[]"), ("study.seeds", "at least 1"), ("study",)),
    Case("study-one-session-manifest", _manifest_one_session, ("data.manifest", "one.csv", "at least two"), ("study",)),
    Case("study-missing-manifest", _missing_manifest, ("data.manifest", "missing.csv"), ("study",)),
    Case("study-manifest-not-a-manifest", _manifest_not_a_manifest, ("data.manifest", "notes.csv"), ("study",)),
    Case("study-transcript-task-without-transcripts", _manifest_without_transcripts,
         ("search.space.transcript_weight", "no_text.csv", "ser-study prepare", "transcript_weight 0"), ("study",)),
    Case("study-missing-encoder", lambda env: study(env, encoder=env.tmp / "no-encoder"), ("encoder", "no-encoder", "tiny-encoder"), ("study",)),
    Case("study-revision-of-a-local-encoder", lambda env: study(env, "encoder_revision=v1.0"), ("encoder_revision", "local directory", "remove encoder_revision"), ("study",)),
    Case("study-dir-under-a-file", lambda env: ((env.tmp / "file.txt").write_text("x"), study(env, study_dir=env.tmp / "file.txt" / "study"))[1],
         ("storage.study_dir", "file.txt", "--study-dir")),
    Case("study-mlflow-server-unreachable", lambda env: study(env, "storage.mlflow_uri=http://127.0.0.1:9"),
         ("storage.mlflow_uri", "no MLflow server answers at http://127.0.0.1:9", "local SQLite store"), ("study",)),
    Case("study-ray-address-unreachable", lambda env: study(env) + ["--address", "127.0.0.1:1"],
         ("--address 127.0.0.1:1", "no Ray cluster answers", "ray start --head"), ("study",)),
    Case("study-ray-address-malformed", lambda env: study(env) + ["--address", "localhost"],
         ("--address 'localhost'", "host:port"), ("study",)),
    Case("study-mlflow-file-store", lambda env: study(env, "storage.mlflow_uri=file:///tmp/mlruns"), ("storage.mlflow_uri", "file store"), ("study",)),
    # ---- run-fold --------------------------------------------------------------------------------
    Case("run-fold-layer-beyond-depth", lambda env: run_fold(env, layer="7"), ("--layer=7", "3 transformer layers", "0..3"), ("fold",)),
    Case("run-fold-mask-ratio-above-1", lambda env: run_fold(env, mask_ratio="1.5"), ("mask_ratio", "1.5"), ("fold",)),
    Case("run-fold-mask-ratio-zero", lambda env: run_fold(env, mask_ratio="0"), ("mask_ratio",), ("fold",)),
    Case("run-fold-fold-not-in-manifest", lambda env: run_fold(env, fold="9"), ("--fold 9", "sessions present"), ("fold",)),
    Case("run-fold-one-cluster", lambda env: run_fold(env, clusters="1"), ("clusters", "at least 2"), ("fold",)),
    Case("run-fold-unknown-pooling", lambda env: run_fold(env, pooling="max"), ("--pooling", "'max'"), ("fold",)),
    Case("run-fold-missing-manifest", lambda env: run_fold(env, data=str(env.tmp / "missing.csv")), ("missing.csv",), ("fold",)),
    # ---- predict, resume, report, audit -----------------------------------------------------------
    Case("tiny-encoder-negative-unmasked-weight", lambda env: ["tiny-encoder", str(env.tmp / "enc"), "--pretrain-on", str(env.manifest), "--unmasked-weight", "-1"],
         ("--unmasked-weight", "must not be negative"), ("enc",)),
    Case("tiny-encoder-pretraining-manifest-missing", lambda env: ["tiny-encoder", str(env.tmp / "enc"), "--pretrain-on", str(env.tmp / "missing.csv")],
         ("missing.csv",), ("enc",)),
    Case("predict-unknown-device", _predict_unknown_device, ("--device 'tpu'", "auto, cpu, cuda")),
    Case("predict-pattern-matches-nothing", _predict_pattern_matching_nothing, ("*.wav", "matches no file")),
    Case("predict-input-missing", _predict_missing_file, ("missing.wav", "does not exist")),
    Case("predict-not-a-study", lambda env: ["predict", str(_plain_dir(env)), str(env.tmp / "x.wav")], ("plain", "is not a study directory", "ser-study run")),
    Case("resume-not-a-study", lambda env: ["resume", str(_plain_dir(env))], ("plain", "is not a study directory", "ser-study run")),
    Case("report-not-a-study", lambda env: ["report", str(_plain_dir(env))], ("plain", "is not a study directory", "ser-study run")),
    Case("audit-not-a-study", lambda env: ["audit", str(_plain_dir(env))], ("plain", "no trial records", "run a study first")),
]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Ray, a fold's phases and the MFCC pretraining fail the test if any bad input reaches them."""
    import ray

    import study.cache.chain
    import study.tune.runner
    import trainables.phases.acoustic_pretrain

    def refuse(what):
        def fail(*_args, **_kwargs):
            raise AssertionError(f"bad input started expensive work: {what}")
        return fail

    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(study.tune.runner, "connect_ray", refuse("connect_ray"))
    # The commands import these when they run: patched where they are defined.
    monkeypatch.setattr(study.cache.chain, "run_fold_chain", refuse("run_fold_chain"))
    monkeypatch.setattr(trainables.phases.acoustic_pretrain, "pretrain_on_acoustic_clusters", refuse("pretrain_on_acoustic_clusters"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case, tmp_path, request, monkeypatch, capsys, no_expensive_work):
    work = tmp_path / "work"
    work.mkdir()
    argv = case.build(Env(work, request, monkeypatch))
    before = _tree(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses an option before any handler runs
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit status {code} for {argv}\n{err}"
    assert code == 2
    assert "Traceback" not in err, err
    for expected in case.expect:
        assert expected in err, f"{expected!r} not in stderr:\n{err}"
    assert _tree(tmp_path) == before, "the command left files behind"
    for path in case.absent:
        assert not (work / path).exists()


def test_there_are_at_least_20_kinds():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


# ---- kinds that are excluded and reported, not fatal ------------------------------------------------


def _first_utterance(release: Path) -> tuple[Path, str, Path]:
    eval_file = sorted((release / "Session1" / "dialog" / "EmoEvaluation").glob("*.txt"))[0]
    utt = re.search(r"^\[[^\]]+\]\t(\S+)\t", eval_file.read_text(), re.M)[1]
    return eval_file, utt, release / "Session1" / "sentences" / "wav" / eval_file.stem / f"{utt}.wav"


@pytest.mark.parametrize("kind", ["corrupt-wav", "unknown-label"])
def test_an_unusable_utterance_is_excluded_and_reported(kind, corpus_copy, tmp_path, capsys, caplog):
    eval_file, utt, wav = _first_utterance(corpus_copy)
    if kind == "corrupt-wav":
        wav.write_bytes(b"not a wav at all")
        named, problem = str(wav), "unreadable"
    else:
        eval_file.write_text(re.sub(rf"(\t{utt}\t)\w+", r"\1joy", eval_file.read_text(), count=1))
        named, problem = str(eval_file), "unknown label 'joy'"
    out = tmp_path / "m.csv"
    assert main(["prepare", str(corpus_copy), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    logged = captured.err + caplog.text  # the warning is logged to stderr (to caplog under pytest)
    assert utt in logged and problem in logged and "Traceback" not in logged
    assert "problem report" in captured.out
    with open(tmp_path / "m.problems.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("utt_id") == utt]
    assert rows and problem in rows[0]["problem"] and rows[0]["action"] == "excluded" and rows[0]["path"] == named
    assert utt not in out.read_text()
