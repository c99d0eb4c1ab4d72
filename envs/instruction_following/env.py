"""InstructionFollowingEnv: single-turn answers scored by code-checked constraints.

The answer is the text after the think block (an unclosed block leaves no answer). Reward is
the fraction of the task's constraints the answer meets (IFEval's instruction-level score), or
with ``reward: all`` 1.0 only when it meets every one (prompt-level, what ``correct`` means).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from align.reasoning import THINK_CLOSE, THINK_OPEN, split_thinking
from envs.base import Message, SelfCheck, StepResult, Task
from envs.instruction_following.constraints import parse_constraints, score
from envs.grades import GRADE_WEIGHTS_FIELD, check_grade_weights, draw_grade
from envs.instruction_following.generator import GRADES, TEMPLATES, Template, make_graded_spec, templates_of_grade

EXAMPLES_PATH = Path(__file__).parent / "data" / "examples.jsonl"


def load_examples(path: Path = EXAMPLES_PATH) -> list[Task]:
    with open(path) as f:
        return [Task.from_dict(json.loads(line)) for line in f if line.strip()]


def _reply(plan: str, answer: str) -> list[Message]:
    return [{"role": "assistant", "content": f"{THINK_OPEN}{plan}{THINK_CLOSE}{answer}"}]


class InstructionFollowingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Generated tasks are drawn uniformly from these templates (envs/instruction_following/generator.py).
    templates: tuple[Template, ...] = Field(TEMPLATES, min_length=1)
    grade_weights: dict[int, float] = GRADE_WEIGHTS_FIELD
    # fraction: partial credit per constraint met. all: 1.0 when every constraint is met, else 0.
    # With partial credit an answer that keeps the easy constraints and drops the hard one (the
    # keyword kept, the word count wrong) still earns most of the reward, so RL has little reason
    # to get the hard one right; the evaluation counts only answers that meet all of them.
    reward: Literal["fraction", "all"] = "fraction"

    @model_validator(mode="after")
    def _grades(self) -> "InstructionFollowingParams":
        check_grade_weights("instruction_following", self.grade_weights, offered_grades(self.templates))
        return self


def offered_grades(templates: tuple[str, ...]) -> list[int]:
    return [g for g in GRADES if templates_of_grade(g, templates)]


class InstructionFollowingEnv:
    """IFEval-style constraints checked by code; reward is the fraction met."""

    name: ClassVar[str] = "instruction_following"
    description: ClassVar[str] = "IFEval-style constraints checked by code (words, keywords, JSON, bullets, case); reward = fraction met."
    Params: ClassVar[type[BaseModel]] = InstructionFollowingParams

    def __init__(self, params: InstructionFollowingParams | None = None) -> None:
        self.params = params or InstructionFollowingParams()
        self.grades = offered_grades(self.params.templates)

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        constraints = parse_constraints(task.answer)
        _, answer = split_thinking(action)
        met = score(answer, constraints)
        correct = bool(met) and all(met)
        if self.params.reward == "all":
            reward = float(correct)
        else:
            reward = sum(met) / len(met) if met else 0.0
        info = {
            "answer": answer,
            "met": [{"kind": c.kind, "ok": ok} for c, ok in zip(constraints, met)],
            "failed": [c.describe() for c, ok in zip(constraints, met) if not ok],
        }
        info["reason"] = f"unmet: {'; '.join(info['failed'])}" if info["failed"] else f"met all {len(met)} constraints"
        return StepResult(reward=reward, done=True, correct=correct, info=info)

    def generate(self, n: int, seed: int) -> list[Task]:
        rng = random.Random(seed)
        tasks = []
        for i in range(n):
            grade = draw_grade(rng, self.grades, self.params.grade_weights) if len(self.grades) > 1 else 1
            spec = make_graded_spec(rng.choice(templates_of_grade(grade, self.params.templates)), grade, rng)
            meta = {"template": spec.template, "grade": grade, "plan": spec.plan, "demonstration": spec.good, "corruptions": list(spec.bad)}
            prompt = [{"role": "user", "content": spec.prompt}]
            tasks.append(Task(id=f"if-s{seed}-{i}", env=self.name, prompt=prompt, answer=spec.constraints, meta=meta))
        return tasks

    def demonstrate(self, task: Task) -> list[Message]:
        """Needs ``meta.demonstration`` (generated tasks have it): constraints alone do not say what to write."""
        if "demonstration" not in task.meta:
            raise ValueError(f"task {task.id}: instruction_following can only demonstrate tasks with meta.demonstration")
        return _reply(task.meta.get("plan", "follow the rules"), task.meta["demonstration"])

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        if not task.meta.get("corruptions"):
            raise ValueError(f"task {task.id}: instruction_following can only corrupt tasks with meta.corruptions")
        return _reply(task.meta.get("plan", "follow the rules"), rng.choice(task.meta["corruptions"]))

    def self_checks(self) -> list[SelfCheck]:
        rng = random.Random(0)
        checks = []
        generated = []
        for template in TEMPLATES:
            generated += InstructionFollowingEnv(InstructionFollowingParams(templates=(template,))).generate(1, seed=len(generated))
        for task in generated + load_examples():
            checks.append(SelfCheck(task, [self.demonstrate(task)[0]["content"]], True, f"demonstration of {task.id}"))
            for bad in task.meta["corruptions"]:
                checks.append(SelfCheck(task, [_reply("plan", bad)[0]["content"]], False, f"corruption of {task.id}: {bad[:30]!r}"))
        t = generated[0]
        checks.append(SelfCheck(t, [f"<think>plan {t.meta['demonstration']}"], False, "unclosed think block has no answer"))
        checks.append(SelfCheck(t, ["<think>plan</think>"], False, "empty answer meets nothing"))
        return checks
