"""Difficulty grades of the tiny world (envs/grades.py): every built-in generator produces each
of its grades, follows ``grade_weights``, rejects weights it cannot draw, and its traces grow
with the grade so that the budget ladder 16/32/64 has a use for each step."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from align.plugins import PluginParamsError
from align.reasoning import split_thinking
from envs.registry import make_env

GRADES = {"math": {1, 2, 3, 4}, "code": {1, 2, 3}, "tool_use": {1, 2, 3}, "instruction_following": {1, 2, 3}}


@pytest.mark.parametrize("name", sorted(GRADES))
def test_generators_produce_each_grade_and_follow_the_weights(name: str) -> None:
    counts = Counter(t.meta["grade"] for t in make_env(name).generate(400, seed=3))
    assert set(counts) == GRADES[name]
    assert min(counts.values()) > 400 / len(counts) / 2  # uniform by default: no grade starved
    easy_first = {g: (8.0 if g == 1 else 1.0) for g in GRADES[name]}
    weighted = Counter(t.meta["grade"] for t in make_env(name, {"grade_weights": easy_first}).generate(400, seed=3))
    assert weighted[1] > 0.6 * 400 and set(weighted) == GRADES[name]
    hard = max(GRADES[name])
    only_hard = {t.meta["grade"] for t in make_env(name, {"grade_weights": {hard: 1.0}}).generate(50, seed=3)}
    assert only_hard == {hard}


@pytest.mark.parametrize("name", sorted(GRADES))
def test_hard_grades_demonstrate_right_and_corrupt_wrong(name: str) -> None:
    env = make_env(name, {"grade_weights": {max(GRADES[name]): 1.0}})
    rng = random.Random(0)

    async def play(task, turns):  # noqa: ANN001, ANN202 - test helper
        history, result = env.reset(task), None
        for action in turns:
            result = await env.step(task, history, action)
            history = [*history, {"role": "assistant", "content": action}, *result.observation]
            if result.done:
                break
        return result

    for task in env.generate(20, seed=5):
        good = [m["content"] for m in env.demonstrate(task) if m["role"] == "assistant"]
        bad = [m["content"] for m in env.corrupt(task, rng) if m["role"] == "assistant"]
        assert asyncio.run(play(task, good)).correct is True, (task, good)
        assert asyncio.run(play(task, bad)).correct is False, (task, bad)


def test_weights_the_generator_cannot_draw_are_refused() -> None:
    with pytest.raises(PluginParamsError, match=r"math: grade_weights names grades \[7\]"):
        make_env("math", {"grade_weights": {7: 1.0}})
    with pytest.raises(PluginParamsError, match="must be >= 0 with a positive sum"):
        make_env("code", {"grade_weights": {1: 0.0, 2: 0.0}})
    with pytest.raises(PluginParamsError, match=r"grade_weights names grades \[3\]"):
        make_env("tool_use", {"kinds": ["calculator", "lookup_calc"], "grade_weights": {3: 1.0}})


def test_math_traces_span_the_budget_ladder() -> None:
    """Level 1 fits budget 16, level 2 needs 32, level 3 16 or 32, level 4 64 (thinking tokens, as a rollout counts them)."""
    from align.tiny.tokenizer import train_tokenizer
    from align.tiny.world import world_texts

    tok = train_tokenizer(world_texts(tasks_per_env=200))
    env = make_env("math")
    need: dict[int, set[int]] = {}
    for task in env.generate(300, seed=9):
        thinking, _ = split_thinking(env.demonstrate(task)[0]["content"])
        n = len(tok.encode(thinking, add_special_tokens=False))
        need.setdefault(task.meta["grade"], set()).add(next(b for b in (16, 32, 64, 10**9) if n <= b))
    assert need == {1: {16}, 2: {32}, 3: {16, 32}, 4: {64}}
