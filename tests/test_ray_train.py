"""The Ray path of the phases: training phases as Ray Train jobs (gloo DDP on CPU), embeddings and k-means as Ray tasks.

Every test here starts real Ray work on a local 2-CPU cluster (one per module):
a ``TorchTrainer`` run costs 15-25 s on a 2-core machine, so they are all
marked ``slow``; the module takes about 2.5 minutes. The data is the smallest
that exercises the path: 8 training and 4 validation utterances, the tiny
encoder, 2-3 epochs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ray = pytest.importorskip("ray")

from trainables.executors import LocalExecutor  # noqa: E402
from trainables.config import KMeansConfig  # noqa: E402
from trainables.phases.artifacts import RECORD_FILE, checkpoint_dir_for, encoder_dir, read_record  # noqa: E402
from trainables.phases.clustering import CENTROIDS_FILE, LABELS_FILE  # noqa: E402
from trainables.phases.embeddings import INDEX_FILE, layer_file  # noqa: E402
from trainables.config import smoke_settings  # noqa: E402
from trainables.config import RayResources  # noqa: E402
from trainables.ray_train import POLL_INTERVAL_ENV, RayExecutor  # noqa: E402

from fault_injection import FailOnce  # noqa: E402

pytestmark = pytest.mark.slow

CLASSES = ["neu", "hap", "ang", "sad"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster with 2 CPUs: two Ray Train workers of one CPU each."""
    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:  # RayExecutor sets Ray Train's poll interval in the environment
        patch.setenv(POLL_INTERVAL_ENV, os.environ.get(POLL_INTERVAL_ENV, "0.5"))
        # The workers import the test's FailOnce hook from this folder.
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def split(small_utterances):
    """8 training utterances (two of each class, sessions 1-4) and 4 validation ones."""
    pool = [u for u in small_utterances if u.session != 5 and u.label in CLASSES]
    train = [u for c in CLASSES for u in [v for v in pool if v.label == c][:2]]
    val = [u for c in CLASSES for u in [v for v in pool if v.label == c][2:3]]
    assert len(train) == 8 and len(val) == 4
    return train, val


def _samples(utterances) -> int:
    return sum(sf.info(u.path).frames for u in utterances)


def _tapt_kwargs(tiny_encoder, split, epochs: int) -> dict:
    train, val = split
    cfg = smoke_settings(epochs=epochs).tapt
    # no utterance is longer than the crop, so a rank's audio samples are exactly its utterances'
    assert max(u.duration_s for u in train) < cfg.train.max_train_seconds
    return {"encoder": str(tiny_encoder), "train": train, "val": val, "classes": CLASSES, "cfg": cfg}


def _check_shares(ranks: list[dict], train, epochs: list[int]) -> None:
    """Every trained epoch, the ranks' shares partition the training set, with equal step counts."""
    world_size = len(ranks)
    assert [r["rank"] for r in ranks] == list(range(world_size))
    assert all(r["world_size"] == world_size for r in ranks)
    for r in ranks:
        assert [e["epoch"] for e in r["epochs"]] == epochs
    total = _samples(train)
    for i in range(len(epochs)):
        shares = [r["epochs"][i] for r in ranks]
        assert all(s["utterances"] > 0 for s in shares), shares  # every rank trained on its own part...
        assert sum(s["utterances"] for s in shares) == len(train), shares  # ...and together exactly the training set
        assert sum(s["samples"] for s in shares) == total, shares
        assert len({s["steps"] for s in shares}) == 1, shares  # DDP: the same number of steps on every rank


def test_tapt_on_two_ray_train_workers_matches_one(ray_cluster, tiny_encoder, split, tmp_path, monkeypatch):
    kwargs = _tapt_kwargs(tiny_encoder, split, epochs=2)
    records, results = {}, {}
    for workers in (2, 1):
        executor = RayExecutor(RayResources(workers=workers), storage=tmp_path / "ray")
        out = tmp_path / f"tapt-w{workers}"
        if workers == 1:  # relative paths work although Ray Train runs the workers in a folder of its own
            monkeypatch.chdir(tmp_path)
            kwargs = {**kwargs, "encoder": os.path.relpath(tiny_encoder, tmp_path)}
            results[workers] = executor.train("tapt", Path(out.name), **kwargs)
        else:
            results[workers] = executor.train("tapt", out, **kwargs)
        records[workers] = read_record(out)
        assert (encoder_dir(out) / "config.json").is_file()
        assert not (tmp_path / "ray" / f"tapt-{out.name}").exists()  # the finished run's checkpoints are gone

    for workers, record in records.items():
        assert record["phase"] == "tapt"
        assert record["world_size"] == workers
        assert record["device"].startswith("cpu")
        assert record["results"]["resumed_from_epoch"] is None
        assert [h["epoch"] for h in record["results"]["history"]] == [0, 1]
    two, one = records[2]["results"], records[1]["results"]
    assert sorted(two["best"]) == sorted(one["best"])
    assert [sorted(h) for h in two["history"]] == [sorted(h) for h in one["history"]]
    assert "val_ua" in two["best"]
    # Ray Train's result holds rank 0's last report: the last epoch of the history
    assert results[2].metrics["val_ua"] == two["history"][-1]["val_ua"]

    train = split[0]
    _check_shares(results[2].return_value["ranks"], train, epochs=[0, 1])
    _check_shares(results[1].return_value["ranks"], train, epochs=[0, 1])
    assert results[2].return_value["value"] == records[2]["results"]["best"]


def test_killed_ray_train_worker_resumes_from_its_last_checkpoint(ray_cluster, tiny_encoder, split, tmp_path):
    marker = tmp_path / "killed-once"
    executor = RayExecutor(RayResources(workers=2, max_failures=1), storage=tmp_path / "ray", hooks=[FailOnce(after_epoch=1, marker=str(marker))])
    out = tmp_path / "tapt"
    result = executor.train("tapt", out, **_tapt_kwargs(tiny_encoder, split, epochs=3))

    assert marker.is_file()  # rank 0 did exit after epoch 1
    record = read_record(out)
    assert record["world_size"] == 2
    # Epoch 1's checkpoint, or epoch 0's when the worker died before Ray Train's controller polled its
    # last report (a Ray Train V2 race seen under load): either way a checkpoint, not a restart from scratch.
    resumed = record["results"]["resumed_from_epoch"]
    assert resumed in (0, 1)
    assert [h["epoch"] for h in record["results"]["history"]] == [0, 1, 2]  # epochs up to `resumed` from the checkpoint
    ranks = result.return_value["ranks"]
    assert all(r["resumed"] for r in ranks)  # every rank of the new group loaded the checkpoint
    _check_shares(ranks, split[0], epochs=list(range(resumed + 1, 3)))  # the restarted group trained only what was left
    assert result.metrics["epoch"] == 2


def test_rerun_after_the_restarts_ran_out_resumes_from_the_run_in_storage(ray_cluster, tiny_encoder, split, tmp_path):
    kwargs = _tapt_kwargs(tiny_encoder, split, epochs=3)
    out, storage = tmp_path / "tapt", tmp_path / "ray"
    failing = RayExecutor(RayResources(workers=1, max_failures=0), storage=storage, hooks=[FailOnce(after_epoch=1, marker=str(tmp_path / "killed"))])
    with pytest.raises(ray.train.TrainingFailedError):
        failing.train("tapt", out, **kwargs)
    assert not out.exists()
    assert (storage / f"tapt-{out.name}" / "checkpoint_manager_snapshot.json").is_file()  # the run stays for a rerun

    result = RayExecutor(RayResources(workers=1), storage=storage).train("tapt", out, **kwargs)
    # The rerun resumes from the last checkpoint Ray Train registered: epoch 1's, or epoch 0's when the
    # worker died before the controller's next poll saw its last report (a Ray Train V2 race, seen under load).
    resumed = read_record(out)["results"]["resumed_from_epoch"]
    assert resumed in (0, 1)
    assert [e["epoch"] for e in result.return_value["ranks"][0]["epochs"]] == list(range(resumed + 1, 3))
    assert not (storage / f"tapt-{out.name}").exists()


def test_ray_tasks_build_the_same_embeddings_and_clusters_as_local(ray_cluster, tiny_encoder, split, tmp_path):
    utterances = split[0] + split[1]
    layers = [1, 3]
    local, remote = LocalExecutor(), RayExecutor(RayResources(), storage=tmp_path / "ray")

    local.task("embeddings", tmp_path / "emb-local", encoder_path=Path(tiny_encoder), utterances=utterances, layers=layers, max_batch_seconds=20.0)
    remote.task("embeddings", tmp_path / "emb-ray", encoder_path=Path(tiny_encoder), utterances=utterances, layers=layers, max_batch_seconds=20.0)
    assert not checkpoint_dir_for(tmp_path / "emb-local").exists()
    a, b = tmp_path / "emb-local", tmp_path / "emb-ray"
    assert json.loads((a / INDEX_FILE).read_text()) == json.loads((b / INDEX_FILE).read_text())
    for layer in layers:
        x, y = np.load(layer_file(a, layer)), np.load(layer_file(b, layer))
        assert x.dtype == y.dtype == np.float16 and x.shape == y.shape
        # the Ray task runs with one thread (OMP_NUM_THREADS=1), the test process with more: float sums may differ in the last bits
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=1e-2, atol=1e-2)
    ra, rb = read_record(a), read_record(b)
    for key in ("phase", "params", "upstream", "used", "device", "world_size", "code_version"):
        assert ra[key] == rb[key], key
    assert ra["results"]["total_frames"] == rb["results"]["total_frames"]

    cfg = KMeansConfig(n_clusters=4, max_fit_frames=2_000, n_init=1, max_iter=20)
    local.task("clustering", tmp_path / "km-local", embeddings=a, layer=3, cfg=cfg)
    results = remote.task("clustering", tmp_path / "km-ray", embeddings=a, layer=3, cfg=cfg)
    c, d = tmp_path / "km-local", tmp_path / "km-ray"
    assert sorted(p.name for p in c.iterdir()) == sorted(p.name for p in d.iterdir()) == sorted([CENTROIDS_FILE, INDEX_FILE, LABELS_FILE, RECORD_FILE])
    np.testing.assert_array_equal(np.load(c / LABELS_FILE), np.load(d / LABELS_FILE))
    np.testing.assert_allclose(np.load(c / CENTROIDS_FILE), np.load(d / CENTROIDS_FILE), rtol=1e-5, atol=1e-6)
    rc, rd = read_record(c), read_record(d)
    for key in ("phase", "params", "upstream", "used", "device"):
        assert rc[key] == rd[key], key
    assert results["empty_clusters"] == rc["results"]["empty_clusters"]
