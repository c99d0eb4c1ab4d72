"""The plugin registry behind environments and reward functions.

Plugins are classes found through Python entry points (``align.envs``, ``align.rewards``); the
built-ins are declared the same way in align's own ``pyproject.toml``, so a third-party
package is a peer of them, not a special case. Three sources, in order of precedence:

1. explicit: ``register(cls)`` from Python code (a notebook, a test, a driver script);
2. built-in: an entry point of the ``align`` distribution itself;
3. entry point: an entry point of any other installed distribution.

A higher source silently wins over a lower one (that is how a user overrides a built-in); two
sources at the *same* level with one name are an error that names both, raised when that name
is used and shown by :meth:`PluginRegistry.available`. Nothing is imported until it is needed,
and a plugin that fails to import is listed with its error instead of breaking the listing of
the others.

Limits: discovery is cached; call :meth:`PluginRegistry.refresh` after changing ``sys.path``
or installing a package in a running process. Entry points are read through
``importlib.metadata``, which keeps the first distribution of a given name on ``sys.path``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from align.errors import AlignError

BUILTIN_DIST = "align"

EXPLICIT, BUILTIN, ENTRY_POINT = 0, 1, 2

# Validation-context key, set when a recipe is loaded: the names of the recipe's environments
# (``info.context[RECIPE_ENVS]`` in a params model's validator; absent outside a recipe load).
RECIPE_ENVS = "recipe_envs"


class PluginError(AlignError):
    """A plugin could not be found, loaded or configured. The message is meant for the user."""


class UnknownPluginError(PluginError, LookupError):
    pass


class DuplicatePluginError(PluginError):
    pass


class PluginLoadError(PluginError):
    pass


class PluginParamsError(PluginError, ValueError):
    pass


@dataclass(frozen=True)
class PluginInfo:
    """What ``align envs list`` shows for one name: where it comes from and whether it loads."""

    name: str
    source: str  # "explicit", "built-in" or "entry point (<distribution>)"
    package: str  # distribution and version, or the module of an explicitly registered class
    target: str  # "module:attribute"
    description: str
    cls: type | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.cls is not None


@dataclass
class _Candidate:
    name: str
    rank: int
    source: str
    package: str
    target: str
    load: Callable[[], Any]


def _dist_label(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    """(normalized distribution name, "name version") for an entry point."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", "unknown distribution"
    name = dist.metadata["Name"] or dist.name
    return name.lower().replace("_", "-"), f"{name} {dist.version}"


def _describe(cls: type) -> str:
    text = getattr(cls, "description", "") or (cls.__doc__ or "")
    return " ".join(str(text).split())


def _format_validation_error(e: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    fields = list(model.model_fields)
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(params)"
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(err["loc"][0]), fields, n=1)
            msg = "unknown field" + (f" (did you mean '{hint[0]}'?)" if hint else f" (valid: {', '.join(fields) or 'none'})")
        else:
            msg = f"{str(err['msg']).removeprefix('Value error, ')} (got {err.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


class PluginRegistry:
    """One kind of plugin (environments or reward functions) and its three sources.

    ``check`` validates a loaded class and returns a list of problems (empty when it conforms
    to the protocol); a class with problems is listed with them and refused by ``get_class``.
    """

    def __init__(self, noun: str, group: str, check: Callable[[type], list[str]]) -> None:
        self.noun = noun
        self.group = group
        self._check = check
        self._explicit: dict[str, _Candidate] = {}
        self._discovered: dict[str, list[_Candidate]] | None = None
        self._loaded: dict[tuple[str, str, str], tuple[type | None, str | None]] = {}

    # ------------------------------------------------------------------ sources

    def register(self, cls: type, name: str | None = None) -> type:
        """Register ``cls`` under ``name`` (default ``cls.name``); beats built-ins and entry points.

        Returns ``cls``, so it also works as a class decorator. Registering a class under a name
        taken by a class defined elsewhere is an error; the same definition again (a re-run
        notebook cell) replaces it. Registering under a name other than ``cls.name`` is allowed
        (two configurations of one class), but tasks the class generates still carry ``cls.name``.
        """
        problems = self._check(cls)
        if problems:
            raise PluginLoadError(f"cannot register {cls.__module__}.{cls.__qualname__} as {self.noun}: {'; '.join(problems)}")
        key = name or cls.name
        target = f"{cls.__module__}:{cls.__qualname__}"
        old = self._explicit.get(key)
        if old is not None and old.target != target:
            raise DuplicatePluginError(
                f"{self.noun} '{key}' is registered twice explicitly: {old.target} and {target}; "
                "register one of them under another name"
            )
        self._explicit[key] = _Candidate(key, EXPLICIT, "explicit", cls.__module__.split(".")[0], target, lambda: cls)
        return cls

    def unregister(self, name: str) -> None:
        """Drop an explicit registration (the built-in or entry point of that name shows again)."""
        self._explicit.pop(name, None)

    def refresh(self) -> None:
        """Forget discovered entry points and loaded classes (after sys.path or installs change)."""
        self._discovered = None
        self._loaded.clear()

    def _discover(self) -> dict[str, list[_Candidate]]:
        if self._discovered is None:
            found: dict[str, list[_Candidate]] = {}
            for ep in importlib.metadata.entry_points(group=self.group):
                dist, label = _dist_label(ep)
                if dist == BUILTIN_DIST:
                    cand = _Candidate(ep.name, BUILTIN, "built-in", label, ep.value, ep.load)
                else:
                    cand = _Candidate(ep.name, ENTRY_POINT, f"entry point ({label.split(' ')[0]})", label, ep.value, ep.load)
                found.setdefault(ep.name, []).append(cand)
            self._discovered = found
        return self._discovered

    def _candidates(self) -> dict[str, list[_Candidate]]:
        merged = {name: list(cands) for name, cands in self._discover().items()}
        for name, cand in self._explicit.items():
            merged.setdefault(name, []).append(cand)
        return merged

    def names(self) -> list[str]:
        return sorted(self._candidates())

    # ------------------------------------------------------------------ lookup

    def _unknown(self, name: str) -> UnknownPluginError:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listing = ", ".join(names) or "none installed"
        return UnknownPluginError(f"unknown {self.noun} '{name}'.{hint} Available: {listing}.")

    def _resolve(self, name: str, candidates: list[_Candidate]) -> _Candidate:
        best = min(c.rank for c in candidates)
        top = {c.target + "|" + c.package: c for c in candidates if c.rank == best}
        if len(top) > 1:
            sources = "; ".join(f"{c.source}: {c.target} from {c.package}" for c in top.values())
            raise DuplicatePluginError(
                f"{self.noun} '{name}' is defined twice at the same precedence ({sources}). "
                "Uninstall one package, or register the one you want explicitly."
            )
        return next(iter(top.values()))

    def _try_load(self, cand: _Candidate) -> tuple[type | None, str | None]:
        """(class, None) or (None, what is wrong with it); cached per discovered candidate."""
        if cand.rank == EXPLICIT:
            return cand.load(), None  # checked by register(); never cached, so re-registering a class takes effect
        key = (cand.name, cand.target, cand.package)
        if key not in self._loaded:
            try:
                cls = cand.load()
                problems = self._check(cls) if isinstance(cls, type) else [f"{cand.target} is not a class"]
                if not problems and getattr(cls, "name", None) != cand.name and cand.rank != EXPLICIT:
                    problems.append(f"the entry point is named '{cand.name}' but the class's name is '{cls.name}'")
                self._loaded[key] = (None, "; ".join(problems)) if problems else (cls, None)
            except Exception as e:  # noqa: BLE001 - a broken plugin may raise anything on import
                frames = [
                    f
                    for f in traceback.extract_tb(e.__traceback__)
                    if "importlib" not in f.filename and not f.filename.startswith("<") and f.filename != __file__
                ]
                where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
                self._loaded[key] = (None, f"import of {cand.target} failed: {type(e).__name__}: {e}{where}")
        return self._loaded[key]

    def _load(self, cand: _Candidate) -> type:
        cls, error = self._try_load(cand)
        if cls is None:
            raise PluginLoadError(f"{self.noun} '{cand.name}' ({cand.source}, {cand.package}) cannot be used: {error}")
        return cls

    def get_class(self, name: str) -> type:
        candidates = self._candidates().get(name)
        if not candidates:
            raise self._unknown(name)
        return self._load(self._resolve(name, candidates))

    def available(self) -> dict[str, PluginInfo]:
        """Every known name, sorted; broken or ambiguous ones carry ``error`` and ``cls=None``."""
        out: dict[str, PluginInfo] = {}
        for name, candidates in sorted(self._candidates().items()):
            try:
                cand = self._resolve(name, candidates)
            except DuplicatePluginError as e:
                first = candidates[0]
                out[name] = PluginInfo(name, first.source, first.package, first.target, "", None, str(e))
                continue
            cls, error = self._try_load(cand)
            description = _describe(cls) if cls is not None else ""
            out[name] = PluginInfo(name, cand.source, cand.package, cand.target, description, cls, error)
        return out

    # ------------------------------------------------------------------ construction

    def validate_params(self, name: str, params: dict[str, Any] | BaseModel | None, context: dict[str, Any] | None = None) -> BaseModel:
        """The class's ``Params`` model built from ``params``; errors name the plugin and the field.

        ``context`` reaches the model's validators as pydantic's validation context: at recipe load
        it holds :data:`RECIPE_ENVS`, so a plugin's params can be checked against the recipe.
        """
        cls = self.get_class(name)
        model: type[BaseModel] = cls.Params
        if isinstance(params, model) and context is None:
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        try:
            return model.model_validate(params or {}, context=context)
        except ValidationError as e:
            raise PluginParamsError(f"{self.noun} '{name}': invalid params\n{_format_validation_error(e, model)}") from None

    def make(self, name: str, params: dict[str, Any] | BaseModel | None = None) -> Any:
        return self.get_class(name)(self.validate_params(name, params))


def check_class(cls: type, attributes: tuple[str, ...], coroutines: tuple[str, ...] = ()) -> list[str]:
    """Problems that keep ``cls`` from being a plugin: missing attributes, a bad ``Params``."""
    problems = [f"missing {a}" for a in attributes if not hasattr(cls, a)]
    params = getattr(cls, "Params", None)
    if params is not None and not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.append("Params must be a pydantic BaseModel subclass")
    if "name" in attributes and hasattr(cls, "name") and not (isinstance(cls.name, str) and cls.name):
        problems.append("name must be a non-empty string")
    for c in coroutines:
        if hasattr(cls, c) and not inspect.iscoroutinefunction(getattr(cls, c)):
            problems.append(f"{c} must be an async method")
    return problems

