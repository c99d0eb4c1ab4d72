"""Reward-function plugins by name: ``available_rewards``, ``get_reward_class``, ``make_reward``.

A thin layer over :mod:`align.plugins` for the ``align.rewards`` entry-point group. See that
module for the precedence rules (explicit > built-in > entry point) and error behaviour.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from align.plugins import PluginInfo, PluginRegistry, check_class
from rewards.base import RewardFn

REWARD_ATTRIBUTES = ("name", "description", "Params", "score")


def _check_reward(cls: type) -> list[str]:
    return check_class(cls, REWARD_ATTRIBUTES)


REWARDS = PluginRegistry("reward function", "align.rewards", _check_reward)


def register_reward(cls: type, name: str | None = None) -> type:
    """Register a reward class explicitly; it wins over a built-in or entry point of that name."""
    return REWARDS.register(cls, name)


def available_rewards() -> dict[str, PluginInfo]:
    return REWARDS.available()


def get_reward_class(name: str) -> type:
    return REWARDS.get_class(name)


def make_reward(name: str, params: dict[str, Any] | BaseModel | None = None) -> RewardFn:
    """A reward-function instance with validated params (bad fields raise PluginParamsError)."""
    return REWARDS.make(name, params)


def reward_actor_cpus(specs: Any) -> float:
    """CPUs that reward functions of ``specs`` (a recipe's ``rewards``) take as Ray actors of their own.

    A reward class that starts actors (the ``genrm`` judge's engines) says how many through
    ``ray_cpus(params)``; the job's Ray session is sized with them.
    """
    total = 0.0
    for spec in specs:
        cls = get_reward_class(spec.name)
        if hasattr(cls, "ray_cpus"):
            total += cls.ray_cpus(cls.Params.model_validate(spec.params))
    return total
