"""JudgeEnv: the GenRM's own RL stage. A task is a judge prompt (question, answer A, answer B)
built from a preference pair; the policy is the judge, and its reward is agreement with the pair's
label plus a format term.

Reward: ``format_weight`` when the verdict parses (:func:`rewards.genrm.verdict.parse_verdict`:
strict, the last line of the answer, exactly one), plus 1.0 when its preference is the label's
(a tie is not agreement). ``correct``: it agreed. A malformed verdict scores 0.

Tasks come from a task family with known-truth pairs (``source``, default ``chat``), each shown in
one order drawn from its id, so half the tasks have the better answer as B (position bias is
trained against, not into). ``demonstrate`` is the judgement SFT target; ``corrupt`` flips it.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from envs.base import Message, SelfCheck, StepResult, Task, TaskSource, task_source
from envs.registry import make_env
from rewards.genrm.data import judgement_rows
from rewards.genrm.verdict import Verdict, judgement, parse_verdict


def judge_tasks(pairs: list[dict[str, Any]], show_thinking: bool = False) -> list[Task]:
    """Two judge tasks per preference pair (``prompt``, ``chosen``, ``rejected``, optional ``id``
    and ``pair_kind``): chosen as A, then chosen as B. ``align rm`` with an RL stage writes a
    job's train pairs this way, so the judge's RL sees the pairs its SFT saw, in both orders.
    """
    tasks = []
    for i, row in enumerate(judgement_rows(pairs, show_thinking)):
        pair = pairs[i // 2]
        meta = {"target": row["messages"][-1]["content"], "order": row["order"], "pair_kind": pair.get("pair_kind")}
        tasks.append(Task(id=f"judge-{pair.get('id', i // 2)}-{row['order']}", env="judge", prompt=row["messages"][:-1], answer=row["label"], meta=meta))
    return tasks


class JudgeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = "chat"  # a task family whose generate/demonstrate/corrupt give the pairs
    format_weight: float = Field(0.2, ge=0)
    show_thinking: bool = False  # the judge reads the responses' thinking (rewards.genrm.verdict.shown)


class JudgeEnv:
    """Judge a preference pair; reward = agreement with its label + a parseable verdict."""

    name: ClassVar[str] = "judge"
    description: ClassVar[str] = "GenRM training: judge a known-truth preference pair; reward = agreement with the label + format."
    Params: ClassVar[type[BaseModel]] = JudgeParams

    def __init__(self, params: JudgeParams | None = None) -> None:
        self.params = params or JudgeParams()
        self._source: TaskSource | None = None

    def source(self) -> TaskSource:
        if self._source is None:
            self._source = task_source(make_env(self.params.source))
        return self._source

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        verdict = parse_verdict(action)
        label = int(task.answer)
        if verdict is None:
            return StepResult(reward=0.0, done=True, correct=False, info={"reason": "malformed verdict", "label": label})
        agree = verdict.preference == label
        reward = self.params.format_weight + float(agree)
        return StepResult(reward=reward, done=True, correct=agree, info={"verdict": [verdict.a, verdict.b], "label": label})

    def generate(self, n: int, seed: int) -> list[Task]:
        src = self.source()
        pairs = [
            {"prompt": src.reset(inner), "chosen": src.demonstrate(inner), "rejected": src.corrupt(inner, random.Random(f"corrupt:{inner.id}")),
             "pair_kind": inner.meta.get("pair_kind"), "id": inner.id}
            for inner in src.generate(n, seed)
        ]  # fmt: skip
        both = judge_tasks(pairs, self.params.show_thinking)  # chosen as A, then chosen as B, per pair
        return [both[2 * i + random.Random(f"judge:order:{p['id']}").randrange(2)] for i, p in enumerate(pairs)]

    def demonstrate(self, task: Task) -> list[Message]:
        return [{"role": "assistant", "content": task.meta["target"]}]

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        """The verdict the other way round (same reasoning): the judge's typical position mistake."""
        del rng
        v = parse_verdict(task.meta["target"])
        assert v is not None  # targets are written by judgement()
        return [{"role": "assistant", "content": judgement("The other answer is worse.", v.swapped())}]

    def self_checks(self) -> list[SelfCheck]:
        checks = []
        for task in self.generate(4, seed=0):
            checks.append(SelfCheck(task, [self.demonstrate(task)[0]["content"]], True, f"target verdict of {task.id}"))
            checks.append(SelfCheck(task, [self.corrupt(task, random.Random(0))[0]["content"]], False, f"flipped verdict of {task.id}"))
            checks.append(SelfCheck(task, [f"{self.demonstrate(task)[0]['content']}\n{Verdict(3, 3).render()}"], False, "two verdicts"))
        return checks
