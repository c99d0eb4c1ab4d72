"""The environment contract: what a plugin author implements.

An environment (:class:`Environment`) has four members: ``name``, a ``Params`` model, ``reset``
(a :class:`Task` -> opening messages) and async ``step`` (scores one policy action). A
single-turn verifier is an environment whose first step is final; a multi-turn one (tool use)
returns observation messages and ``done=False`` until the episode ends. Batching and concurrency
are the rollout layer's job: ``step`` handles one action of one episode, and may be awaited
concurrently for many. ``description`` is optional (``align envs list`` falls back to the
docstring).

Two optional protocols on top:

- :class:`SelfChecking`: ``self_checks()``, known-good and known-bad actions that ``align envs
  test NAME`` plays before a long job. A minimal verifier is the four members plus this.
- :class:`TaskSource` (includes ``self_checks``): the tiny world's data from a seed, namely RL
  tasks with verifiable answers (``generate``), demonstrations with worked reasoning traces
  (``demonstrate``) and wrong solutions for preference pairs (``corrupt``). Generated data,
  held-out tasks and RL task streams without a ``data_path`` need it; :func:`task_source` says so
  to the user when an environment lacks it.

Everything a verifier needs is importable from here (``split_thinking`` and the think/tool tags).
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from align.errors import AlignError
from align.reasoning import THINK_CLOSE, THINK_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ReasoningMode, split_thinking

__all__ = [
    "THINK_CLOSE", "THINK_OPEN", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "Environment", "Message", "NoParams", "NoTaskSourceError", "ReasoningMode",
    "SelfCheck", "SelfChecking", "StepResult", "Task", "TaskSource", "safe_step", "split_thinking", "task_source",
]  # fmt: skip

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
    ``info["blame"]`` (optional, with a wrong answer): the ``(start, end)`` characters of the
    action that made it wrong, such as its first false step (envs/math/steps.py); the rollout
    turns it into completion tokens for GRPO's ``credit: blamed_step``.
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
    """The contract: what the registry checks and the rollout layer calls."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None: ...

    def reset(self, task: Task) -> list[Message]:
        """Opening messages for the policy (without the system turn's toggle/budget prefix)."""
        ...

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        """Score one policy turn. ``history`` is everything before ``action``."""
        ...


@runtime_checkable
class SelfChecking(Protocol):
    def self_checks(self) -> list[SelfCheck]:
        """Examples with known outcomes, played by ``align envs test``."""
        ...


@runtime_checkable
class TaskSource(SelfChecking, Protocol):
    """An environment that also generates the tiny world's tasks, demonstrations and corruptions."""

    def generate(self, n: int, seed: int) -> list[Task]:
        """``n`` tiny-world tasks, deterministic in ``seed``."""
        ...

    def demonstrate(self, task: Task) -> list[Message]:
        """A correct solution: assistant turns (with a ``<think>`` trace) and any tool turns between."""
        ...

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        """A plausible but wrong solution, same shape as ``demonstrate`` (for preference pairs)."""
        ...


class NoTaskSourceError(AlignError, TypeError):
    """An environment without a task generator was asked for generated tasks."""


def task_source(env: Environment) -> TaskSource:
    """``env`` as a :class:`TaskSource`, or an error that says what is missing and what to do."""
    if isinstance(env, TaskSource):
        return env
    missing = [m for m in ("generate", "demonstrate", "corrupt", "self_checks") if not callable(getattr(env, m, None))]
    raise NoTaskSourceError(
        f"environment '{env.name}' generates no tasks (it lacks {', '.join(missing)} of envs.base.TaskSource); "
        "give its tasks from a file (envs[].data_path, data.path) or implement those methods"
    )


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
