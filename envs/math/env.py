"""MathEnv: single-turn math with a verifiable final answer.

The policy's final answer is read from the text outside its thinking (the last ``\\boxed{}``,
else math-verify's extraction) and compared to the gold answer by :func:`envs.math.verify.grade`.
Reward is 1.0 for an equivalent answer and 0.0 otherwise (including no answer and an unclosed
think block); ``info`` carries the extracted answer, a reason and which tier decided.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from align.reasoning import THINK_CLOSE, THINK_OPEN
from envs.base import Message, SelfCheck, StepResult, Task
from envs.grades import GRADE_WEIGHTS_FIELD, check_grade_weights, draw_grade
from envs.math.generator import LEVELS, make_problem, prompt_text, solve, worked_trace
from envs.math.steps import first_false_step
from envs.math.verify import DEFAULT_TIMEOUT_S, fast_grade, grade, plain_number

EXAMPLES_PATH = Path(__file__).parent / "data" / "examples.jsonl"


def load_examples(path: Path = EXAMPLES_PATH) -> list[Task]:
    with open(path) as f:
        return [Task.from_dict(json.loads(line)) for line in f if line.strip()]


def _solution(trace: str, answer: object) -> list[Message]:
    return [{"role": "assistant", "content": f"{THINK_OPEN}{trace}{THINK_CLOSE}\\boxed{{{answer}}}"}]


class MathParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Generated tasks are drawn from these levels (see envs/math/generator.py), weighted by
    # grade_weights (a level is a grade; empty: uniform).
    difficulty: tuple[Literal[1, 2, 3, 4], ...] = Field(LEVELS, min_length=1)
    grade_weights: dict[int, float] = GRADE_WEIGHTS_FIELD
    # Per-answer limit for the math-verify tier; a comparison that runs over scores 0.
    verify_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)

    @model_validator(mode="after")
    def _grades(self) -> "MathParams":
        check_grade_weights("math", self.grade_weights, self.difficulty)
        return self


class MathEnv:
    """Arithmetic and linear equations with worked traces; any math answer for loaded data."""

    name: ClassVar[str] = "math"
    description: ClassVar[str] = "Final answers (\\boxed{}) checked for equivalence by math-verify; tiny world: arithmetic, ax+b=c."
    Params: ClassVar[type[BaseModel]] = MathParams

    def __init__(self, params: MathParams | None = None) -> None:
        self.params = params or MathParams()

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        gold = str(task.answer)
        verdict = fast_grade(action, gold)
        if verdict is None:
            verdict = await asyncio.to_thread(grade, action, gold, self.params.verify_timeout_s)
        info = {"extracted": verdict.extracted, "reason": verdict.reason, "gold": gold, "method": verdict.method}
        if verdict.error:
            info["verify_error"] = verdict.error
        if not verdict.equal and (span := first_false_step(action)) is not None:
            info["blame"] = span  # step-level credit (envs/math/steps.py)
        return StepResult(reward=1.0 if verdict.equal else 0.0, done=True, correct=verdict.equal, info=info)

    def generate(self, n: int, seed: int) -> list[Task]:
        rng = random.Random(seed)
        tasks = []
        for i in range(n):
            meta = make_problem(draw_grade(rng, self.params.difficulty, self.params.grade_weights), rng)
            prompt = [{"role": "user", "content": prompt_text(meta)}]
            tasks.append(Task(id=f"math-s{seed}-{i}", env=self.name, prompt=prompt, answer=str(solve(meta)), meta=meta))
        return tasks

    def demonstrate(self, task: Task) -> list[Message]:
        if "op" in task.meta:
            trace, answer = worked_trace(task.meta)
            return _solution(trace, answer)
        return _solution(task.meta.get("trace", f"answer {task.answer}"), task.answer)

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        """A wrong solution; tasks without generator meta get the gold answer plus one."""
        gold = str(task.answer)
        if "op" in task.meta:
            for _ in range(8):
                trace, wrong = worked_trace(task.meta, rng)
                if str(wrong) != gold:
                    return _solution(trace, wrong)
        number = plain_number(gold)
        trace = task.meta.get("trace", f"answer {gold}")
        if number is not None and number.value.denominator == 1 and not number.percent:
            return _solution(trace, int(number.value) + rng.choice([-1, 1]))
        return _solution(trace, f"{gold}+1")

    def self_checks(self) -> list[SelfCheck]:
        rng = random.Random(0)
        checks = []
        generated = MathEnv(MathParams(difficulty=(1, 2, 3))).generate(6, seed=0)
        for task in generated + load_examples():
            checks.append(SelfCheck(task, [self.demonstrate(task)[0]["content"]], True, f"demonstration of {task.id}"))
            checks.append(SelfCheck(task, [self.corrupt(task, rng)[0]["content"]], False, f"corruption of {task.id}"))
        t = generated[0]
        gold = t.answer
        checks += [
            SelfCheck(t, [f"<think>hmm</think>The answer is {gold}."], True, "plain 'the answer is' form"),
            SelfCheck(t, [f"<think>so {gold}"], False, "unclosed think block has no answer"),
            SelfCheck(t, ["<think>easy</think>I do not know"], False, "no answer at all"),
            SelfCheck(t, [f"<think>x</think>\\boxed{{{gold}}} or \\boxed{{{int(gold) + 1}}}"], False, "last boxed answer counts"),
        ]
        return checks
