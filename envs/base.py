"""The environment contract: what a plugin author implements.

An environment turns a :class:`Task` into opening messages (``reset``), and scores the
policy's actions (``step``). A single-turn verifier is an environment whose first step is
final; a multi-turn one (tool use) returns observation messages and ``done=False`` until the
episode ends. Batching and concurrency are the rollout layer's job: ``step`` handles one
action of one episode, and may be awaited concurrently for many.

Environments also generate the tiny world's data from a seed: RL tasks with verifiable
answers (``generate``), demonstrations with worked reasoning traces (``demonstrate``) and
wrong solutions for preference pairs (``corrupt``), plus ``self_checks`` that
``align envs test NAME`` runs before a long job.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant"|"tool", "content": str}


@dataclass(frozen=True)
class Task:
    """One problem. ``answer`` is the gold (JSON-serializable); ``meta`` is free for the env."""

    id: str
    env: str
    prompt: list[Message]
    answer: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "env": self.env, "prompt": self.prompt, "answer": self.answer, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        return cls(id=str(d["id"]), env=d["env"], prompt=list(d["prompt"]), answer=d.get("answer"), meta=dict(d.get("meta") or {}))


@dataclass
class StepResult:
    """The outcome of one action.

    ``reward`` is the environment's score for the episode so far (used when ``done``);
    ``correct`` is whether the final answer is right (None: not applicable);
    ``observation`` holds messages (usually ``role="tool"``) appended before the next policy turn.
    """

    reward: float
    done: bool
    observation: list[Message] = field(default_factory=list)
    correct: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SelfCheck:
    """An example with known outcome: ``actions`` played in order must end ``expect_correct``."""

    task: Task
    actions: list[str]
    expect_correct: bool
    note: str = ""


class NoParams(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


@runtime_checkable
class Environment(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None: ...

    def reset(self, task: Task) -> list[Message]:
        """Opening messages for the policy (without the system turn's toggle/budget prefix)."""
        ...

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        """Score one policy turn. ``history`` is everything before ``action``."""
        ...

    def generate(self, n: int, seed: int) -> list[Task]:
        """``n`` tiny-world tasks, deterministic in ``seed``."""
        ...

    def demonstrate(self, task: Task) -> list[Message]:
        """A correct solution: assistant turns (with a ``<think>`` trace) and any tool turns between."""
        ...

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        """A plausible but wrong solution, same shape as ``demonstrate`` (for preference pairs)."""
        ...

    def self_checks(self) -> list[SelfCheck]: ...


async def safe_step(env: Environment, task: Task, history: list[Message], action: str) -> StepResult:
    """``env.step`` that never raises: a crash scores the sample as failed, with the error kept.

    A failing sample must never kill a run; the traceback travels in ``info["error"]`` so the
    driver can log it against the sample id.
    """
    try:
        result = await env.step(task, history, action)
        if not isinstance(result, StepResult):
            raise TypeError(f"{type(env).__name__}.step returned {type(result).__name__}, expected StepResult")
        return result
    except Exception as e:  # noqa: BLE001 - plugin code may raise anything
        return StepResult(
            reward=0.0,
            done=True,
            correct=False,
            info={"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "task_id": task.id, "env": env.name},
        )
