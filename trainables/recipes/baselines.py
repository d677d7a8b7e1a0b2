"""The baselines every study can measure beside its methods, each a recipe.

* ``finetune``: vanilla fine-tuning, the pretrained encoder fine-tuned directly (pooling + head);
* ``tapt``: the TAPT model of the fold (the very artifact ``alignment`` starts from) scored on its test session;
* ``egemaps``: openSMILE's eGeMAPSv02 functionals, standardised, and a class-balanced logistic regression.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainables.config import POOLINGS
from trainables.recipes import steps
from trainables.recipes.base import FoldContext, Recipe, choice_param


class FinetuneRecipe(Recipe):
    name = "finetune"
    title = "vanilla fine-tuning of the pretrained encoder"
    params = {"pooling": choice_param(POOLINGS, "attention", "the utterance pooling of the classifier")}

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        return steps.finetune(fold, None, params["pooling"])


class TaptRecipe(Recipe):
    name = "tapt"
    title = "TAPT: the task-adapted encoder's own classifier, scored on the test session"

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        return steps.score(fold, steps.tapt(fold))


class EgemapsRecipe(Recipe):
    name = "egemaps"
    title = "eGeMAPSv02 functionals + class-balanced logistic regression"

    def run(self, fold: FoldContext, params: Mapping[str, Any]) -> str:
        features = steps.egemaps_features(fold)
        fold.step(
            "egemaps",
            {"train": fold.fingerprint("train"), "val": fold.fingerprint("val"), "test": fold.fingerprint("test"), "classes": list(fold.classes)},
            lambda out: fold.executor.task("egemaps", out, features=fold.paths[features], train=fold.train, val=fold.val, test=fold.test, classes=fold.classes),
            after=[features],
        )
        return "egemaps"
