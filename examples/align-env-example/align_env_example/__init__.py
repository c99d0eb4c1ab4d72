"""``reverse_word``: the full form of an align environment, to copy when writing your own.

The policy is asked to spell a word backwards; the answer after its think block must be the
reversed word (case and surrounding spaces ignored). The contract (``envs.base.Environment``) is
``name``, a strict ``Params`` model, ``reset`` and an async single-turn ``step``; this class also
is an ``envs.base.TaskSource``: a seeded task generator, demonstrations, corruptions for preference
pairs, and self-checks for ``align envs test``, so the tiny world can train on it.
``minimal.py`` is the smallest form: a verifier with the four members and self-checks.
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from align_env_example.minimal import ReverseWordVerifier
from envs.base import Message, SelfCheck, StepResult, Task, split_thinking

__all__ = ["ReverseWordEnv", "ReverseWordParams", "ReverseWordVerifier"]

WORDS = ("cat", "dog", "sun", "tree", "moon", "book", "bird", "lamp", "frog", "star", "rain", "milk")


class ReverseWordParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Generated words have at most this many letters.
    max_letters: int = Field(4, ge=2)


class ReverseWordEnv:
    name: ClassVar[str] = "reverse_word"
    description: ClassVar[str] = "Spell a short word backwards (example plugin from align-env-example)."
    Params: ClassVar[type[BaseModel]] = ReverseWordParams

    def __init__(self, params: ReverseWordParams | None = None) -> None:
        self.params = params or ReverseWordParams()

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        _, answer = split_thinking(action)
        correct = answer.strip().lower() == str(task.answer)
        return StepResult(reward=float(correct), done=True, correct=correct, info={"answer": answer})

    def generate(self, n: int, seed: int) -> list[Task]:
        rng = random.Random(seed)
        pool = [w for w in WORDS if len(w) <= self.params.max_letters]
        tasks = []
        for i in range(n):
            word = rng.choice(pool)
            prompt = [{"role": "user", "content": f"Reverse the word: {word}"}]
            tasks.append(Task(id=f"reverse-s{seed}-{i}", env=self.name, prompt=prompt, answer=word[::-1], meta={"word": word}))
        return tasks

    def _reply(self, word: str, answer: str) -> list[Message]:
        return [{"role": "assistant", "content": f"<think>{'-'.join(word)} backwards: {'-'.join(answer)}</think>{answer}"}]

    def demonstrate(self, task: Task) -> list[Message]:
        return self._reply(task.meta["word"], str(task.answer))

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        word, gold = task.meta["word"], str(task.answer)
        mistakes = [m for m in (word, gold[1:] + gold[0], gold[:-1]) if m != gold]
        return self._reply(word, rng.choice(mistakes))

    def self_checks(self) -> list[SelfCheck]:
        rng = random.Random(0)
        checks = []
        for task in self.generate(3, seed=0):
            checks.append(SelfCheck(task, [self.demonstrate(task)[0]["content"]], True, "demonstration"))
            checks.append(SelfCheck(task, [self.corrupt(task, rng)[0]["content"]], False, "corruption"))
        return checks
