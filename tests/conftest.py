"""Shared fixtures: a small generated corpus and its manifest, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainables.data.demo_corpus import DemoCorpusConfig, generate_demo_corpus
from trainables.data.iemocap import read_iemocap
from trainables.data.labels import get_label_set

SMALL_CORPUS = DemoCorpusConfig(utterances_per_session=16, median_duration_s=1.2, max_duration_s=3.0, seed=7)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A read-only 80-utterance corpus; copy it (``corpus_copy``) before changing it."""
    return generate_demo_corpus(tmp_path_factory.mktemp("corpus"), SMALL_CORPUS)


@pytest.fixture
def corpus_copy(small_corpus, tmp_path) -> Path:
    """A private, writable copy of the small corpus's release folder."""
    target = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(small_corpus, target)
    return target


@pytest.fixture(scope="session")
def small_utterances(small_corpus):
    return read_iemocap(small_corpus, get_label_set("4class")).utterances
