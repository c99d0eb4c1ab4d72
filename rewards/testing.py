"""Build ``RewardInput`` trajectories in one line: for doctests, tests, benchmarks and plugin authors."""

from __future__ import annotations

from typing import Any

from align.reasoning import ReasoningMode
from envs.base import Task
from rewards.base import RewardInput

_TASK = Task(id="t0", env="math", prompt=[{"role": "user", "content": "What is 2+2?"}], answer="4")


def trajectory(text: str, thinking: bool = True, budget: int | None = None, **fields: Any) -> RewardInput:
    """One single-turn trajectory answering ``text``; ``fields`` set the other RewardInput fields."""
    messages = [*_TASK.prompt, {"role": "assistant", "content": text}]
    return RewardInput(task=_TASK, messages=messages, completion=text, mode=ReasoningMode(thinking, budget), **fields)
