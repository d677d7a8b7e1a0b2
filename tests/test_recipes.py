"""Methods as recipes: the registry, conditional search, and the paired comparison against baselines."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from study.config.loading import load_study, shipped_studies
from study.report.compare import compare, differences, t_interval, verdict
from study.tune.search import make_searcher
from trainables.recipes.base import Param, Recipe
from trainables.recipes.registry import get_recipe, recipe_names, register

SMOKE = shipped_studies()["smoke"]


def test_the_built_in_recipes_and_their_parameters():
    assert {"alignment", "finetune", "tapt", "egemaps"} <= set(recipe_names())
    alignment = get_recipe("alignment")
    assert list(alignment.params) == ["layer", "clusters", "mask_ratio", "pooling"]
    assert alignment.resolve({"layer": 2}) == {"layer": 2, "clusters": 50, "mask_ratio": 0.2, "pooling": "attention"}
    with pytest.raises(ValueError, match="method finetune has no parameter layer; its parameters: pooling"):
        get_recipe("finetune").resolve({"layer": 2})
    with pytest.raises(ValueError, match="mask_ratio: 1.5 not allowed"):
        alignment.resolve({"mask_ratio": 1.5})
    with pytest.raises(KeyError, match="unknown method 'nope'; known methods: .*alignment"):
        get_recipe("nope")


def test_a_recipe_registered_under_a_taken_name_is_refused():
    class Impostor(Recipe):
        name = "alignment"
        title = "not the paper's"

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor)


def test_optuna_samples_only_the_chosen_methods_parameters():
    config = load_study(SMOKE, ["search.space.method={choice: [alignment, finetune]}", "search.max_concurrent=50", "search.num_trials=30", "search.startup_trials=30"])
    searcher = make_searcher(config)
    chosen = {"alignment": 0, "finetune": 0}
    for index in range(30):
        suggested = searcher.suggest(f"t{index}")
        params = searcher._ot_trials[f"t{index}"].params  # what Optuna itself sampled
        chosen[suggested["method"]] += 1
        if suggested["method"] == "finetune":
            assert set(params) == {"method", "pooling"} and set(suggested) == {"method", "pooling"}
        else:
            assert set(params) == {"method", "layer", "clusters", "mask_ratio", "pooling"}
    assert chosen["alignment"] and chosen["finetune"]


def test_a_grid_over_two_methods_has_the_sum_of_their_grids():
    config = load_study(SMOKE, ["search.space.method={choice: [alignment, finetune]}", "search.algorithm=grid", "search.num_trials=null"])
    searcher = make_searcher(config)
    points = [searcher.suggest(f"t{i}") for i in range(config.num_trials())]
    keys = {tuple(sorted((k, v) for k, v in p.items() if k != "candidate")) for p in points}
    assert config.num_trials() == 8 + 2 == len(keys)  # every candidate once, none twice
    assert sum(p["method"] == "finetune" for p in points) == 2


def test_the_paired_interval_is_scipys_t_interval():
    diffs = [0.031, -0.012, 0.054, 0.020, 0.007]
    mean, low, high = t_interval(diffs)
    expected = stats.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / len(diffs), scale=stats.sem(diffs))
    assert mean == pytest.approx(sum(diffs) / 5) and (low, high) == pytest.approx(expected)
    assert all(math.isnan(v) for v in t_interval([0.1])[1:]) and t_interval([0.1])[0] == 0.1


def test_folds_are_paired_by_session_and_seed():
    def folds(values):
        return [{"test_session": s, "seed": seed, "test": {"ua": v}} for (s, seed), v in values.items()]

    candidate = folds({(1, 0): 0.60, (2, 0): 0.70, (1, 1): 0.62, (3, 0): 0.5})
    baseline = folds({(1, 0): 0.55, (2, 0): 0.60, (1, 1): 0.60})  # no fold 3: that candidate fold is not paired
    assert differences(candidate, baseline) == pytest.approx([0.05, 0.02, 0.10])  # (1,0), (1,1), (2,0)
    comparison = compare(candidate, baseline)
    assert comparison.n == 3 and comparison.mean == pytest.approx(0.17 / 3)
    assert "vs tapt" in verdict("tapt", comparison)
    assert compare(candidate, folds({(1, 0): 0.1, (2, 0): 0.1, (1, 1): 0.1})).beyond  # far above: beyond the interval


def test_a_method_param_declared_with_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="Param kind"):
        Param("list", [], "a list")


TOY_PLUGIN = '''
"""A method written by a user, outside ser-study: fine-tuning that starts from the fold's TAPT encoder."""
from trainables.config import POOLINGS
from trainables.recipes import steps
from trainables.recipes.base import Recipe, choice_param
from trainables.recipes.registry import register


class TaptThenFinetune(Recipe):
    name = "toy"
    title = "fine-tuning from the TAPT encoder"
    params = {"pooling": choice_param(POOLINGS, "average", "the pooling")}

    def run(self, fold, params):
        return steps.finetune(fold, steps.tapt(fold), params["pooling"])


register(TaptThenFinetune)
'''


@pytest.mark.slow
def test_a_recipe_added_by_a_plugin_runs_through_a_study_with_no_driver_change(small_manifest, tiny_encoder, tmp_path):
    import os
    import subprocess

    from study.io.records import read_trial_records
    from study_runs import cli, study_args

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy_plugin.py").write_text(TOY_PLUGIN)
    study_dir = tmp_path / "study"
    args = study_args(small_manifest, tiny_encoder, study_dir, "plugins=[toy_plugin]", "search.space.method=toy", "search.space.pooling=average", "folds=[1]",
                      "search.algorithm=grid", "search.num_trials=null")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = read_trial_records(study_dir)
    assert record["method"] == "toy" and record["params"] == {"method": "toy", "pooling": "average"}
    (fold,) = record["folds"]
    assert fold["links"] == {"tapt": [], "finetune": ["tapt"]} and record["audit"]["clean"]
    assert "### `toy`: fine-tuning from the TAPT encoder" in (study_dir / "report" / "report.md").read_text()


@pytest.mark.slow
def test_methods_smoke_runs_gmp_tl_and_metadata_beside_a_baseline(small_manifest, tiny_encoder, tmp_path):
    """The two reconstructed methods through the real command line: records, report rows with paired comparisons, MLflow tags, predict."""
    import subprocess

    from mlflow.tracking import MlflowClient

    from study.io.records import read_trial_records
    from study_runs import cli, first_wav

    study_dir = tmp_path / "study"
    args = [
        "run", str(shipped_studies()["methods_smoke"]), "--study-dir", str(study_dir),
        "--set", f"data.manifest={small_manifest}", "--set", f"encoder={tiny_encoder}", "--set", "phases.epochs=1",
        "--set", "phases.kmeans.max_fit_frames=5000", "--set", "search.space.method={choice: [gmp_tl, metadata]}",
        "--set", "baselines=[finetune]",
    ]
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {r["method"]: r for r in read_trial_records(study_dir)}
    assert set(records) == {"gmp_tl", "metadata"} and all(r["status"] == "complete" and r["audit"]["clean"] for r in records.values())
    assert records["gmp_tl"]["params"]["scales"] == "2:4,2:8,2:16" and records["metadata"]["params"]["integration"] == "ari"
    assert all(f["scored"] == "finetune" for f in records["gmp_tl"]["folds"]) and all(f["scored"] == "mtl_stage2" for f in records["metadata"]["folds"])
    text = (study_dir / "report" / "report.md").read_text()
    for method in ("gmp_tl", "metadata"):
        assert f"### `{method}`" in text
    assert text.count("**reconstructed**") >= 2 and "Δ UA vs finetune" in text
    client = MlflowClient(f"sqlite:///{study_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("methods-smoke")
    tags = {r.data.tags["method"]: r.data.tags["reconstructed"] for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("ser_study.kind") in ("trial", "baseline")}
    assert tags == {"gmp_tl": "true", "metadata": "true", "finetune": "false"}
    predicted = subprocess.run(cli("predict", str(study_dir), str(first_wav(small_manifest))), capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
