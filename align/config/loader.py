"""Load a recipe: YAML file (optionally extending one base), dotted overrides, strict validation.

Errors are :class:`RecipeError` with a message that names the file (or the command-line
override), the dotted key path and, for unknown keys, the closest valid key. Nothing here
touches the filesystem beyond reading recipes, so a bad recipe never creates an output folder.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from align.config.schema import RECIPE_MODELS, Recipe
from align.errors import AlignError

OVERRIDE_SOURCE = "command-line override"


class RecipeError(AlignError, ValueError):
    """A recipe that cannot be used, with a message meant for the user."""


@dataclass(frozen=True)
class LoadedRecipe:
    name: str
    recipe: Recipe
    # Files in extends order, base first: where each key may have come from.
    files: tuple[Path, ...]


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


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its bases, base first. ``extends`` names one recipe (name or relative path)."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None:
        current = current.resolve()
        if current in seen:
            raise RecipeError(f"{current}: 'extends' forms a cycle through {', '.join(map(str, seen))}")
        seen.add(current)
        data = _read_yaml(current)
        parent = data.pop("extends", None)
        chain.append((current, data))
        if parent is None:
            current = None
        elif not isinstance(parent, str):
            raise RecipeError(f"{current}: 'extends' must name one recipe, got {parent!r}")
        else:
            sibling = current.parent / parent
            current = sibling if sibling.is_file() else find_recipe(parent)
    return list(reversed(chain))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"{OVERRIDE_SOURCE} '{text}': expected key.path=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"{OVERRIDE_SOURCE} '{text}': empty key in '{key}'")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def _has_path(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (walks lists, dicts and optionals)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _format_errors(
    err: ValidationError,
    model: type[BaseModel],
    chain: list[tuple[Path, dict[str, Any]]],
    overrides: dict[tuple[str, ...], str],
) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        source = next((f"{OVERRIDE_SOURCE} '{text}'" for key, text in overrides.items() if loc[: len(key)] == key), None)
        if source is None:
            source = next((str(p) for p, d in reversed(chain) if _has_path(d, loc)), str(chain[-1][0]))
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
            lines.append(f"{source}: unknown key '{dotted}'.{hint} Valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"{source}: {dotted}: {e['msg']} (got {e.get('input')!r})")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def load_recipe(name_or_path: str, overrides: list[str] | None = None, job: str | None = None) -> LoadedRecipe:
    """Resolve, merge, override and validate a recipe. ``job`` checks the recipe is for that job."""
    path = find_recipe(name_or_path)
    chain = _resolve_chain(path)
    data: dict[str, Any] = {}
    for _, d in chain:
        data = _deep_merge(data, d)
    override_keys: dict[tuple[str, ...], str] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(data, key, value)
        override_keys[tuple(key)] = text

    recipe_job = data.get("job")
    if recipe_job not in RECIPE_MODELS:
        raise RecipeError(f"{path}: 'job' must be one of {', '.join(RECIPE_MODELS)}, got {recipe_job!r}")
    if job is not None and recipe_job != job:
        raise RecipeError(f"{path}: this recipe is for 'align {recipe_job}', not 'align {job}'")
    model = RECIPE_MODELS[recipe_job]
    name = path.stem
    if isinstance(data.get("output_dir"), str):
        data["output_dir"] = data["output_dir"].replace("${name}", name)
    elif "output_dir" not in data:
        data["output_dir"] = f"runs/{name}"
    try:
        recipe = model.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, model, chain, override_keys)) from None
    _check_plugins(recipe, path)
    return LoadedRecipe(name=name, recipe=recipe, files=tuple(p for p, _ in chain))  # type: ignore[arg-type]


def _check_plugins(recipe: BaseModel, path: Path) -> None:
    """Environment and reward names and params are validated by each plugin's own params model."""
    from align.config.schema import RLRecipe

    if not isinstance(recipe, RLRecipe):
        return
    from align.errors import AlignError as _Err
    from envs.registry import ENVS
    from rewards.registry import REWARDS

    for registry, key, specs in ((ENVS, "envs", recipe.envs), (REWARDS, "rewards", recipe.rewards)):
        for i, spec in enumerate(specs):
            try:
                registry.validate_params(spec.name, spec.params)
            except _Err as e:
                raise RecipeError(f"{path}: {key}.{i} ({spec.name}): {e}") from None


def dump_recipe(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
