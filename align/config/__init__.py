"""Recipes: YAML -> strict pydantic models.

The names below are imported from ``loader.py`` and ``recipes.py`` when first asked for (PEP 562):
a Ray actor that only needs the schema (a learner unpickling its ``LearnerConfig``) imports
``align.config.schema`` without the YAML loader and the recipe checks (about 0.25 s of CPU
in each learner's start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.config.loader import LoadedRecipe, dump_recipe, load_recipe
    from align.config.recipes import RecipeError, list_recipes

_WHERE = {
    "LoadedRecipe": "align.config.loader",
    "dump_recipe": "align.config.loader",
    "load_recipe": "align.config.loader",
    "RecipeError": "align.config.recipes",
    "list_recipes": "align.config.recipes",
}

__all__ = ["LoadedRecipe", "RecipeError", "dump_recipe", "list_recipes", "load_recipe"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'align.config' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
