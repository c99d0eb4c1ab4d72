"""ChatEnv: the tiny world's helpfulness prompts, with preference pairs whose truth is known.

Prompts come from single-turn task generators (``math``, ``instruction_following``), so the
tiny policy already speaks them. Each task draws the kind of its preference pair from its id:

- ``wrong``: a wrong answer (the source's corruption: a slipped digit; for instruction
  following, a broken constraint);
- ``padded``: the right answer with filler sentences after it (concise beats padded).

The environment's own reward is 0 by default: this is the RLHF family, where a reward function
(the ``genrm`` reward, a judge model) scores answers. ``correct`` still comes from the source's
verifier, so logs show the true quality next to the judged one; ``verifier_reward: true`` turns
that into the reward instead.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from align.data.generated import split_counts
from envs.base import Message, SelfCheck, StepResult, Task, TaskSource, task_source
from envs.registry import ENVS, make_env

PAIR_KINDS = ("wrong", "padded")
FILLER = (
    "I hope this helps.",
    "Let me know if you need more.",
    "That is my answer.",
    "Thanks for asking.",
)
Source = Literal["math", "instruction_following"]


def pad(message: Message, rng: random.Random) -> Message:
    """``message`` with one or two filler sentences after its answer."""
    extra = " ".join(rng.sample(FILLER, rng.randint(1, 2)))
    return {**message, "content": f"{message['content']} {extra}"}


class ChatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[Source, float] = Field(default_factory=lambda: {"math": 0.5, "instruction_following": 0.5}, min_length=1)
    # Share of tasks whose preference pair is padded-vs-concise (the rest: wrong-vs-right).
    padded_fraction: float = Field(0.5, ge=0, le=1)
    verifier_reward: bool = False
    # Each source's own params, e.g. {math: {grade_weights: {1: 4, 2: 4, 3: 2, 4: 1}}}: RLHF on
    # prompts the policy can often answer, so the judge has right answers to grade (recipes/tiny-rlhf.yaml).
    source_params: dict[Source, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check_sources(self) -> "ChatParams":
        for name, params in self.source_params.items():
            ENVS.validate_params(name, params)  # a bad field raises, naming the source and field; ChatEnv.source builds it
        return self


class ChatEnv:
    """Helpfulness prompts from the single-turn generators; reward 0 (a judge scores them) unless ``verifier_reward``."""

    name: ClassVar[str] = "chat"
    description: ClassVar[str] = "Open-ended helpfulness prompts for RLHF with a GenRM; pairs: wrong vs right, padded vs concise."
    Params: ClassVar[type[BaseModel]] = ChatParams

    def __init__(self, params: ChatParams | None = None) -> None:
        self.params = params or ChatParams()
        self._sources: dict[str, TaskSource] = {}

    def source(self, name: str) -> TaskSource:
        if name not in self._sources:
            self._sources[name] = task_source(make_env(name, self.params.source_params.get(name)))
        return self._sources[name]

    @staticmethod
    def inner(task: Task) -> Task:
        if "source_task" not in task.meta:
            raise ValueError(f"task {task.id}: a chat task needs meta.source_task (generated chat tasks have it)")
        return Task.from_dict(task.meta["source_task"])

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        inner = self.inner(task)
        result = await self.source(inner.env).step(inner, history, action)  # type: ignore[attr-defined]
        info = {**result.info, "verifier_reward": result.reward}
        reward = result.reward if self.params.verifier_reward else 0.0
        return StepResult(reward=reward, done=True, correct=result.correct, info=info)

    def generate(self, n: int, seed: int) -> list[Task]:
        counts = split_counts(dict(self.params.sources), n)
        tasks = []
        for name, k in counts.items():
            for inner in self.source(name).generate(k, seed) if k else []:
                rng = random.Random(f"chat:{inner.id}")
                kind = "padded" if rng.random() < self.params.padded_fraction else "wrong"
                meta = {"source_task": inner.to_dict(), "pair_kind": kind}
                tasks.append(Task(id=f"chat-{inner.id}", env=self.name, prompt=list(inner.prompt), answer=inner.answer, meta=meta))
        random.Random(f"chat:mix:{seed}").shuffle(tasks)
        return tasks

    def demonstrate(self, task: Task) -> list[Message]:
        inner = self.inner(task)
        return self.source(inner.env).demonstrate(inner)

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        """The worse answer of the task's pair: padded (``pair_kind: padded``) or wrong."""
        inner = self.inner(task)
        if task.meta.get("pair_kind") == "padded":
            good = self.source(inner.env).demonstrate(inner)
            return [*good[:-1], pad(good[-1], rng)]
        return self.source(inner.env).corrupt(inner, rng)

    def self_checks(self) -> list[SelfCheck]:
        env = ChatEnv(ChatParams(verifier_reward=True))
        checks = []
        for task in env.generate(6, seed=0):
            checks.append(SelfCheck(task, [env.demonstrate(task)[-1]["content"]], True, f"demonstration of {task.id}"))
            if task.meta["pair_kind"] == "wrong":
                bad = env.corrupt(task, random.Random(0))[-1]["content"]
                checks.append(SelfCheck(task, [bad], False, f"wrong answer of {task.id}"))
        return checks
