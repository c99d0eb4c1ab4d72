"""Weighted sum of reward functions, with every component kept for logging."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from rewards.base import RewardFn, RewardInput

log = logging.getLogger(__name__)


class RewardFnError(RuntimeError):
    """A reward function broke its contract or raised; the message names it."""


def combine(
    fns_with_weights: Sequence[tuple[RewardFn, float]], batch: list[RewardInput]
) -> tuple[list[float], dict[str, list[float | None]]]:
    """``(totals, components)``: per-trajectory weighted sums, and each function's raw values.

    ``None`` (not applicable) adds nothing to a total and stays ``None`` in its component.
    Components are unweighted and keyed by the function's name (``name#2`` for a second one of
    the same name). The environment's own reward (``RewardInput.env_reward``) is not included:
    the driver adds it, so it can be logged on its own.

    A reward function that raises, returns the wrong number of values or a non-finite value is
    a bug for the whole batch, not one bad sample, so it raises :class:`RewardFnError` instead of
    being skipped silently.

    >>> from rewards.testing import trajectory
    >>> from rewards.format import FormatReward
    >>> from rewards.budget import ReasoningBudgetReward
    >>> batch = [trajectory("<think>2+2=4</think>4"), trajectory("4", budget=64, forced_close=True)]
    >>> combine([(FormatReward(), 0.5), (ReasoningBudgetReward(), 1.0)], batch)
    ([0.5, -0.5], {'format': [1.0, 0.0], 'reasoning_budget': [None, -0.5]})
    """
    totals = [0.0] * len(batch)
    components: dict[str, list[float | None]] = {}
    for fn, weight in fns_with_weights:
        key, k = fn.name, 1
        while key in components:
            k += 1
            key = f"{fn.name}#{k}"
        try:
            values = list(fn.score(batch))
        except Exception as e:
            raise RewardFnError(f"reward function '{key}' ({type(fn).__name__}) raised {type(e).__name__}: {e}") from e
        if len(values) != len(batch):
            raise RewardFnError(f"reward function '{key}' returned {len(values)} values for {len(batch)} trajectories")
        clean: list[float | None] = []
        for i, v in enumerate(values):
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise RewardFnError(f"reward function '{key}' returned {v!r} for trajectory {i} (task {batch[i].task.id})")
            clean.append(None if v is None else float(v))
            if v is not None:
                totals[i] += weight * float(v)
        components[key] = clean
        applicable = [v for v in clean if v is not None]
        if applicable:
            log.info("reward %s (weight %g): mean %.4f over %d/%d", key, weight, sum(applicable) / len(applicable), len(applicable), len(clean))
        else:
            log.info("reward %s (weight %g): not applicable to any of %d", key, weight, len(clean))
    return totals, components
