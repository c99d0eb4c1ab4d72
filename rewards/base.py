"""The reward-function contract.

A reward function scores a batch of finished trajectories and returns one value per
trajectory, or ``None`` where it does not apply (as in TRL's reward functions). The combiner
sums weighted components, skipping ``None``, and logs each component separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from align.reasoning import ReasoningMode
from envs.base import Message, Task


@dataclass
class RewardInput:
    """What a reward function sees of one trajectory."""

    task: Task
    messages: list[Message]  # the whole conversation, prompt included
    completion: str  # the policy's text (all assistant turns joined)
    mode: ReasoningMode
    thinking_tokens: int = 0
    forced_close: bool = False  # the budget ran out and </think> was forced
    completion_tokens: int = 0
    max_new_tokens: int = 0
    truncated: bool = False  # generation hit max_new_tokens
    env_reward: float = 0.0
    correct: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class RewardFn(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None: ...

    def score(self, batch: list[RewardInput]) -> list[float | None]: ...
