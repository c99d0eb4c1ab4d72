"""Recipes: YAML -> strict pydantic models."""

from align.config.loader import LoadedRecipe, dump_recipe, load_recipe
from align.config.recipes import RecipeError, list_recipes

__all__ = ["LoadedRecipe", "RecipeError", "dump_recipe", "list_recipes", "load_recipe"]
