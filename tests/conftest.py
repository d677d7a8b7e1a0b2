"""Shared fixtures: a small generated corpus and its manifest, built once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
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


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A tiny randomly initialised HuBERT saved to disk, loaded through the real loading path."""
    from trainables.config import TinyEncoderConfig
    from trainables.models.encoder import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny", TinyEncoderConfig(hidden_size=32, num_layers=3, intermediate_size=64))


@pytest.fixture(scope="session")
def small_manifest(small_corpus, tmp_path_factory) -> Path:
    from trainables.data.manifest import write_manifest

    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    write_manifest(read_iemocap(small_corpus, get_label_set("4class")).utterances, path)
    return path


@pytest.fixture(scope="session")
def reference_study(small_manifest, tiny_encoder, tmp_path_factory) -> Path:
    """``study_runs.KILL_STUDY`` run once through the CLI, uninterrupted: what the fault and determinism tests compare with."""
    from study_runs import KILL_STUDY, run_cli, study_args

    study_dir = tmp_path_factory.mktemp("reference") / "study"
    done = run_cli(*study_args(small_manifest, tiny_encoder, study_dir, *KILL_STUDY))
    assert done.returncode == 0, done.stderr[-3000:]
    return study_dir


# -- ending the test process


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Once the session is over, end this process with its exit status as soon as Python's exit handlers have run.

    Several tests start and stop a Ray driver in this process (``ray.init`` ...
    ``ray.shutdown``); Ray leaves native threads behind each time (its GCS
    client's io service, gRPC's event engine and timers), and one of them may
    call into an object the interpreter's teardown freed: a segmentation fault
    (exit status 139) after every test has passed. Ray documents restarting Ray
    in one process with threads still running as unsafe (ray-project/ray#31145).
    The exit handler below is registered
    last, so it runs after every other one (pytest's and Ray's included): only
    the interpreter's finalization and C++ destructors are skipped.
    """
    if "ray" in sys.modules:
        status = int(session.exitstatus)
        atexit.register(lambda: (sys.stdout.flush(), sys.stderr.flush(), os._exit(status)))
