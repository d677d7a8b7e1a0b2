"""The same study file and seed, run twice on CPU, give the same folds, pseudo labels, artifacts, metrics and report.

On CPU every phase is bit-reproducible: phases seed torch's and numpy's
generators from the study seed, fold tasks run single-threaded, and k-means is
seeded. So equality here is exact, not approximate. (On GPU, cuDNN and bf16
atomics are not bit-reproducible; see docs/evidence.md.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from study.io import layout
from study.io.records import read_trial_records
from study_runs import KILL_STUDY, normalized_report, run_cli, study_args, trial_names
from trainables.phases.clustering import LABELS_FILE

pytestmark = pytest.mark.slow


def _by_params(study_dir):
    names = trial_names(study_dir)
    return {names[r["trial_id"]]: r for r in read_trial_records(study_dir)}


def _artifact_files(study_dir, phase: str, key: str) -> dict:
    return json.loads((layout.cache_dir(study_dir) / phase / key / "record.json").read_text())["files"]


def test_the_same_study_twice_gives_the_same_folds_pseudo_labels_metrics_and_report(reference_study, small_manifest, tiny_encoder, tmp_path):
    again = tmp_path / "again"
    done = run_cli(*study_args(small_manifest, tiny_encoder, again, *KILL_STUDY))
    assert done.returncode == 0, done.stderr[-3000:]

    first, second = _by_params(reference_study), _by_params(again)
    assert first.keys() == second.keys() and len(first) == 2
    for name, one in first.items():
        two = second[name]
        assert [f["fold"] for f in one["folds"]] == [f["fold"] for f in two["folds"]], f"{name}: the folds differ"
        assert [f["artifacts"] for f in one["folds"]] == [f["artifacts"] for f in two["folds"]], f"{name}: the phase keys differ"
        for fold in one["folds"]:
            labels = [np.load(layout.cache_dir(d) / "clustering" / fold["artifacts"]["clustering"] / LABELS_FILE) for d in (reference_study, again)]
            assert labels[0].size > 0 and np.array_equal(*labels), f"{name}: the pseudo labels differ"
            for phase, key in fold["artifacts"].items():  # every file of every phase artifact, byte for byte (SHA-256)
                assert _artifact_files(reference_study, phase, key) == _artifact_files(again, phase, key), f"{name}: {phase} differs"
        assert one["metrics"] == two["metrics"], f"{name}: the metrics differ"
        assert [(f["val"], f["test"]) for f in one["folds"]] == [(f["val"], f["test"]) for f in two["folds"]]
    assert normalized_report(reference_study) == normalized_report(again)
