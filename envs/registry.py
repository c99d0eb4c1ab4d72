"""Environment plugins by name: ``available_envs``, ``get_env_class``, ``make_env``.

A thin layer over :mod:`align.plugins` for the ``align.envs`` entry-point group. See that
module for the precedence rules (explicit > built-in > entry point) and error behaviour.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from align.plugins import PluginInfo, PluginRegistry, check_class
from envs.base import Environment

ENV_ATTRIBUTES = ("name", "Params", "reset", "step")  # the contract of envs.base.Environment


def _check_env(cls: type) -> list[str]:
    return check_class(cls, ENV_ATTRIBUTES, coroutines=("step",))


ENVS = PluginRegistry("environment", "align.envs", _check_env)


def register_env(cls: type, name: str | None = None) -> type:
    """Register an environment class explicitly; it wins over a built-in or entry point of that name."""
    return ENVS.register(cls, name)


def available_envs() -> dict[str, PluginInfo]:
    return ENVS.available()


def get_env_class(name: str) -> type:
    return ENVS.get_class(name)


def make_env(name: str, params: dict[str, Any] | BaseModel | None = None) -> Environment:
    """An environment instance with validated params (unknown or bad fields raise PluginParamsError)."""
    return ENVS.make(name, params)
