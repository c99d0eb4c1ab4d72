"""Load a recipe: YAML file (optionally extending one base), dotted overrides, strict validation.

Errors are :class:`RecipeError` with a message that names the file (or the command-line
override), the dotted key path and, for unknown keys, the closest valid key. Nothing here
touches the filesystem beyond reading recipes, so a bad recipe never creates an output folder.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from align.config.checks import check_recipe
from align.config.recipes import RecipeError, find_recipe
from align.config.schema import RECIPE_MODELS, Recipe
from align.errors import AlignError

OVERRIDE_SOURCE = "command-line override"


@dataclass(frozen=True)
class LoadedRecipe:
    name: str
    recipe: Recipe
    # Files in extends order, base first: where each key may have come from.
    files: tuple[Path, ...]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; keys written next to it override the merged ones
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (first on line {seen[key]}); keep one", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at line {line}); save the recipe as UTF-8") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader subclass
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
    except yaml.YAMLError as e:
        if raw.lstrip()[:1] in ("[", "{"):  # meant as a list or mapping: as a string it would only fail later, vaguely
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise RecipeError(
                f"{OVERRIDE_SOURCE} '{text}': the value is not a YAML list or mapping ({problem}). "
                f"Quote items that hold [ ] {{ }} , or ': ', as in ['layers\\.[03]\\.mixer\\.', 'a, b']"
            ) from None
        value = raw  # a plain string the YAML reader trips on (a ': ' inside, say)
    return key.split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set ``a.b.c``; a numeric part indexes into a list (``envs.0.weight`` edits the first env)."""
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(path[:depth])
                raise RecipeError(f"{OVERRIDE_SOURCE} '{text}': {where} is a list of {len(node)} items; "
                                  f"'{part}' is not an index of it (0 to {len(node) - 1})")  # fmt: skip
            index: Any = int(part)
        elif part not in node and part.isdigit() and int(part) in node:
            index = int(part)  # a YAML key written as a number ({1: 2} in grade_weights) parses as an int
        else:
            index = part
        if last:
            node[index] = value
            return
        nxt = node[index] if isinstance(node, list) else node.get(index)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[index] = nxt
        node = nxt


def _has_path(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and str(part).isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return False
    return True


@dataclass(frozen=True)
class _Sources:
    """Where each key of a merged recipe came from: the last override that set it, else the last file."""

    chain: list[tuple[Path, dict[str, Any]]]
    overrides: dict[tuple[str, ...], str]

    def of(self, loc: tuple[Any, ...]) -> str:
        loc = tuple(str(p) for p in loc)
        for key, text in reversed(self.overrides.items()):
            # The override set this key, or something inside it (envs.0.weight=... for a check on envs).
            if loc[: len(key)] == key or (loc and key[: len(loc)] == loc):
                return f"{OVERRIDE_SOURCE} '{text}'"
        return next((str(p) for p, d in reversed(self.chain) if _has_path(d, loc)), "the default")

    def explain(self, message: str, keys: list[tuple[str, ...]]) -> str:
        """``message``, then for every key involved: its value's origin (never the whole recipe)."""
        lines = [message] + [f"    {'.'.join(k) or '(recipe)'}: set by {self.of(k)}" for k in keys]
        return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (walks lists, dicts and optionals)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or str(part).isdigit():
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


_KEY_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")


def _keys_in(message: str, model: type[BaseModel], loc: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Recipe keys a cross-field message names, read relative to the model at ``loc`` or to the top."""
    found: list[tuple[str, ...]] = []
    for word in _KEY_WORD.findall(message):
        parts = tuple(word.split("."))
        for cand in (loc + parts, parts):
            holder = _model_at(model, cand[:-1]) if len(cand) > 1 else model
            if holder is not None and cand[-1] in holder.model_fields and cand not in found:
                found.append(cand)
                break
    return found or [loc]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 and not isinstance(value, dict) else f"a {type(value).__name__}"


def _format_errors(err: ValidationError, model: type[BaseModel], sources: _Sources) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{'.'.join(loc[:-1] + (close[0],))}'?" if close else ""
            lines.append(f"{sources.of(loc)}: unknown key '{dotted}'.{hint} Valid keys here: {', '.join(valid)}")
        elif e["type"] == "value_error":
            # A check across fields (a model validator): name every key it mentions and who set it.
            msg = str(e["msg"]).removeprefix("Value error, ")
            lines.append(sources.explain(f"{dotted + ': ' if dotted else ''}{msg}", _keys_in(msg, model, loc)))
        else:
            lines.append(f"{sources.of(loc)}: {dotted}: {e['msg']} (got {_short(e.get('input'))})")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def load_recipe(name_or_path: str, overrides: list[str] | None = None, job: str | None = None) -> LoadedRecipe:
    """Resolve, merge, override and validate a recipe. ``job`` checks the recipe is for that job."""
    path = find_recipe(name_or_path)
    chain = _resolve_chain(path)
    data: dict[str, Any] = {}
    for _, d in chain:
        data = _deep_merge(data, d)
    data = copy.deepcopy(data)  # overrides edit lists in place; the files' own data stays as read
    override_keys: dict[tuple[str, ...], str] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(data, key, value, text)
        override_keys.pop(tuple(key), None)
        override_keys[tuple(key)] = text
    sources = _Sources(chain, override_keys)

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
        raise RecipeError(_format_errors(e, model, sources)) from None
    problems = check_recipe(recipe, data)
    if problems:
        lines = [sources.explain(p.message, [tuple(k.split(".")) for k in p.keys]) for p in problems]
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines))
    _check_plugins(recipe, path)
    return LoadedRecipe(name=name, recipe=recipe, files=tuple(p for p, _ in chain))  # type: ignore[arg-type]


def _check_plugins(recipe: BaseModel, path: Path) -> None:
    """Environment and reward names and params are validated by each plugin's own params model."""
    from align.config.schema import RLRecipe

    if not isinstance(recipe, RLRecipe):
        return
    from align.errors import AlignError as _Err
    from align.plugins import RECIPE_ENVS
    from envs.registry import ENVS
    from rewards.registry import REWARDS

    context = {RECIPE_ENVS: [e.name for e in recipe.envs]}  # e.g. the genrm reward's params.envs are checked against it
    for registry, key, specs in ((ENVS, "envs", recipe.envs), (REWARDS, "rewards", recipe.rewards)):
        for i, spec in enumerate(specs):
            try:
                registry.validate_params(spec.name, spec.params, context)
            except _Err as e:
                raise RecipeError(f"{path}: {key}.{i} ({spec.name}): {e}") from None


def dump_recipe(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
