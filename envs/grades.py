"""Difficulty grades of the tiny world's generated tasks.

Every built-in generator labels each task with ``meta["grade"]`` (1 = easiest) and draws the
grade of each new task from its params' ``grade_weights`` (grade -> relative weight; empty:
uniform over the grades it offers). Recipes use it to give SFT many easy demonstrations and few
hard ones while RL draws every grade (recipes/tiny-sft.yaml, ``data.generated.params``), so RL
has tasks the SFT policy cannot yet solve.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from pydantic import Field

GRADE_WEIGHTS_FIELD = Field(
    default_factory=dict,
    description="grade -> relative weight when drawing generated tasks (empty: uniform over the grades offered)",
)


def check_grade_weights(env: str, weights: Mapping[int, float], offered: Sequence[int]) -> None:
    """Raise a ValueError naming the environment when ``weights`` cannot draw any offered grade."""
    unknown = sorted(set(weights) - set(offered))
    if unknown:
        raise ValueError(f"{env}: grade_weights names grades {unknown}, this environment offers {sorted(set(offered))}")
    if any(w < 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
        raise ValueError(f"{env}: grade_weights must be >= 0 with a positive sum, got {dict(weights)}")


def draw_grade(rng: random.Random, offered: Sequence[int], weights: Mapping[int, float]) -> int:
    """One grade of ``offered``, by ``weights`` (uniform when empty)."""
    grades = sorted(set(offered))
    if not weights:
        return rng.choice(grades)
    return rng.choices(grades, [weights.get(g, 0.0) for g in grades])[0]
