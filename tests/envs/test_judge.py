"""The judge environment: GenRM RL tasks from known-truth pairs; reward = agreement + format."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from envs.chat import ChatEnv
from envs.judge import JudgeEnv, JudgeParams
from envs.registry import ENVS, register_env


@pytest.fixture(autouse=True)
def chat_registered():
    """The judge's pairs come from the chat env by name: registered explicitly, so this runs before a reinstall adds the entry point."""
    register_env(ChatEnv)
    yield
    ENVS.unregister("chat")


def test_tasks_mix_orders_and_labels_match_the_target() -> None:
    env = JudgeEnv()
    tasks = env.generate(60, seed=2)
    assert [t.id for t in tasks] == [t.id for t in env.generate(60, seed=2)]
    orders = Counter(t.meta["order"] for t in tasks)
    assert 15 < orders["chosen_a"] < 45  # both positions, for the better answer
    for t in tasks:
        assert t.answer == (1 if t.meta["order"] == "chosen_a" else -1)
        assert t.prompt[0]["content"].startswith("Compare two answers")


def test_reward_is_agreement_plus_format() -> None:
    env = JudgeEnv(JudgeParams(format_weight=0.25))
    task = env.generate(1, seed=0)[0]
    good = env.demonstrate(task)[0]["content"]
    flipped = env.corrupt(task, random.Random(0))[0]["content"]

    def play(text: str) -> tuple[float, bool | None]:
        r = asyncio.run(env.step(task, [], text))
        return r.reward, r.correct

    assert play(good) == (1.25, True)
    assert play(flipped) == (0.25, False)
    assert play("<think>tie</think>[[A=3 B=3]]") == (0.25, False)
    assert play("<think>no verdict</think>A is better") == (0.0, False)
    assert play(good + "\n[[A=3 B=3]]") == (0.0, False)  # two verdicts: malformed
