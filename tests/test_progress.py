"""The live progress view: trial rows from Tune's results, builds from the cache's events, an ETA, and it pickles for resume."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

from rich.console import Console

from study.cache.store import ArtifactCache
from study.tune.progress import StudyProgress


def _text(view: StudyProgress) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(view.render())
    return console.export_text()


def test_the_view_shows_trials_builds_and_an_eta(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    view = StudyProgress(str(tmp_path / "cache"), expected_builds=4)
    trial = SimpleNamespace(trial_id="t1", config={"study_dir": "x", "method": "alignment", "layer": 2})
    view.on_trial_start(0, [trial], trial)
    view.on_trial_result(0, [trial], trial, {"folds_done": 1, "folds_total": 2, "val_ua_running_mean": 0.4567})
    assert "ETA: after the first builds" in _text(view)

    cache.log_event("tapt", "k1", "built", seconds=3.0)
    cache.log_event("embeddings", "k2", "built", seconds=1.0)
    cache.log_event("tapt", "k1", "hit")
    view.poll()
    view.poll()  # events are read once each
    text = _text(view)
    assert "t1" in text and "method=alignment, layer=2" in text and "1/2" in text and "45.7" in text and "running" in text
    assert "built: 2 of 4 (embeddings 1, tapt 1); reused from the cache: 1" in text
    assert "ETA: 0m" in text  # two of four built so far: the rest at the same rate

    checkpoint = tmp_path / "cache" / "cpt" / ".k3.ckpt"  # what a phase's local runtime leaves after its second epoch
    checkpoint.mkdir(parents=True)
    (checkpoint / "progress.json").write_text('{"epoch": 1, "epochs": 8}')
    assert view._with_epoch("cpt/k3") == "cpt/k3 (epoch 2/8)" and view._with_epoch("tapt/k1") == "tapt/k1"

    view.on_trial_complete(0, [trial], trial)
    restored = pickle.loads(pickle.dumps(view))  # Tune keeps its callbacks in the experiment's state
    assert restored.built == {"tapt": 1, "embeddings": 1} and restored.rows["t1"]["state"] == "done" and restored.live is None


def test_a_local_training_phase_leaves_its_epoch_beside_its_checkpoint(tmp_path):
    import json

    from trainables.phases.artifacts import checkpoint_dir_for
    from trainables.runtime import PROGRESS_FILE, LocalRuntime

    checkpoint = checkpoint_dir_for(tmp_path / "cpt" / "k3")
    LocalRuntime(checkpoint).report({"epoch": 4}, {"epoch": 4, "epochs": 8})
    assert json.loads((checkpoint / PROGRESS_FILE).read_text()) == {"epoch": 4, "epochs": 8}
    assert StudyProgress(str(tmp_path))._with_epoch("cpt/k3") == "cpt/k3 (epoch 5/8)"
