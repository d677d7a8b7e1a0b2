"""The study file: shipped examples, overrides, resolution of paths, and refused inputs naming their field."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from study.config.base import StudyConfigError
from study.config.loading import apply_overrides, load_resolved_study, load_study, parse_study, shipped_studies
from study.config.space import Choice, FloatRange, IntRange
from study.config.study import StudyConfig
from study.errors import UserError
from trainables.data.folds import Validation
from trainables.config import KMeansSettings, PhaseSettings, hubert_settings, smoke_settings
from trainables.data.folds import FoldProtocol
from trainables.config import RayResources

SHIPPED = shipped_studies()


def smoke_raw() -> dict:
    return yaml.safe_load(SHIPPED["smoke"].read_text())


def parse_raw(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    return parse_study(yaml.safe_dump(raw), "bad.yaml", overrides)


# ----------------------------------------------------------------------------
# The shipped study files
# ----------------------------------------------------------------------------


def test_three_study_files_are_shipped():
    assert {"smoke", "paper_grid", "tpe"} <= set(SHIPPED)


@pytest.mark.parametrize("name", ["smoke", "paper_grid", "tpe"])
def test_shipped_file_loads_and_round_trips(name, tmp_path):
    config = load_study(SHIPPED[name])
    assert config.name == name
    assert config.source == str(SHIPPED[name])
    assert isinstance(config.phase_settings(), PhaseSettings)
    assert isinstance(config.protocol(), FoldProtocol) and config.protocol().strict
    assert isinstance(config.ray_resources(), RayResources)
    again = parse_study(config.to_yaml(), "resolved.yaml")
    assert again.model_dump() == config.model_dump()
    (tmp_path / "study.yaml").write_text(config.to_yaml())
    assert load_resolved_study(tmp_path).model_dump() == config.model_dump()


def test_smoke_file():
    config = load_study(SHIPPED["smoke"])
    space = config.search.space
    assert config.folds == [1, 2]
    assert space.layer == Choice[int](choice=[1, 2]) and space.mask_ratio == 0.2
    assert config.search.algorithm == "tpe" and config.num_trials() == 3 and space.grid_size() == 8
    assert config.search.max_concurrent == 1 and config.resources.executor == "local"
    assert config.phases.preset == "smoke" and config.phase_settings() == smoke_settings()
    assert config.embedding_layers() == [1, 2]
    assert config.objective.metric == "val_ua_mean" and config.objective.mode == "max"


def test_paper_grid_file():
    config = load_study(SHIPPED["paper_grid"])
    assert config.search.algorithm == "grid" and config.search.num_trials is None
    assert config.num_trials() == 18 == config.search.space.grid_size()
    assert config.search.space.grid("alignment") == {"layer": [6, 9, 11], "clusters": [50, 100, 150], "mask_ratio": [0.2], "pooling": ["attention", "average"]}
    assert config.encoder == "facebook/hubert-base-ls960" and config.folds == "all"
    assert config.phase_settings().kmeans.backend == "cuml"
    resources = config.ray_resources()
    assert config.resources.executor == "ray" and resources.gpus_per_worker == 1 and resources.kmeans_gpus == 1
    assert config.phase_settings() == replace(hubert_settings(), kmeans=KMeansSettings(backend="cuml"))


def test_tpe_file():
    config = load_study(SHIPPED["tpe"])
    space = config.search.space
    assert isinstance(space.layer, IntRange) and space.layer.bounds == (1, 12)
    assert isinstance(space.clusters, IntRange) and space.clusters.log
    assert isinstance(space.mask_ratio, FloatRange) and space.mask_ratio.bounds == (0.05, 0.8)
    assert config.num_trials() == 60 and config.search.early_stopping == "median"
    assert space.grid("alignment") is None and space.grid_size() is None
    assert config.embedding_layers() == list(range(1, 13))


# ----------------------------------------------------------------------------
# Overrides and resolution
# ----------------------------------------------------------------------------


def test_overrides_set_values_of_any_type():
    config = load_study(
        SHIPPED["smoke"],
        [
            "search.num_trials=5",
            "search.space.layer={choice: [0, 3]}",
            "search.space.clusters={int: [2, 16], log: true}",
            "search.space.mask_ratio=0.3",
            "folds=1,3",
            "phases.epochs=2",
            "phases.tapt.train.epochs=3",
            "phases.cpt.span=4",
            "phases.kmeans.n_init=1",
            "protocol.validation=train_speaker",
            "resources.train.workers=2",
        ],
    )
    assert config.num_trials() == 5
    assert config.search.space.layer.choice == [0, 3]
    assert config.search.space.clusters == IntRange.model_validate({"int": [2, 16], "log": True})
    assert config.search.space.mask_ratio == 0.3
    assert config.folds == [1, 3]
    settings = config.phase_settings()
    assert settings.tapt.train.epochs == 3  # the phase's own setting wins over phases.epochs
    assert settings.cpt.train.epochs == 2 and settings.finetune.train.epochs == 2
    assert settings.cpt.span == 4 and settings.kmeans.n_init == 1
    assert settings.tapt.train.lr == smoke_settings().tapt.train.lr  # the rest stays the preset's
    assert config.protocol().validation is Validation.TRAIN_SPEAKER
    assert config.ray_resources().workers == 2


def test_override_of_a_fixed_parameter_by_a_choice_and_back():
    config = load_study(SHIPPED["smoke"], ["search.space.mask_ratio.choice=[0.1, 0.2]"])
    assert config.search.space.mask_ratio.choice == [0.1, 0.2]
    assert load_study(SHIPPED["smoke"], ["search.space.pooling=attention"]).search.space.pooling == "attention"


def test_only_written_phase_overrides_are_saved():
    config = load_study(SHIPPED["smoke"], ["phases.tapt.train.patience=2"])
    saved = yaml.safe_load(config.to_yaml())
    assert saved["phases"]["tapt"] == {"train": {"patience": 2}}
    assert parse_study(config.to_yaml()).phase_settings().tapt.train.patience == 2


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo" / "encoder").mkdir(parents=True)
    config = load_study(SHIPPED["smoke"], ["data.manifest=mine.csv"])
    assert config.data.manifest == str(tmp_path / "mine.csv")
    assert config.encoder == str(tmp_path / "demo" / "encoder")  # an existing directory is a path
    assert config.storage.study_dir == str(tmp_path / "studies" / "smoke")
    assert config.tracking_uri() == f"sqlite:///{tmp_path / 'studies' / 'smoke' / 'mlflow.db'}"


def test_defaults_of_a_minimal_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "name: mini\ndata: {manifest: m.csv}\nencoder: org/model\nsearch: {space: {layer: 1, clusters: 8, mask_ratio: 0.2, pooling: average}, num_trials: 1}\n"
    config = parse_study(text, "mini.yaml")
    assert config.encoder == "org/model"  # not an existing path: a hub id, kept as given
    assert config.folds == "all" and config.phases.preset == "hubert"
    assert config.storage.study_dir == str(tmp_path / "studies" / "mini")
    assert config.search.max_concurrent == 2 and config.search.early_stopping == "none" and config.search.reuse_actors is True
    assert config.resources.cpus_per_fold == 1 and config.resources.gpus_per_fold == 0
    assert config.search.space.grid_size() == 1


def test_a_parameter_left_out_takes_its_methods_default():
    raw = smoke_raw()
    raw["search"]["space"].pop("pooling")
    config = parse_raw(raw)
    assert config.search.space.method_params("alignment")["pooling"] == "attention"  # alignment's default
    assert config.search.space.grid_size() == 4  # layer x clusters; pooling fixed


def test_methods_sample_only_their_own_parameters():
    config = load_study(SHIPPED["smoke"], ["search.space.method={choice: [alignment, finetune]}", "search.algorithm=grid", "search.num_trials=null"])
    space = config.search.space
    assert space.methods() == ["alignment", "finetune"]
    assert space.method_params("finetune") == {"pooling": space.pooling}  # layer, clusters and mask_ratio are alignment's
    assert config.num_trials() == space.grid_size() == 8 + 2  # the sum of the methods' grids, not their product
    finetune = [c for c in space.candidates() if c["method"] == "finetune"]
    assert finetune == [{"method": "finetune", "pooling": "attention"}, {"method": "finetune", "pooling": "average"}]  # no duplicate per layer or K
    restricted = load_study(SHIPPED["smoke"], ["search.space.method=finetune", "search.algorithm=grid", "search.num_trials=null"])
    assert restricted.search.space.methods() == ["finetune"] and restricted.num_trials() == 2  # --set restricts the study to one method
    assert restricted.search.space.ignored() == ["layer", "clusters", "mask_ratio"]  # alignment's, set aside with a warning
    own = load_study(SHIPPED["smoke"], ["search.space.method={choice: [alignment, finetune]}", "search.space.finetune={pooling: average}"])
    assert own.search.space.method_params("finetune") == {"pooling": "average"} and own.search.space.method_params("alignment")["pooling"] == own.search.space.pooling
    assert parse_study(own.to_yaml()).search.space.method_params("finetune") == {"pooling": "average"}  # the resolved file keeps the section


def test_baselines_and_seeds_are_read_and_checked():
    config = load_study(SHIPPED["smoke"], ["study.seeds=[0, 1, 2]"])
    assert config.baselines == ["finetune", "tapt", "egemaps"] and config.study.seeds == [0, 1, 2]


def test_object_storage_study_dir_with_mlflow_server():
    config = load_study(SHIPPED["paper_grid"], ["storage.study_dir=s3://bucket/studies/grid/", "storage.mlflow_uri=http://127.0.0.1:5000"])
    assert config.storage.study_dir == "s3://bucket/studies/grid" and config.storage.is_remote
    assert config.tracking_uri() == "http://127.0.0.1:5000"


def test_local_mlflow_directory_becomes_sqlite(tmp_path):
    config = load_study(SHIPPED["smoke"], [f"storage.mlflow_uri={tmp_path / 'store'}"])
    assert config.tracking_uri() == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def test_test_metric_objective_is_allowed_with_a_warning(caplog):
    config = load_study(SHIPPED["smoke"], ["objective.metric=test_ua_mean"])
    assert config.objective.metric == "test_ua_mean"
    assert "optimistic" in caplog.text


def test_apply_overrides_creates_missing_sections():
    data = apply_overrides({"name": "x"}, ["phases.tapt.train.epochs=2", "storage.mlflow_uri="])
    assert data == {"name": "x", "phases": {"tapt": {"train": {"epochs": 2}}}, "storage": {"mlflow_uri": None}}


# ----------------------------------------------------------------------------
# Refused inputs: each message names the file, the field and what is allowed
# ----------------------------------------------------------------------------


def _edit(path: str, value):
    def edit(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _rename_section(raw: dict) -> None:
    raw["serach"] = raw.pop("search")


BAD_FILES = {
    "unknown field": (_edit("search.num_trails", 3), ["search.num_trails", "unknown field", "num_trials", "max_concurrent"]),
    "typo'd section": (_rename_section, ["serach", "unknown field", "'search'", "search: is required"]),
    "unknown key in a range": (_edit("search.space.clusters", {"int": [2, 8], "logg": True}), ["search.space.clusters.logg", "log, step"]),
    "empty choice": (_edit("search.space.pooling", {"choice": []}), ["search.space.pooling.choice", "at least 1 item"]),
    "repeated choice": (_edit("search.space.clusters", {"choice": [4, 4]}), ["search.space.clusters.choice", "more than once"]),
    "low >= high": (_edit("search.space.layer", {"int": [5, 2]}), ["search.space.layer", "low < high"]),
    "unknown pooling": (_edit("search.space.pooling", {"choice": ["attention", "max"]}), ["search.space.pooling", "'max'", "attention, average"]),
    "mask ratio 1.5": (_edit("search.space.mask_ratio", 1.5), ["search.space.mask_ratio", "1.5", "between 0 and 1"]),
    "one cluster": (_edit("search.space.clusters", 1), ["search.space.clusters", "at least 2"]),
    "negative layer": (_edit("search.space.layer", {"choice": [-1, 2]}), ["search.space.layer", "-1", ">= 0"]),
    "bare list": (_edit("search.space.layer", [1, 2]), ["search.space.layer", "{choice: [1, 2]}"]),
    "range for pooling": (_edit("search.space.pooling", {"int": [1, 2]}), ["search.space.pooling", "not allowed", "{choice: [...]}"]),
    "tpe without num_trials": (lambda raw: raw["search"].pop("num_trials"), ["search.num_trials", "required with algorithm tpe"]),
    "grid with float range": (
        lambda raw: raw["search"].update(algorithm="grid", num_trials=None, space={**raw["search"]["space"], "mask_ratio": {"float": [0.1, 0.3]}}),
        ["search.space.mask_ratio", "float range", "algorithm grid", "choice"],
    ),
    "num_trials > grid size": (_edit("search.algorithm", "grid"), None),  # filled below: num_trials 9 > 8 points
    "unknown algorithm": (_edit("search.algorithm", "random"), ["search.algorithm", "'tpe' or 'grid'"]),
    "unknown validation": (_edit("protocol.validation", "speaker"), ["protocol.validation", "stratified", "train_speaker", "test_session_speaker"]),
    "val_fraction 0": (_edit("protocol.val_fraction", 0), ["protocol.val_fraction", "greater than 0"]),
    "bad test-session speaker": (
        lambda raw: raw["protocol"].update(validation="test_session_speaker", val_speaker="Ses01F"),
        ["protocol.val_speaker", "F or M"],
    ),
    "s3 without mlflow_uri": (_edit("storage.study_dir", "s3://bucket/studies/smoke"), ["storage.mlflow_uri", "s3://bucket/studies/smoke", "required"]),
    "bad folds": (_edit("folds", [0, 2]), ["folds", "[0]", "session"]),
    "unknown objective": (_edit("objective.metric", "val_acc"), ["objective.metric", "val_ua_mean", "test_wa_mean"]),
    "unknown method": (_edit("search.space.method", "alignmnet"), ["search.space.method", "unknown method 'alignmnet'", "alignment, egemaps, finetune, gmp_tl, metadata, tapt"]),
    "parameter of no method": (_edit("search.space.clustres", 8), ["search.space.clustres", "no method has such a parameter", "clusters, layer, mask_ratio, pooling", "did you mean 'clusters'"]),
    "parameter the method lacks": (_edit("search.space.finetune", {"layer": 2}), ["search.space.finetune.layer", "method finetune has no parameter 'layer'", "its parameters: pooling"]),
    "section value of the wrong form": (_edit("search.space.alignment", {"clusters": {"choice": []}}), ["search.space.alignment.clusters.choice", "at least 1 item"]),
    "unknown baseline": (_edit("baselines", ["finetune", "wav2vec"]), ["baselines", "'wav2vec'", "finetune, tapt, egemaps"]),
    "no seeds": (_edit("study", {"seeds": []}), ["study.seeds", "at least 1"]),
    "bad phase value": (_edit("phases.tapt", {"train": {"epochs": 0}}), ["phases.tapt.train", "epochs must be at least 1"]),
    "unknown phase field": (_edit("phases.cpt", {"spna": 3}), ["phases.cpt.spna", "unknown field", "span"]),
    "unknown preset": (_edit("phases.preset", "large"), ["phases.preset", "'hubert' or 'smoke'"]),
    "cuml without a GPU": (_edit("phases.kmeans", {"backend": "cuml"}), ["phases.kmeans.backend", "gpus_per_fold"]),
    "K above the k-means sample": (_edit("search.space.clusters", 60000), ["phases.kmeans.max_fit_frames", "50000", "search.space.clusters (60000)"]),
    "no Ray Train workers": (_edit("resources.train", {"workers": 0}), ["resources.train.workers", "at least 1"]),
    "unknown executor": (_edit("resources.executor", "slurm"), ["resources.executor", "'local' or 'ray'"]),
    "bad name": (_edit("name", "my study"), ["name", "letters, digits"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_study_file_is_refused_naming_the_field(case):
    edit, expected = BAD_FILES[case]
    raw = smoke_raw()
    edit(raw)
    if case == "num_trials > grid size":
        raw["search"]["num_trials"] = 9
        expected = ["search.num_trials", "9", "8 points"]
    with pytest.raises(StudyConfigError) as info:
        parse_raw(raw)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert message.startswith("bad.yaml: ")
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"


def test_several_problems_are_reported_together():
    raw = smoke_raw()
    raw["search"]["space"]["mask_ratio"] = 1.5
    raw["search"]["seeed"] = 1
    with pytest.raises(StudyConfigError, match="2 problems") as info:
        parse_raw(raw)
    assert "search.space.mask_ratio" in str(info.value) and "search.seeed" in str(info.value)


def test_repeated_yaml_key_is_refused():
    text = SHIPPED["smoke"].read_text() + "\nname: again\n"
    with pytest.raises(StudyConfigError, match="'name' twice"):
        parse_study(text, "twice.yaml")


def test_actor_reuse_can_be_turned_off_for_very_long_studies():
    assert load_study(SHIPPED["tpe"], ["search.reuse_actors=false"]).search.reuse_actors is False
    with pytest.raises(StudyConfigError, match=r"search\.reuse_actors"):
        load_study(SHIPPED["tpe"], ["search.reuse_actors=sometimes"])


def test_invalid_value_from_an_override_names_the_override():
    with pytest.raises(StudyConfigError, match=r"search\.space\.mask_ratio: .*\(from --set search\.space\.mask_ratio=1\.5\)"):
        load_study(SHIPPED["smoke"], ["search.space.mask_ratio=1.5"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("search.num_trials", ["expected FIELD=VALUE", "--set search.num_trials=10"]),
        ("=3", ["expected FIELD=VALUE"]),
        ("search..seed=1", ["expected FIELD=VALUE"]),
        ("search.space.layr=3", ["search.space.layr", "unknown field", "clusters, layer, mask_ratio, pooling", "'layer'"]),
        ("serach.seed=1", ["serach", "allowed in the top level", "'search'"]),
        ("name.first=x", ["name is a value, not a section"]),
        ("search.seed=[1", ["not valid YAML"]),
    ],
)
def test_bad_override_is_refused(override, expected):
    with pytest.raises(StudyConfigError) as info:
        load_study(SHIPPED["smoke"], [override])
    message = str(info.value)
    assert message.startswith(str(SHIPPED["smoke"]))
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"


def test_missing_study_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(StudyConfigError, match="not found.*smoke.yaml"):
        load_study(tmp_path / "nope.yaml")


def test_study_file_must_be_a_mapping():
    with pytest.raises(StudyConfigError, match="YAML mapping"):
        parse_study("- a\n- b\n", "list.yaml")


def test_missing_resolved_study(tmp_path):
    with pytest.raises(StudyConfigError, match="study directory"):
        load_resolved_study(tmp_path)


# ----------------------------------------------------------------------------
# check_inputs: the data, the encoder and the space against both, before Ray
# ----------------------------------------------------------------------------


def inputs_config(manifest: Path, encoder: Path, *overrides: str) -> StudyConfig:
    return load_study(SHIPPED["smoke"], [f"data.manifest={manifest}", f"encoder={encoder}", *overrides])


def test_check_inputs_accepts_the_small_corpus(small_manifest, tiny_encoder):
    config = inputs_config(small_manifest, tiny_encoder)
    inputs = config.check_inputs()
    assert inputs.folds == [1, 2] and inputs.encoder.num_layers == 3
    assert set(inputs.fit_frames) == {1, 2} and min(inputs.fit_frames.values()) > 100
    assert config.fold_sessions(inputs.utterances) == [1, 2]
    assert config.classes(inputs.utterances) == ("neu", "hap", "ang", "sad")
    meta = config.report_metadata(inputs.utterances)
    assert meta["objective"] == {"metric": "val_ua_mean", "mode": "max"} and meta["protocol"]["strict"] is True
    from study.tracking.runs import trial_tags

    tags = trial_tags(config, inputs.utterances, {"method": "gmp_tl", "reconstructed": True})
    assert tags["strict"] == "true" and tags["method"] == "gmp_tl" and tags["reconstructed"] == "true"


def test_check_inputs_all_folds(small_manifest, tiny_encoder):
    inputs = inputs_config(small_manifest, tiny_encoder, "folds=all").check_inputs()
    assert inputs.folds == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["search.space.layer={choice: [1, 4]}"], ["search.space.layer=4", "3 transformer layers", "0..3"]),
        (["search.space.layer={int: [1, 8]}"], ["search.space.layer=8"]),
        (["folds=[1, 7]"], ["folds", "[7]", "sessions present: [1, 2, 3, 4, 5]"]),
        (["search.space.clusters=20000"], ["search.space.clusters", "K=20000", "frames"]),
        (["protocol.validation=train_speaker", "protocol.val_speaker=Ses09F"], ["protocol", "Ses09F"]),
    ],
)
def test_check_inputs_refuses_naming_the_field(small_manifest, tiny_encoder, overrides, expected):
    config = inputs_config(small_manifest, tiny_encoder, *overrides)
    with pytest.raises(StudyConfigError) as info:
        config.check_inputs()
    message = str(info.value)
    assert message.startswith(str(SHIPPED["smoke"]))
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"


def test_check_inputs_missing_manifest(tmp_path, tiny_encoder):
    config = inputs_config(tmp_path / "missing.csv", tiny_encoder)
    with pytest.raises(StudyConfigError, match=r"data\.manifest: .*does not exist.*--set data\.manifest=PATH"):
        config.check_inputs()


def test_check_inputs_missing_encoder(small_manifest, tmp_path):
    config = inputs_config(small_manifest, tmp_path / "no-encoder")
    with pytest.raises(StudyConfigError, match=r": encoder: cannot read the encoder config"):
        config.check_inputs()


def test_resolved_config_is_independent_of_the_working_directory(small_manifest, tiny_encoder, tmp_path, monkeypatch):
    config = inputs_config(small_manifest, tiny_encoder)
    (tmp_path / "study.yaml").write_text(config.to_yaml())
    monkeypatch.chdir(tmp_path)
    again = load_resolved_study(tmp_path)
    assert again.model_dump() == copy.deepcopy(config.model_dump())
    assert again.check_inputs().folds == [1, 2]


def test_a_hub_encoder_is_pinned_to_its_commit_which_enters_the_cache_keys(tmp_path):
    from trainables.models.encoder import resolve_hub_revision, split_revision, with_revision
    from trainables.phases.artifacts import encoder_fingerprint

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert resolve_hub_revision("facebook/hubert-base-ls960", commit) == commit  # a commit needs no hub
    ref = with_revision("facebook/hubert-base-ls960", commit)
    assert split_revision(ref) == ("facebook/hubert-base-ls960", commit)
    other = with_revision("facebook/hubert-base-ls960", "f" * 40)
    assert encoder_fingerprint(ref) != encoder_fingerprint(other) != encoder_fingerprint("facebook/hubert-base-ls960")
    local = tmp_path / "enc@v2"
    local.mkdir()
    assert split_revision(local) == (str(local), None)  # a local directory is never split at its '@'

    config = load_study(SHIPPED["smoke"], [f"encoder={ref.split('@')[0]}", f"encoder_revision={commit}"])
    assert config.is_hub_encoder() and config.encoder_ref() == ref


def test_an_unreachable_hub_encoder_is_refused_with_the_pin_to_give(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the hub: nothing in its cache either
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from trainables.models.encoder import EncoderError, resolve_hub_revision

    with pytest.raises(EncoderError, match=r"encoder_revision: <40-hex commit>"):
        resolve_hub_revision("facebook/hubert-base-ls960")
    ref = tmp_path / "empty-cache" / "models--facebook--hubert-base-ls960" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text("a" * 40 + "\n")  # what an earlier download left in the cache
    assert resolve_hub_revision("facebook/hubert-base-ls960") == "a" * 40
