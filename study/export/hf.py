"""``ser-study export``: one fold model of a study's best configuration as a HuggingFace model directory.

The directory holds ``config.json`` (the encoder's own config inside, ``id2label``,
the pooling and head, ``auto_map`` naming ``modeling_ser.py``), ``model.safetensors``,
``preprocessor_config.json`` (the encoder's feature extractor), ``modeling_ser.py``
and a model card ``README.md`` with the study's numbers, protocol and audit.
``transformers.pipeline("audio-classification", model=OUT, trust_remote_code=True)``
loads it. It is written beside ``OUT`` and renamed into place when complete.

Models with an utterance classifier (alignment, TAPT, fine-tuning, GMP-TL's
stage 2) are exported; the metadata method's ARI and co-attention model has no
HuggingFace counterpart here and is refused with that reason.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from study.errors import UserError
from study.export import card, modeling_ser
from study.export.modeling_ser import SerStudyConfig, SerStudyForAudioClassification
from study.predict import FoldModel, fold_models, load_model
from study.tune.publish import study_report
from trainables.models.encoder import feature_extractor
from trainables.models.heads import UtteranceClassifier
from trainables.phases.classifier import EMOTION_TASK

logger = logging.getLogger(__name__)

MODELING_FILE = "modeling_ser.py"
AUTO_MAP = {
    "AutoConfig": "modeling_ser.SerStudyConfig",
    "AutoModelForAudioClassification": "modeling_ser.SerStudyForAudioClassification",
}


@dataclass
class Exported:
    out: Path
    trial_id: str
    test_session: int
    test_ua: float
    model_uri: str | None = None
    registered_version: str | None = None


def to_huggingface(model: UtteranceClassifier, classes: list[str]) -> SerStudyForAudioClassification:
    """The same classifier as a :class:`SerStudyForAudioClassification` (eval mode), weights copied exactly."""
    if "loudness" in model.levels and model.encoder.info.normalize:
        raise UserError(
            "this classifier reads the utterance's loudness, and its encoder's feature extractor normalises every waveform, so the exported "
            "model would see no loudness; score audio with `ser-study predict` instead, or train with loudness: false"
        )
    encoder_config = model.encoder.model.config.to_dict()
    config = SerStudyConfig(
        encoder=encoder_config,
        pooling=model.pooling_name,
        head=model.head_kinds[EMOTION_TASK],
        head_norm=model.head_norm,
        cosine_scale=model.cosine_scale,
        layers=model.layers,
        loudness="loudness" in model.levels,
        spectral_balance="spectral_balance" in model.levels,
        sampling_rate=model.encoder.info.sample_rate,
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    config.auto_map = dict(AUTO_MAP)
    hf = SerStudyForAudioClassification(config)
    state = {f"encoder.{k}": v for k, v in model.encoder.model.state_dict().items()}
    if model.layer_mix is not None:
        state["layer_mix.logits"] = model.layer_mix.logits.detach()
    state.update({f"pooling.{k}": v for k, v in model.pooling.state_dict().items()})
    state.update({f"norm.{k}": v for k, v in model.norm.state_dict().items()})
    for name, prefix in (("loudness", "loudness_norm"), ("spectral_balance", "spectral_norm")):
        if name in model.levels:
            state.update({f"{prefix}.{k}": v for k, v in model.levels[name].norm.state_dict().items()})
    state.update({f"classifier.{k}": v for k, v in model.heads[EMOTION_TASK].state_dict().items()})
    wanted = set(hf.state_dict())
    # The mask embedding is a training-only parameter that HF drops when the saved config masks nothing.
    state = {k: v for k, v in state.items() if k in wanted or k != "encoder.masked_spec_embed"}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"the exported model does not match the classifier (missing {missing}, unexpected {unexpected})")
    return hf.eval()


def _choose_fold(folds: list[FoldModel], fold: int | None, trial_id: str) -> FoldModel:
    if fold is None:
        return max(folds, key=lambda f: f.val_ua if math.isfinite(f.val_ua) else -1.0)
    for candidate in folds:
        if candidate.test_session == fold:
            return candidate
    raise UserError(f"--fold {fold}: the best trial {trial_id} has folds {[f.test_session for f in folds]}; choose one of them")


def export_model(study_dir: str | Path, out: str | Path, fold: int | None = None, log_to_mlflow: bool = True, register: str | None = None) -> Exported:
    """Write the best configuration's model of ``fold`` (default: best validation UA) to ``out``; see the module docstring."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty directory; choose a new OUT")
    best, folds = fold_models(study_dir)
    chosen = _choose_fold(folds, fold, best["trial_id"])
    model, classes = load_model(chosen.directory)
    if not isinstance(model, UtteranceClassifier):
        raise UserError(f"the best trial {best['trial_id']} is a {best.get('method')} model (ARI and co-attention), which has no HuggingFace export; "
                        "score audio with `ser-study predict`, or export a study whose best method is alignment or gmp_tl")
    hf = to_huggingface(model, list(classes))
    fold_record = next(f for f in best["folds"] if int(f["test_session"]) == chosen.test_session)
    test_ua = float((fold_record.get("test") or {}).get("ua", math.nan))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        hf.save_pretrained(staging, safe_serialization=True)
        feature_extractor(model.encoder.info).save_pretrained(staging)
        shutil.copyfile(modeling_ser.__file__, staging / MODELING_FILE)
        (staging / "README.md").write_text(card.model_card(study_report(study_dir), best, chosen.test_session, test_ua, model.encoder.info.sample_rate))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    exported = Exported(out, best["trial_id"], chosen.test_session, test_ua)
    logger.info("exported trial %s fold %d to %s", best["trial_id"], chosen.test_session, out)
    if log_to_mlflow or register:
        from study.export.mlflow_model import log_exported_model

        exported.model_uri, exported.registered_version = log_exported_model(study_dir, best["trial_id"], out, register)
    return exported
