"""Study storage on object stores, tested through ``file://`` URIs (the same pyarrow code path as ``s3://``).

Any location with a scheme is remote: the phase cache builds into a node-local
copy, uploads with ``record.json`` last and downloads hits; trial records, the
study file and the event log go through :mod:`study.io.storage`. No network.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from study.io import layout, storage
from study.cache.store import EVENTS_FILE, LOCAL_CACHE_ENV, ArtifactCache, artifact_key, default_local_root
from study.errors import UserError
from trainables.phases.artifacts import file_manifest

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def uri(path: Path) -> str:
    return path.resolve().as_uri()  # file:///...


def _builder(calls: list, files: dict[str, str] | None = None):
    """A phase that writes ``files`` and its record into a temporary folder, then renames it into place."""

    def build(out: Path) -> None:
        calls.append(out)
        tmp = out.with_name(f".{out.name}.tmp")
        (tmp / "encoder").mkdir(parents=True)
        for name, text in (files or {"encoder/weights.bin": "w" * 1000, "metrics.json": '{"ua": 0.5}'}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        (tmp / "record.json").write_text(json.dumps({"phase": "tapt", "calls": len(calls), "files": file_manifest(tmp)}))
        tmp.rename(out)

    return build


# -- storage.py


def test_text_files_round_trip_list_and_delete(tmp_path):
    root = uri(tmp_path / "bucket" / "study")
    assert storage.is_uri(root) and not storage.is_uri(tmp_path)
    target = storage.join(root, "trials", "t1.json")
    assert target == f"{root}/trials/t1.json"
    with pytest.raises(FileNotFoundError):
        storage.read_text(target)
    assert not storage.exists(target) and not storage.is_file(target)
    storage.write_text(target, "one")  # parents created where the filesystem has folders
    storage.write_text(target, "two")  # overwritten in place (temporary file renamed over it)
    storage.write_text(storage.join(root, "trials", "t2.json"), "three")
    storage.write_text(storage.join(root, "trials", "note.txt"), "x")
    assert storage.read_text(target) == "two" and storage.is_file(target) and storage.exists(storage.join(root, "trials"))
    assert storage.list_files(storage.join(root, "trials"), suffix=".json") == [target, storage.join(root, "trials", "t2.json")]
    assert not [p for p in (tmp_path / "bucket" / "study" / "trials").iterdir() if p.name.startswith(".")]  # no temporary left
    assert storage.list_files(storage.join(root, "missing")) == []
    assert storage.read_texts(storage.list_files(storage.join(root, "trials"), suffix=".json")) == ["two", "three"]
    storage.delete(target)
    storage.delete(storage.join(root, "trials"))
    storage.delete(storage.join(root, "trials"))  # nothing there: no error
    assert not storage.exists(storage.join(root, "trials"))


def test_uris_are_joined_before_the_query_and_repaired_after_path_mangling():
    assert storage.join("s3://bucket/prefix/", "cache", "tapt") == "s3://bucket/prefix/cache/tapt"
    assert storage.join("s3://bucket/p?region=eu-west-1", "trials", "a b.json") == "s3://bucket/p/trials/a%20b.json?region=eu-west-1"
    assert storage.normalize(Path("s3://bucket/prefix")) == "s3://bucket/prefix"  # Path() folds the // away
    assert storage.normalize(Path("file:///tmp/study")) == "file:///tmp/study"
    assert storage.name("s3://bucket/p/study.yaml") == "study.yaml"
    assert layout.trial_record("s3://bucket/p", "t1") == "s3://bucket/p/trials/t1.json"
    assert layout.own_cache_dir(Path("s3://bucket/p")) == "s3://bucket/p/cache"
    assert layout.report_dir("/tmp/study") == Path("/tmp/study/report")  # local stays a Path
    assert layout.is_remote("file:///tmp/s") and not layout.is_remote("/tmp/s")


def test_an_upload_sends_the_marker_file_last_and_not_at_all_if_another_fails(tmp_path, monkeypatch):
    local = tmp_path / "artifact"
    (local / "encoder").mkdir(parents=True)
    for name in ("a.bin", "encoder/b.bin", "record.json", "z.bin"):
        (local / name).write_text(name)
    order: list[str] = []
    real = pafs.copy_files

    def recording(source, destination, **kwargs):
        order.append(Path(destination).name)
        return real(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", recording)
    remote = uri(tmp_path / "remote" / "artifact")
    assert storage.upload_tree(local, remote, last=["record.json"]) == 4
    assert order[-1] == "record.json" and sorted(order) == ["a.bin", "b.bin", "record.json", "z.bin"]

    def failing(source, destination, **kwargs):
        if Path(destination).name == "z.bin":
            raise OSError("connection reset")
        return real(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", failing)
    again = uri(tmp_path / "remote" / "again")
    with pytest.raises(OSError, match="connection reset"):
        storage.upload_tree(local, again, last=["record.json"])
    assert not storage.exists(storage.join(again, "record.json"))
    monkeypatch.setattr(pafs, "copy_files", real)

    copy = tmp_path / "copy"
    copy.mkdir()
    assert storage.download_tree(remote, copy) == 4
    assert (copy / "encoder" / "b.bin").read_text() == "encoder/b.bin" and (copy / "record.json").is_file()
    with pytest.raises(FileNotFoundError):
        storage.download_tree(uri(tmp_path / "remote" / "nothing"), tmp_path / "empty")


# -- the phase cache on a remote root


def test_a_remote_artifact_is_built_uploaded_and_downloaded_once_by_another_node(tmp_path):
    root = uri(tmp_path / "bucket" / "cache")
    calls: list[Path] = []
    node_a = ArtifactCache(root, local_dir=tmp_path / "node_a")
    key, path_a = node_a.get_or_build("tapt", {"fold": 1}, _builder(calls))
    assert path_a == tmp_path / "node_a" / "tapt" / key and (path_a / "encoder" / "weights.bin").is_file()
    remote = tmp_path / "bucket" / "cache" / "tapt" / key
    assert sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()) == ["encoder/weights.bin", "metrics.json", "record.json"]

    node_b = ArtifactCache(root, local_dir=tmp_path / "node_b")
    key_b, path_b = node_b.get_or_build("tapt", {"fold": 1}, _builder(calls))
    assert key_b == key and len(calls) == 1
    assert path_b == tmp_path / "node_b" / "tapt" / key  # phases only ever get local paths
    assert (path_b / "encoder" / "weights.bin").read_text() == "w" * 1000
    assert not [p for p in path_b.parent.iterdir() if p.name.startswith(".")]  # the download's temporary was renamed
    node_b.get_or_build("tapt", {"fold": 1}, _builder(calls))  # already on node b: no second download
    assert node_b.fetch("tapt", key) == path_b and node_b.fetch("tapt", "0" * 20) is None

    events = ArtifactCache(root).events()
    assert [(e["phase"], e["key"], e["event"]) for e in events] == [("tapt", key, "built"), ("tapt", key, "hit"), ("tapt", key, "hit")]
    assert "upload_seconds" in events[0] and "downloaded_seconds" in events[1] and "downloaded_seconds" not in events[2]
    assert len(list((tmp_path / "bucket" / "cache" / "events").glob("*.json"))) == 3


def test_the_node_local_cache_defaults_to_a_folder_per_remote_root(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCAL_CACHE_ENV, str(tmp_path / "node"))
    one, two = ArtifactCache(uri(tmp_path / "one")), ArtifactCache(uri(tmp_path / "two"))
    assert one.local_root.parent == tmp_path / "node" and one.local_root != two.local_root
    assert one.local_root == default_local_root(uri(tmp_path / "one") + "/")
    monkeypatch.delenv(LOCAL_CACHE_ENV)
    assert default_local_root("s3://b/p").parent == Path("~/.cache/ser-study").expanduser()
    assert ArtifactCache(tmp_path / "local").local_root == tmp_path / "local"  # a local root is its own copy


def test_a_crash_mid_upload_never_looks_complete(tmp_path, monkeypatch):
    root = uri(tmp_path / "bucket" / "cache")
    calls: list[Path] = []
    real_upload = storage.upload_tree

    def crash_before_record(local_dir, destination, last=()):
        for file in Path(local_dir).rglob("*"):
            if file.is_file() and file.name not in last:
                storage.write_bytes(storage.join(destination, file.relative_to(local_dir).as_posix()), file.read_bytes())
        raise OSError("node lost")

    monkeypatch.setattr(storage, "upload_tree", crash_before_record)
    crashed = ArtifactCache(root, local_dir=tmp_path / "node_a")
    with pytest.raises(OSError, match="node lost"):
        crashed.get_or_build("tapt", {"fold": 1}, _builder(calls))
    key = artifact_key("tapt", {"fold": 1})
    remote = tmp_path / "bucket" / "cache" / "tapt" / key
    assert (remote / "metrics.json").is_file() and not (remote / "record.json").exists()
    monkeypatch.setattr(storage, "upload_tree", real_upload)

    other = ArtifactCache(root, local_dir=tmp_path / "node_b")
    assert other.fetch("tapt", key) is None
    other.get_or_build("tapt", {"fold": 1}, _builder(calls))  # not complete: built again and published
    assert len(calls) == 2 and json.loads((remote / "record.json").read_text())["calls"] == 2

    # The crashed node's own complete copy is published again rather than rebuilt.
    (remote / "record.json").unlink()
    crashed.get_or_build("tapt", {"fold": 1}, _builder(calls))
    assert len(calls) == 2 and json.loads((remote / "record.json").read_text())["calls"] == 1
    built = [e for e in ArtifactCache(root).events() if e["event"] == "built"]
    assert len(built) == 2 and built[-1].get("reuploaded") is True


def test_a_corrupt_remote_artifact_is_deleted_and_rebuilt(tmp_path):
    root = uri(tmp_path / "bucket" / "cache")
    calls: list[Path] = []
    key, _ = ArtifactCache(root, local_dir=tmp_path / "node_a").get_or_build("tapt", {"x": 1}, _builder(calls))
    remote = tmp_path / "bucket" / "cache" / "tapt" / key
    (remote / "record.json").write_text("{not json")
    _, path = ArtifactCache(root, local_dir=tmp_path / "node_b").get_or_build("tapt", {"x": 1}, _builder(calls))
    assert len(calls) == 2 and json.loads((remote / "record.json").read_text())["calls"] == 2
    assert (path / "record.json").is_file()


def test_a_corrupt_node_local_copy_is_moved_aside_and_downloaded_again(tmp_path):
    root = uri(tmp_path / "bucket" / "cache")
    calls: list[Path] = []
    cache = ArtifactCache(root, local_dir=tmp_path / "node")
    key, path = cache.get_or_build("tapt", {"x": 1}, _builder(calls))
    (path / "record.json").write_text("{not json")
    assert cache.get_or_build("tapt", {"x": 1}, _builder(calls)) == (key, path)
    assert len(calls) == 1 and json.loads((path / "record.json").read_text())["calls"] == 1
    assert list(path.parent.glob(f"{key}.corrupt-*"))
    assert [e["event"] for e in cache.events()] == ["built", "corrupt", "hit"]


def test_a_remote_artifact_whose_files_do_not_match_its_record_is_deleted_and_rebuilt(tmp_path):
    root = uri(tmp_path / "bucket" / "cache")
    calls: list[Path] = []
    key, _ = ArtifactCache(root, local_dir=tmp_path / "node_a").get_or_build("tapt", {"x": 1}, _builder(calls))
    remote = tmp_path / "bucket" / "cache" / "tapt" / key
    (remote / "encoder" / "weights.bin").write_text("w" * 999)  # damaged in the bucket; the record still parses
    _, path = ArtifactCache(root, local_dir=tmp_path / "node_b").get_or_build("tapt", {"x": 1}, _builder(calls))
    assert len(calls) == 2 and (path / "encoder" / "weights.bin").read_text() == "w" * 1000
    assert json.loads((remote / "record.json").read_text())["calls"] == 2 and (remote / "encoder" / "weights.bin").read_text() == "w" * 1000
    events = [e["event"] for e in ArtifactCache(root).events()]
    assert events == ["built", "corrupt", "corrupt", "built"]  # node b's download moved aside, then the remote copy deleted


def test_events_of_a_local_cache_are_one_file_each_and_old_logs_still_count(tmp_path):
    (tmp_path / EVENTS_FILE).write_text(json.dumps({"phase": "tapt", "key": "old", "event": "built"}) + "\n")
    cache = ArtifactCache(tmp_path)
    calls: list[Path] = []
    key, path = cache.get_or_build("tapt", {"x": 2}, _builder(calls))
    cache.get_or_build("tapt", {"x": 2}, _builder(calls))
    assert path == tmp_path / "tapt" / key and len(calls) == 1
    assert [(e["key"], e["event"]) for e in cache.events()] == [("old", "built"), (key, "built"), (key, "hit")]
    assert len(list((tmp_path / "events").glob("*.json"))) == 2


# -- trial records and the study directory


def test_trial_records_round_trip_on_a_remote_study_dir(tmp_path):
    from study.io.records import load_record, save_record, read_trial_records

    study_dir = uri(tmp_path / "bucket" / "study")
    assert read_trial_records(study_dir) == [] and load_record(study_dir, "t1") is None
    save_record(study_dir, {"trial_id": "t2", "status": "complete", "started": 2.0})
    save_record(study_dir, {"trial_id": "t1", "status": "partial", "started": 1.0})
    save_record(study_dir, {"trial_id": "t1", "status": "complete", "started": 1.0})
    assert (tmp_path / "bucket" / "study" / "trials" / "t1.json").is_file()
    assert load_record(study_dir, "t1")["status"] == "complete"
    assert [(r["trial_id"], r["status"]) for r in read_trial_records(study_dir)] == [("t1", "complete"), ("t2", "complete")]


def _remote_config(study_dir: str, manifest: Path, encoder: Path):
    from study.config.loading import load_study

    return load_study(SMOKE, [f"storage.study_dir={study_dir}", "storage.mlflow_uri=http://127.0.0.1:5000",
                              f"data.manifest={manifest}", f"encoder={encoder}"])


def test_a_remote_study_dir_is_prepared_through_pyarrow_and_given_to_tune_unchanged(tmp_path, small_manifest, tiny_encoder):
    from study.config.loading import load_resolved_study
    from study.tune.runner import _tune_storage_path, prepare_study_dir, resume_study

    study_dir = uri(tmp_path / "bucket" / "study")
    config = _remote_config(study_dir, small_manifest, tiny_encoder)
    assert prepare_study_dir(config) == study_dir
    assert (tmp_path / "bucket" / "study" / "study.yaml").is_file()
    assert not [p for p in (tmp_path / "bucket" / "study").iterdir() if p.name.startswith(".")]  # the write probe is gone
    assert load_resolved_study(study_dir).storage.study_dir == study_dir
    assert _tune_storage_path(study_dir) == study_dir and _tune_storage_path(tmp_path) == str(tmp_path.resolve())
    (tmp_path / "bucket" / "study" / "tune").mkdir()
    (tmp_path / "bucket" / "study" / "tune" / "experiment_state.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a study"):
        prepare_study_dir(config)
    with pytest.raises(UserError, match="study.yaml is missing"):
        resume_study(uri(tmp_path / "bucket" / "elsewhere"))


def test_tune_finds_no_state_to_restore_in_an_empty_remote_dir(tmp_path):
    from ray import tune

    assert not tune.Tuner.can_restore(storage.join(uri(tmp_path), "tune"))


def test_a_fold_chain_on_a_remote_cache_is_reused_by_another_node(small_utterances, tiny_encoder, tmp_path):
    """Real phases: node b finds every phase of node a's chain, downloads them and gets the same scores."""
    from study.cache.chain import FoldChain, run_fold_chain
    from trainables.executors import LocalExecutor
    from trainables.config import smoke_settings
    from trainables.data.folds import FoldProtocol

    base = smoke_settings(epochs=1)
    settings = replace(base, kmeans=replace(base.kmeans, max_fit_frames=5000, n_init=1))
    root = uri(tmp_path / "bucket" / "cache")
    candidate = {"layer": 2, "clusters": 4, "mask_ratio": 0.2, "pooling": "average"}
    classes = ("neu", "hap", "ang", "sad")

    def run(node: str):
        cache = ArtifactCache(root, local_dir=tmp_path / node)
        return run_fold_chain(FoldChain(small_utterances, 2, FoldProtocol(), "alignment", candidate, settings, str(tiny_encoder), classes), cache, LocalExecutor())

    first = run("node_a")
    assert first.built == ["tapt", "embeddings", "clustering", "cpt", "finetune"]
    again = run("node_b")
    assert again.built == [] and again.test == first.test and again.artifacts == first.artifacts
    assert sorted(p.name for p in (tmp_path / "node_b").iterdir()) == ["clustering", "cpt", "embeddings", "finetune", "tapt"]
    events = ArtifactCache(root).events()
    assert [e["event"] for e in events].count("built") == 5 and [e["event"] for e in events].count("hit") == 5
