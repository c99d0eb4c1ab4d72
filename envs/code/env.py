"""The ``code`` environment: extract the program from a completion and run the task's tests in
the sandbox (see :mod:`envs.sandbox` for what is and is not contained).

Single-turn: the first step is final. Reward is the fraction of tests passed (``reward="fraction"``,
a denser signal for small models) or 1/0 (``reward="binary"``); ``correct`` means every test
passed. ``info["status"]`` is the sandbox status of the first failing execution (``ok`` if none).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from envs.base import Message, SelfCheck, StepResult, Task
from envs.code import generate
from envs.grades import GRADE_WEIGHTS_FIELD, check_grade_weights
from envs.code.harness import build_runs, corrupt_program, count_passed, extract_code, failure_reason
from envs.sandbox import SandboxConfig, SandboxPool, SandboxResult, shared_pool


class CodeParams(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    reward: Literal["fraction", "binary"] = "fraction"
    timeout_s: float = Field(default=10.0, gt=0, description="wall clock per sandbox execution")
    memory_mb: int = Field(default=512, ge=64, description="address-space limit per execution")
    max_concurrency: int | None = Field(default=None, ge=1, description="sandbox executions at once (default: CPU cores)")
    allow_rlimits_only: bool = Field(default=False, description="run without bwrap if it cannot start (no isolation; warns)")
    grade_weights: dict[int, float] = GRADE_WEIGHTS_FIELD

    @model_validator(mode="after")
    def _grades(self) -> "CodeParams":
        check_grade_weights("code", self.grade_weights, generate.GRADES)
        return self


class CodeEnv:
    name: ClassVar[str] = "code"
    description: ClassVar[str] = "write Python that passes unit tests (HumanEval/MBPP asserts, stdin/stdout cases), run in a bwrap sandbox"
    Params: ClassVar[type[BaseModel]] = CodeParams

    def __init__(self, params: CodeParams | None = None) -> None:
        self.params = params or CodeParams()
        self.sandbox_config = SandboxConfig(
            timeout_s=self.params.timeout_s,
            memory_mb=self.params.memory_mb,
            allow_rlimits_only=self.params.allow_rlimits_only,
        )

    @property
    def pool(self) -> SandboxPool:
        """The process-wide sandbox pool (made on first use, so listing tasks starts no threads)."""
        return shared_pool(self.params.max_concurrency)

    def reset(self, task: Task) -> list[Message]:
        return [dict(m) for m in task.prompt]

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        code = extract_code(action)
        tests = task.meta.get("tests")
        if not tests:
            raise ValueError(f"task {task.id}: meta['tests'] is missing; a code task needs tests to be scored")
        if code is None:
            info = {"status": "no_code", "passed": 0, "total": _total(tests), "reason": "no code in the answer"}
            return StepResult(reward=0.0, done=True, correct=False, info=info)
        return await self.score_code(code, tests)

    async def score_code(self, code: str, tests: dict[str, Any]) -> StepResult:
        """Run ``code`` against ``tests``; the executions of one sample run concurrently."""
        runs = build_runs(code, tests)
        results: list[SandboxResult] = await asyncio.gather(*(self.pool.arun(r.program, stdin=r.stdin, config=self.sandbox_config) for r in runs))
        passed = sum(count_passed(run, res.status, res.stdout) for run, res in zip(runs, results))
        total = sum(run.n_tests for run in runs)
        failing = next((res for run, res in zip(runs, results) if count_passed(run, res.status, res.stdout) < run.n_tests), None)
        correct = total > 0 and passed == total
        reward = (passed / total if total else 0.0) if self.params.reward == "fraction" else float(correct)
        info: dict[str, Any] = {
            "status": "ok" if failing is None else failing.status,
            "passed": passed,
            "total": total,
            "wall_s": round(max((r.wall_s for r in results), default=0.0), 4),
        }
        info["reason"] = f"passed {passed}/{total} tests"
        if failing is not None:
            info["stderr"] = failing.stderr[-1000:]
            info["reason"] += "; " + failure_reason(tests, failing.status, failing.stderr)
        return StepResult(reward=reward, done=True, correct=correct, info=info)

    def generate(self, n: int, seed: int) -> list[Task]:
        return generate.tiny_tasks(n, seed, self.params.grade_weights)

    def demonstrate(self, task: Task) -> list[Message]:
        if task.answer is None:
            raise ValueError(f"task {task.id}: no reference program to demonstrate")
        think = task.meta.get("think", "write the function")
        return [{"role": "assistant", "content": generate.render(think, str(task.answer))}]

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        think = task.meta.get("think", "write the function")
        wrong = task.meta.get("wrong")
        if wrong:
            program = rng.choice(list(wrong))
        else:
            entry = (task.meta.get("tests") or {}).get("entry_point")
            if not entry:
                raise ValueError(f"task {task.id}: cannot corrupt without meta['wrong'] or an entry_point")
            program = corrupt_program(str(task.answer), entry)
        return [{"role": "assistant", "content": generate.render(think, program)}]

    def self_checks(self) -> list[SelfCheck]:
        rng = random.Random(0)
        checks: list[SelfCheck] = []
        for task in generate.tiny_tasks(4, seed=1234):
            checks.append(SelfCheck(task, [self.demonstrate(task)[0]["content"]], True, f"{task.meta['family']}: reference"))
            checks.append(SelfCheck(task, [self.corrupt(task, rng)[0]["content"]], False, f"{task.meta['family']}: wrong program"))
        exit_hack = generate.tiny_tasks(1, seed=99)[0]
        checks.append(SelfCheck(exit_hack, ["```python\nimport sys\nsys.exit(0)\n```"], False, "sys.exit(0) must not pass"))
        checks.append(SelfCheck(exit_hack, ["<think>no idea"], False, "unclosed thinking: no code"))
        io_task = generate.io_example()
        checks.append(SelfCheck(io_task, ["```python\nprint(int(input()) * 2)\n```"], True, "stdin/stdout: right"))
        checks.append(SelfCheck(io_task, ["```python\nprint(int(input()) + 2)\n```"], False, "stdin/stdout: wrong"))
        return checks


def _total(tests: dict[str, Any]) -> int:
    kind = tests.get("kind")
    if kind == "asserts":
        return len(tests.get("asserts", []))
    if kind == "io":
        return len(tests.get("cases", []))
    return 1
