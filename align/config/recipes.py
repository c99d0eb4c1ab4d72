"""Where recipes are: the shipped ones (the ``recipes`` package) and paths, by name or file.

Kept apart from the loader so that value checks (:mod:`align.config.checks`) can resolve a
pipeline's stage recipes without importing the loader that calls them.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from align.errors import AlignError


class RecipeError(AlignError, ValueError):
    """A recipe that cannot be used, with a message meant for the user."""


def recipes_dir() -> Path:
    return Path(str(resources.files("recipes")))


def list_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        return p
    shipped = list_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    close = difflib.get_close_matches(name_or_path, shipped, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise RecipeError(
        f"unknown recipe '{name_or_path}'.{hint} Shipped recipes: {', '.join(shipped)}. "
        "A path to a .yaml file works too."
    )
