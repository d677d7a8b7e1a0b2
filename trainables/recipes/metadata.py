"""``metadata``: metadata-enhanced SER, two-stage multi-task fine-tuning with ARI and co-attention (Wan et al., 2024).

Reconstructed from the paper's abstract (no code is public; ``docs/methods.md``
lists every choice). Per fold:

1. stage 1 (``mtl_stage1``): the pretrained encoder fine-tuned on SER plus the
   enabled auxiliary tasks (gender, style: a weight > 0 turns one on;
   transcript: character CTC on ``ctc_layer``, weight 0.3 by default);
2. stage 2 (``mtl_stage2``): stage 1's model with Augmented Residual
   Integration (``integration: ari``; ``layer_sum`` is the plain weighted sum
   of layers of the ablation; ``none``) and co-attention (``coattention: on``),
   trained on SER with the same auxiliary tasks, the encoder at
   ``stage2_encoder_lr_scale`` of its rate (0: frozen), then scored.

``stages: 1`` is the one-stage ablation: stage 2's model trained from the
pretrained encoder directly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from trainables.config import MultitaskObjective
from trainables.data.manifest import Utterance
from trainables.data.metadata import IGNORE_INDEX, METADATA_TASKS
from trainables.data.transcripts import encode
from trainables.recipes.alignment import POOLING
from trainables.recipes.base import FoldContext, Param, Recipe, choice_param
from trainables.recipes.steps import encoder_of

_WEIGHT_RULE = "{} must be >= 0 (0 turns the task off)"


def _weight(help: str, default: float, name: str) -> Param:
    return Param("float", default, help, allowed=lambda v: v >= 0, rule=_WEIGHT_RULE.format(name))


class MetadataRecipe(Recipe):
    name = "metadata"
    title = "metadata-enhanced SER: auxiliary gender/style/transcript tasks, then ARI + co-attention (two stages)"
    reconstructed = True
    params = {
        "gender_weight": _weight("the gender task's loss weight (both stages)", 1.0, "gender_weight"),
        "style_weight": _weight("the speaking-style (improvised/scripted) task's loss weight", 1.0, "style_weight"),
        "transcript_weight": _weight("the transcript task's loss weight (character CTC)", 0.3, "transcript_weight"),
        "ctc_layer": Param("int", -1, "the hidden_states index the CTC head reads (-1: the last layer)", allowed=lambda v: v >= -1,
                           rule="ctc_layer is a hidden_states index >= 0, or -1 for the last layer"),
        "integration": choice_param(("ari", "layer_sum", "none"), "ari", "stage 2's SER frames: ARI, a weighted sum of layers (ablation), or the last layer"),
        "coattention": choice_param(("on", "off"), "on", "stage 2: the SER frames attend to each auxiliary task's view"),
        "stages": Param("int", 2, "2: stage 1 then stage 2; 1: stage 2's model trained from the pretrained encoder (ablation)",
                        allowed=lambda v: v in (1, 2), rule="stages is 1 or 2"),
        "stage2_encoder_lr_scale": Param("float", 0.1, "stage 2: the encoder's learning rate as a share of stage 1's (0: frozen)",
                                         allowed=lambda v: v >= 0, rule="stage2_encoder_lr_scale must be >= 0 (0 freezes the encoder)"),
        "pooling": POOLING,
    }

    def layers(self, params: Mapping[str, Any]) -> set[int]:
        return {params["ctc_layer"]} if params["transcript_weight"] > 0 and params["ctc_layer"] >= 0 else set()

    def data_problems(self, params: Mapping[str, Any], utterances: Sequence[Utterance]) -> list[tuple[str, str]]:
        problems = []
        if params["transcript_weight"] > 0 and not any(encode(u.transcript) for u in utterances):
            problems.append(("transcript_weight", "the transcript task is on but no utterance of the manifest has a transcript: "
                             "prepare the manifest again with `ser-study prepare` from a release with dialog/transcriptions, "
                             "or turn the task off (transcript_weight 0)"))
        for task in ("gender", "style"):
            if params[f"{task}_weight"] > 0 and all(METADATA_TASKS[task].index(u) == IGNORE_INDEX for u in utterances):
                problems.append((f"{task}_weight", f"the {task} task is on but no utterance of the manifest has a {task}: turn the task off ({task}_weight 0)"))
        return problems

    def objectives(self, params: Mapping[str, Any]) -> tuple[MultitaskObjective, MultitaskObjective]:
        """The objectives of stage 1 and stage 2."""
        aux = {task: params[f"{task}_weight"] for task in ("gender", "style") if params[f"{task}_weight"] > 0}
        stage1 = MultitaskObjective(aux=aux, transcript_weight=params["transcript_weight"], ctc_layer=params["ctc_layer"])
        stage2 = MultitaskObjective(
            aux=aux, transcript_weight=params["transcript_weight"], ctc_layer=params["ctc_layer"], integration=params["integration"],
            coattention=params["coattention"] == "on", encoder_lr_scale=params["stage2_encoder_lr_scale"] if params["stages"] == 2 else 1.0,
        )
        return stage1, stage2

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        cfg = fold.settings.finetune
        stage1_objective, stage2_objective = self.objectives(params)
        supervised = {"train": fold.fingerprint("train"), "val": fold.fingerprint("val"), "classes": list(fold.classes), "config": cfg, "pooling": params["pooling"]}
        first = None
        if params["stages"] == 2:
            first = "mtl_stage1"
            fold.step(
                first,
                {**supervised, "objective": stage1_objective, "encoder": fold.encoder_id},
                lambda out: fold.executor.train(
                    "mtl_stage1", out, encoder=fold.encoder, pooling=params["pooling"], train=fold.train, val=fold.val, classes=fold.classes,
                    cfg=cfg, objective=stage1_objective,
                ),
            )
        fold.step(
            "mtl_stage2",
            {**supervised, "test": fold.fingerprint("test"), "objective": stage2_objective, **({} if first else {"encoder": fold.encoder_id})},
            lambda out: fold.executor.train(
                "mtl_stage2", out, encoder=encoder_of(fold, first), pooling=params["pooling"], train=fold.train, val=fold.val, test=fold.test,
                classes=fold.classes, cfg=cfg, objective=stage2_objective, init=fold.paths[first] if first else None,
            ),
            after=[first] if first else [],
        )
        return "mtl_stage2"
