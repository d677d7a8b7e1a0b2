"""``ser-study export``: the best model as a HuggingFace directory that transformers' pipeline loads, and an MLflow model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import soundfile as sf

from study.cli import main
from study_runs import first_wav

pytestmark = pytest.mark.slow


def test_export_loads_in_a_transformers_pipeline_and_scores_as_predict_does(reference_study, small_manifest, tmp_path, capsys):
    from transformers import pipeline

    out = tmp_path / "exported"
    assert main(["export", str(reference_study), str(out), "--fold", "2", "--register", "ser-faults"]) == 0
    printed = capsys.readouterr().out
    assert "fold 2" in printed and "registered as ser-faults version 1" in printed
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_ser.py", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neu", "1": "hap", "2": "ang", "3": "sad"} and config["pooling"] == "attention"
    assert config["auto_map"]["AutoModelForAudioClassification"] == "modeling_ser.SerStudyForAudioClassification"
    card = (out / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "Protocol: strict" in card and "Leakage audit:" in card and "| 2 |" in card

    wav = first_wav(small_manifest)
    samples, rate = sf.read(wav, dtype="float32")
    scores = pipeline("audio-classification", model=str(out), trust_remote_code=True)({"raw": samples, "sampling_rate": rate}, top_k=None)
    assert main(["predict", str(reference_study), str(wav), "--fold", "2", "--format", "json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["probabilities"]
    assert {s["label"]: s["score"] for s in scores} == pytest.approx(predicted, abs=1e-5)  # the same model, loaded by transformers

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{reference_study / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/ser-faults/1").predict(pd.DataFrame({"path": [str(wav)]}))
    assert served.loc[0, "label"] == max(predicted, key=predicted.get)
    assert served.loc[0, list(predicted)].to_dict() == pytest.approx(predicted, abs=1e-5)


def test_export_refuses_a_directory_that_holds_files(reference_study, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(reference_study), str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".taken-*"))
