"""Leave-one-session-out folds."""

from __future__ import annotations

from collections import Counter

import pytest

from trainables.data.folds import FoldError, FoldSpec, Validation, build_fold
from trainables.data.manifest import fingerprint


@pytest.mark.parametrize("session", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("validation", [Validation.STRATIFIED, Validation.TRAIN_SPEAKER])
def test_strict_folds_keep_the_test_session_out(small_utterances, session, validation):
    fold = build_fold(small_utterances, FoldSpec(test_session=session, validation=validation, val_fraction=0.2))
    by_id = {u.utt_id: u for u in small_utterances}
    assert fold.strict
    assert all(by_id[i].session == session for i in fold.test.utt_ids)
    assert all(by_id[i].session != session for i in fold.train.utt_ids + fold.val.utt_ids)
    assert not set(fold.train.utt_ids) & set(fold.val.utt_ids)
    assert len(fold.train) + len(fold.val) + len(fold.test) == len(small_utterances)
    if validation is Validation.TRAIN_SPEAKER:
        assert len({by_id[i].speaker for i in fold.val.utt_ids}) == 1


def test_stratified_validation_keeps_every_class(small_utterances):
    fold = build_fold(small_utterances, FoldSpec(test_session=1, val_fraction=0.2))
    by_id = {u.utt_id: u for u in small_utterances}
    assert set(Counter(by_id[i].label for i in fold.val.utt_ids)) == {"neu", "hap", "ang", "sad"}


def test_folds_are_deterministic_and_seeded(small_utterances):
    a = build_fold(small_utterances, FoldSpec(test_session=2, seed=1, val_fraction=0.2))
    b = build_fold(small_utterances, FoldSpec(test_session=2, seed=1, val_fraction=0.2))
    c = build_fold(small_utterances, FoldSpec(test_session=2, seed=2, val_fraction=0.2))
    assert a == b
    assert a.val.fingerprint == fingerprint(a.val.utt_ids) == fingerprint(reversed(a.val.utt_ids))
    assert a.val != c.val


def test_published_protocol_is_flagged(small_utterances):
    fold = build_fold(small_utterances, FoldSpec(test_session=3, validation=Validation.TEST_SESSION_SPEAKER, val_speaker="F"))
    by_id = {u.utt_id: u for u in small_utterances}
    assert not fold.strict and fold.summary()["strict"] is False
    assert {by_id[i].speaker for i in fold.val.utt_ids} == {"Ses03F"}
    assert {by_id[i].speaker for i in fold.test.utt_ids} == {"Ses03M"}
    assert all(by_id[i].session != 3 for i in fold.train.utt_ids)


def test_fold_errors(small_utterances):
    with pytest.raises(FoldError, match="test session 6 has no utterances"):
        build_fold(small_utterances, FoldSpec(test_session=6))
    with pytest.raises(FoldError, match="val_fraction"):
        build_fold(small_utterances, FoldSpec(test_session=1, val_fraction=1.5))
    with pytest.raises(FoldError, match="not a training speaker"):
        build_fold(small_utterances, FoldSpec(test_session=1, validation=Validation.TRAIN_SPEAKER, val_speaker="Ses01F"))
    only_one = [u for u in small_utterances if u.session == 1]
    with pytest.raises(FoldError, match="at least two sessions"):
        build_fold(only_one, FoldSpec(test_session=1))


@pytest.mark.parametrize("session", [1, 2, 3, 4, 5])
def test_the_default_validation_holds_out_whole_training_speakers(small_utterances, session):
    by_id = {u.utt_id: u for u in small_utterances}
    fold = build_fold(small_utterances, FoldSpec(test_session=session))
    assert fold.spec.validation is Validation.SPEAKERS and fold.strict
    val_speakers = {by_id[i].speaker for i in fold.val.utt_ids}
    train_speakers = {by_id[i].speaker for i in fold.train.utt_ids}
    assert val_speakers and not val_speakers & train_speakers  # never a speaker seen in training
    assert all(by_id[i].session != session for i in fold.val.utt_ids)
    assert len(val_speakers) == 1  # 10 % of 8 training speakers, at least one
    seeded = {frozenset(by_id[i].speaker for i in build_fold(small_utterances, FoldSpec(test_session=session, seed=s)).val.utt_ids) for s in range(6)}
    assert len(seeded) > 1  # the seed chooses which


def test_more_validation_speakers_alternate_genders(small_utterances):
    by_id = {u.utt_id: u for u in small_utterances}
    fold = build_fold(small_utterances, FoldSpec(test_session=1, val_fraction=0.25))
    speakers = {by_id[i].speaker for i in fold.val.utt_ids}
    assert len(speakers) == 2 and {s[-1] for s in speakers} == {"F", "M"}


def test_validation_from_the_test_session_is_unsupervised_audio_only_with_test_audio(small_utterances):
    from trainables.data.folds import FoldProtocol

    published = FoldProtocol(validation=Validation.TEST_SESSION_SPEAKER, unsupervised_audio="train")
    fold = build_fold(small_utterances, published.fold_spec(3))
    assert set(published.unsupervised_ids(fold)) == set(fold.train.utt_ids)  # the test session's validation speaker stays out
    loose = FoldProtocol(validation=Validation.TEST_SESSION_SPEAKER, unsupervised_audio="train+test")
    assert set(loose.unsupervised_ids(fold)) == set(fold.train.utt_ids) | set(fold.val.utt_ids) | set(fold.test.utt_ids)
    strict = FoldProtocol()
    fold = build_fold(small_utterances, strict.fold_spec(3))
    assert set(strict.unsupervised_ids(fold)) == set(fold.train.utt_ids) | set(fold.val.utt_ids)
