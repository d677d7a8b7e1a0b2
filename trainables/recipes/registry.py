"""The recipes a study can name, by name: the built-in ones and any a plugin module registers.

A plugin is a module a study file lists under ``plugins:``; importing it calls
:func:`register` with its recipe. The study imports its plugins wherever it
runs (the driver, every Ray worker), so a new method needs no change to the
driver, the trial or the report.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from trainables.recipes.alignment import AlignmentRecipe
from trainables.recipes.base import Recipe
from trainables.recipes.baselines import EgemapsRecipe, FinetuneRecipe, TaptRecipe
from trainables.recipes.gmp_tl import GmpTlRecipe
from trainables.recipes.metadata import MetadataRecipe

_RECIPES: dict[str, Recipe] = {
    recipe.name: recipe for recipe in (AlignmentRecipe(), GmpTlRecipe(), MetadataRecipe(), FinetuneRecipe(), TaptRecipe(), EgemapsRecipe())
}
#: The recipes that can stand as baselines beside the methods of a study.
BASELINES = ("finetune", "tapt", "egemaps")


def register(recipe: Recipe | type[Recipe]) -> Recipe:
    """Make ``recipe`` (an instance or a class) available under its ``name``; registering the same class again is a no-op."""
    instance = recipe() if isinstance(recipe, type) else recipe
    known = _RECIPES.get(instance.name)
    if known is not None and type(known) is not type(instance):
        raise ValueError(f"a recipe named {instance.name!r} is already registered ({type(known).__module__}.{type(known).__name__})")
    _RECIPES[instance.name] = instance
    return instance


def recipe_names() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a ``KeyError`` lists the known ones."""
    try:
        return _RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(recipe_names())}") from None


def load_plugins(modules: Sequence[str]) -> None:
    """Import each plugin module (which registers its recipes); an ``ImportError`` names the module."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"cannot import the plugin module {module!r} ({err}); it must be importable where the study runs (PYTHONPATH)") from err
