"""Shared fixtures for the environment tests."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest
from pydantic import BaseModel

from envs.base import Message, NoParams, SelfCheck, StepResult, Task


class CrashingEnv:
    name: ClassVar[str] = "crashing"
    description: ClassVar[str] = "raises in step"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel | None = None) -> None:
        self.calls = 0

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        self.calls += 1
        if action == "boom":
            raise ZeroDivisionError("plugin bug")
        if action == "wrong type":
            return {"reward": 1.0}  # type: ignore[return-value]
        return StepResult(reward=1.0, done=True, correct=True)

    def generate(self, n: int, seed: int) -> list[Task]:
        return [Task(id=f"crash-{seed}-{i}", env=self.name, prompt=[{"role": "user", "content": "go"}]) for i in range(n)]

    def demonstrate(self, task: Task) -> list[Message]:
        return [{"role": "assistant", "content": "fine"}]

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        return [{"role": "assistant", "content": "boom"}]

    def self_checks(self) -> list[SelfCheck]:
        task = self.generate(1, 0)[0]
        return [SelfCheck(task, ["fine"], True), SelfCheck(task, ["boom"], False, "crashes")]


@pytest.fixture
def crashing_env_cls() -> type:
    """An environment whose step raises on "boom" and returns a dict on "wrong type"."""
    return CrashingEnv
