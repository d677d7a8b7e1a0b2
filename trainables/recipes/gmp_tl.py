"""``gmp_tl``: gender-augmented multi-scale pseudo labels and two-stage fine-tuning (GMP-TL, Pan et al., SLT 2024).

Reconstructed from the paper's abstract (no code is public; ``docs/methods.md``
lists every choice). Per fold:

1. multi-task TAPT: the task-adaptive pretraining every recipe shares, then
   the supervised step with an emotion and a gender head
   (CE_emotion + ``gender_weight`` x CE_gender);
2. multi-scale pseudo labels: one embedding pass of that model for every
   layer of ``scales``, then k-means per (layer, K) scale, each a cached
   clustering artifact;
3. stage 1: from the pretrained encoder (``stage1_init``), predict every
   scale's labels of masked frames (``mask_ratio``; 0 = unmasked frame
   classification) with one cosine head per scale, losses summed;
4. stage 2: utterance fine-tuning with an AM-Softmax emotion head (scale
   ``am_scale``, margin ``margin``) and the gender head as an auxiliary loss
   weighted ``stage2_gender_share`` x ``gender_weight``.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainables.config import UtteranceObjective
from trainables.recipes import steps
from trainables.recipes.alignment import POOLING
from trainables.recipes.base import FoldContext, Param, Recipe, choice_param

SCALES_RULE = "scales is a comma-separated list of layer:K pairs, e.g. '9:50,9:100,9:150' (layer >= 0, K >= 2, no pair twice)"


def parse_scales(text: str) -> tuple[tuple[int, int], ...]:
    """``"9:50,9:100"`` -> ``((9, 50), (9, 100))``; a ``ValueError`` says what the form is."""
    pairs = []
    for part in str(text).split(","):
        layer, sep, clusters = part.strip().partition(":")
        if not sep or not layer.strip().isdigit() or not clusters.strip().isdigit():
            raise ValueError(f"{text!r}: {SCALES_RULE}")
        pair = (int(layer), int(clusters))
        if pair[1] < 2 or pair in pairs:
            raise ValueError(f"{text!r}: {SCALES_RULE}")
        pairs.append(pair)
    return tuple(pairs)


def _valid_scales(text: Any) -> bool:
    try:
        return bool(parse_scales(text))
    except ValueError:
        return False


def scale_name(layer: int, clusters: int) -> str:
    """The label-set name of one scale: its CPT head and its clustering step (``clustering@l9k50``)."""
    return f"l{layer}k{clusters}"


class GmpTlRecipe(Recipe):
    name = "gmp_tl"
    title = "GMP-TL: gender-augmented multi-scale pseudo labels, two-stage fine-tuning (AM-Softmax + gender)"
    reconstructed = True
    params = {
        "scales": Param("str", "9:50,9:100,9:150", "the (layer, K) pseudo-label scales, 'layer:K' pairs joined by commas",
                        allowed=_valid_scales, rule=SCALES_RULE),
        "mask_ratio": Param("float", 0.2, "stage 1: the fraction of frames masked (0: unmasked frame classification)",
                            allowed=lambda v: 0.0 <= v < 1.0, rule="mask_ratio must be in [0, 1); 0 trains unmasked frame classification"),
        "gender_weight": Param("float", 1.0, "lambda_g: the gender loss weight of the multi-task TAPT", allowed=lambda v: v > 0, rule="gender_weight must be positive"),
        "margin": Param("float", 0.2, "stage 2: AM-Softmax's cosine margin m", allowed=lambda v: 0.0 <= v < 1.0, rule="margin must be in [0, 1)"),
        "am_scale": Param("float", 30.0, "stage 2: AM-Softmax's scale s", allowed=lambda v: v > 0, rule="am_scale must be positive"),
        "stage2_gender_share": Param("float", 0.5, "stage 2: the gender loss weight as a share of gender_weight",
                                     allowed=lambda v: v >= 0, rule="stage2_gender_share must be >= 0 (0: no gender head in stage 2)"),
        "stage1_init": choice_param(("pretrained", "tapt"), "pretrained", "stage 1 starts from the pretrained encoder or the multi-task TAPT model"),
        "pooling": POOLING,
    }

    def layers(self, params: Mapping[str, Any]) -> set[int]:
        return {layer for layer, _ in parse_scales(params["scales"])}

    def max_clusters(self, params: Mapping[str, Any]) -> int:
        return max(clusters for _, clusters in parse_scales(params["scales"]))

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        scales = parse_scales(params["scales"])
        tapt = steps.tapt(fold, UtteranceObjective(aux={"gender": params["gender_weight"]}))
        embeddings = steps.embeddings(fold, tapt, [layer for layer, _ in scales])
        label_sets = {
            scale_name(layer, clusters): steps.clustering(fold, embeddings, layer, clusters, name=f"clustering@{scale_name(layer, clusters)}")
            for layer, clusters in scales
        }
        stage1 = steps.cpt(fold, label_sets, params["mask_ratio"], tapt if params["stage1_init"] == "tapt" else None)
        gender = params["stage2_gender_share"] * params["gender_weight"]
        stage2 = UtteranceObjective(emotion_head="am_softmax", am_scale=params["am_scale"], am_margin=params["margin"], aux={"gender": gender} if gender > 0 else {})
        return steps.finetune(fold, stage1, params["pooling"], objective=stage2)
