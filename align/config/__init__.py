"""Recipes: YAML -> strict pydantic models."""

from align.config.loader import LoadedRecipe, RecipeError, dump_recipe, list_recipes, load_recipe

__all__ = ["LoadedRecipe", "RecipeError", "dump_recipe", "list_recipes", "load_recipe"]
