"""``alignment``: the paper's method, frame-level emotional state alignment.

tapt -> embeddings(L) -> clustering(L, K) -> cpt(mask ratio) -> finetune(pooling), per fold:
the TAPT encoder's layer-L frames clustered into K pseudo emotion labels, the
encoder taught to predict them for masked frames (continued pretraining, from
the pretrained encoder by default), then fine-tuned on the utterance labels.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainables.config import POOLINGS
from trainables.recipes import steps
from trainables.recipes.base import FoldContext, Param, Recipe, choice_param

LAYER = Param("int", 9, "the encoder layer (hidden_states index) whose frames are clustered", allowed=lambda v: v >= 0,
              rule="layer is a hidden_states index >= 0 (0 = CNN output, 1..N = transformer layers)")
CLUSTERS = Param("int", 50, "k-means K: the number of pseudo emotion labels", allowed=lambda v: v >= 2, rule="clusters must be at least 2 (k-means K)")
MASK_RATIO = Param("float", 0.2, "the fraction of frames masked in continued pretraining", allowed=lambda v: 0.0 < v < 1.0,
                   rule="mask_ratio must be in (0, 1): a fraction of frames, strictly between 0 and 1")
POOLING = choice_param(POOLINGS, "attention", "the utterance pooling of the final classifier")


class AlignmentRecipe(Recipe):
    name = "alignment"
    title = "frame-level emotional state alignment: TAPT, layer-L k-means pseudo labels, masked CPT, fine-tuning"
    params = {"layer": LAYER, "clusters": CLUSTERS, "mask_ratio": MASK_RATIO, "pooling": POOLING}

    def layers(self, params: Mapping[str, Any]) -> set[int]:
        return {int(params["layer"])}

    def max_clusters(self, params: Mapping[str, Any]) -> int:
        return int(params["clusters"])

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        tapt = steps.tapt(fold)
        embeddings = steps.embeddings(fold, tapt, [params["layer"]])
        clustering = steps.clustering(fold, embeddings, params["layer"], params["clusters"])
        init = None if fold.settings.cpt.init == "pretrained" else tapt
        pretrained = steps.cpt(fold, {f"k{params['clusters']}": clustering}, params["mask_ratio"], init)
        return steps.finetune(fold, pretrained, params["pooling"])
