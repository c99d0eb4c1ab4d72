"""Recipes shipped with align (YAML files, package data)."""
