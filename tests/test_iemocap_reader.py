"""The IEMOCAP reader on generated trees, including every kind of bad input."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainables.data.iemocap import CorpusError, find_release_dir, read_iemocap, summary_table
from trainables.data.labels import get_label_set

FOUR = get_label_set("4class")


def _first_line(release: Path, session: int = 1) -> tuple[Path, str, Path]:
    """The first evaluation file of a session, its first utterance id and that utterance's wav."""
    eval_file = sorted((release / f"Session{session}" / "dialog" / "EmoEvaluation").glob("*.txt"))[0]
    utt = re.search(r"^\[[^\]]+\]\t(\S+)\t", eval_file.read_text(), re.M)[1]
    wav = release / f"Session{session}" / "sentences" / "wav" / eval_file.stem / f"{utt}.wav"
    return eval_file, utt, wav


def _problem(reading, utt_id: str):
    matches = [p for p in reading.problems if p.utt_id == utt_id]
    assert matches, f"no problem reported for {utt_id}"
    return matches[0]


def test_reads_generated_corpus(small_corpus):
    reading = read_iemocap(small_corpus, FOUR)
    assert len(reading.utterances) > 40
    assert reading.problems == []
    assert {u.session for u in reading.utterances} == {1, 2, 3, 4, 5}
    assert {u.label for u in reading.utterances} == {"neu", "hap", "ang", "sad"}
    # exc is merged into hap, and labels outside the set are counted, not kept.
    assert any(u.raw_label == "exc" and u.label == "hap" for u in reading.utterances)
    assert set(reading.outside_label_set) <= {"fru", "xxx"}
    for u in reading.utterances:
        assert u.speaker == f"Ses{u.session:02d}{u.gender}"
        assert u.utt_id.rsplit("_", 1)[1][0] == u.gender
        assert u.sample_rate == 16000 and u.duration_s > 0
        assert u.improvised == ("impro" in u.dialog)
        assert Path(u.path).is_file()


def test_gender_comes_from_utterance_suffix_not_dialog(small_corpus):
    reading = read_iemocap(small_corpus, FOUR)
    mixed = [u for u in reading.utterances if u.utt_id[5] != u.gender]
    assert mixed, "the corpus should hold utterances whose speaker differs from the dialog's lead"


def test_label_sets_change_what_is_kept(small_corpus):
    four = read_iemocap(small_corpus, FOUR)
    noexc = read_iemocap(small_corpus, get_label_set("4class-noexc"))
    six = read_iemocap(small_corpus, get_label_set("6class"))
    exc = sum(u.raw_label == "exc" for u in four.utterances)
    fru = four.outside_label_set["fru"]
    assert len(noexc.utterances) == len(four.utterances) - exc
    assert noexc.outside_label_set["exc"] == exc
    assert len(six.utterances) == len(four.utterances) + fru
    assert {u.label for u in six.utterances} >= {"exc", "fru"}


def test_summary_table_counts(small_corpus):
    reading = read_iemocap(small_corpus, FOUR)
    table = summary_table(reading)
    counts = Counter((u.session, u.label) for u in reading.utterances)
    row = next(line for line in table.splitlines() if line.startswith("Session3"))
    assert row.split()[1:] == [str(counts[(3, c)]) for c in FOUR.classes] + [str(sum(counts[(3, c)] for c in FOUR.classes))]
    assert f"{len(reading.utterances)} utterances" in table


@pytest.mark.parametrize("layout", ["release", "parent", "torchaudio"])
def test_accepts_release_layouts(corpus_copy, tmp_path, layout):
    if layout == "release":
        root = corpus_copy
    elif layout == "parent":
        root = corpus_copy.parent
    else:
        root = tmp_path / "ta"
        root.mkdir()
        shutil.move(corpus_copy, root / "IEMOCAP")
    assert find_release_dir(root).name in {"IEMOCAP_full_release", "IEMOCAP"}
    assert len(read_iemocap(root, FOUR).utterances) > 40


def test_rejects_root_that_is_not_iemocap(tmp_path):
    with pytest.raises(CorpusError, match="not an IEMOCAP root"):
        read_iemocap(tmp_path, FOUR)
    with pytest.raises(CorpusError, match="not a directory"):
        read_iemocap(tmp_path / "nowhere", FOUR)


def test_rejects_missing_session(corpus_copy):
    shutil.rmtree(corpus_copy / "Session4")
    with pytest.raises(CorpusError, match=r"session 4 is missing: expected .*Session4/dialog/EmoEvaluation"):
        read_iemocap(corpus_copy, FOUR)
    assert len(read_iemocap(corpus_copy, FOUR, sessions=(1, 2, 3, 5)).utterances) > 30


def test_missing_wav_is_excluded_and_named(corpus_copy):
    _, utt, wav = _first_line(corpus_copy)
    wav.unlink()
    reading = read_iemocap(corpus_copy, FOUR)
    problem = _problem(reading, utt)
    assert problem.problem == "wav file is missing" and problem.action == "excluded" and problem.path == str(wav)
    assert utt not in {u.utt_id for u in reading.utterances}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda wav: wav.write_bytes(b"not a wav at all"), "unreadable"),
        (lambda wav: wav.write_bytes(b""), "unreadable"),
        (lambda wav: sf.write(str(wav), np.zeros(0, dtype=np.float32), 16000), "zero length"),
        (lambda wav: sf.write(str(wav), np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT"), "NaN"),
        (lambda wav: sf.write(str(wav), np.zeros(1600, dtype=np.float32), 16000), "silent"),
    ],
    ids=["garbage", "empty-file", "zero-length", "nan", "silent"],
)
def test_unusable_wavs_are_excluded(corpus_copy, damage, message):
    _, utt, wav = _first_line(corpus_copy)
    damage(wav)
    reading = read_iemocap(corpus_copy, FOUR)
    problem = _problem(reading, utt)
    assert message in problem.problem and problem.action == "excluded"
    assert utt not in {u.utt_id for u in reading.utterances}


def test_other_rate_and_stereo_are_kept_with_a_warning(corpus_copy):
    _, utt, wav = _first_line(corpus_copy)
    signal, _ = sf.read(str(wav), dtype="float32")
    sf.write(str(wav), np.stack([signal[::2], signal[::2]], axis=1), 8000)
    reading = read_iemocap(corpus_copy, FOUR)
    problems = {p.problem for p in reading.problems if p.utt_id == utt}
    assert problems == {"wav has 2 channels", "wav is at 8000 Hz, not 16000 Hz"}
    kept = next(u for u in reading.utterances if u.utt_id == utt)
    assert kept.sample_rate == 8000 and kept.num_channels == 2


def test_unknown_label_is_excluded(corpus_copy):
    eval_file, utt, _ = _first_line(corpus_copy)
    text = eval_file.read_text()
    eval_file.write_text(re.sub(rf"(\t{utt}\t)\w+", r"\1joy", text, count=1))
    reading = read_iemocap(corpus_copy, FOUR)
    assert "unknown label 'joy'" in _problem(reading, utt).problem


def test_duplicated_utterance_id_keeps_the_first(corpus_copy):
    eval_file, utt, _ = _first_line(corpus_copy)
    line = next(l for l in eval_file.read_text().splitlines() if f"\t{utt}\t" in l)
    with open(eval_file, "a") as handle:
        handle.write(line + "\n")
    reading = read_iemocap(corpus_copy, FOUR)
    assert "duplicated utterance id" in _problem(reading, utt).problem
    assert sum(u.utt_id == utt for u in reading.utterances) == 1


def test_malformed_evaluation_line_is_reported(corpus_copy):
    eval_file, _, _ = _first_line(corpus_copy)
    with open(eval_file, "a") as handle:
        handle.write("[1.0 - 2.0] broken line without tabs\n")
    reading = read_iemocap(corpus_copy, FOUR)
    assert any(p.path == str(eval_file) and "is not '[start - end]" in p.problem for p in reading.problems)


def test_no_usable_utterance_is_fatal(corpus_copy):
    for wav in corpus_copy.rglob("*.wav"):
        wav.unlink()
    with pytest.raises(CorpusError, match="no usable utterance"):
        read_iemocap(corpus_copy, FOUR)
