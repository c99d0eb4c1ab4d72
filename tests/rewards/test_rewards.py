"""Reward functions: format, reasoning budget, DAPO length penalty, and the combiner."""

from __future__ import annotations

import doctest
import importlib
import logging
import math
from typing import ClassVar

import pytest
from pydantic import BaseModel

from align.plugins import PluginParamsError
from align.reasoning import ReasoningMode
from envs.base import NoParams, Task
from rewards.base import RewardFn, RewardInput
from rewards.budget import BudgetParams, ReasoningBudgetReward
from rewards.combine import RewardFnError, combine
from rewards.format import FormatReward, well_formed
from rewards.length import LengthParams, LengthReward
from rewards.registry import make_reward
from rewards.testing import trajectory


@pytest.mark.parametrize("module", ["rewards.format", "rewards.budget", "rewards.length", "rewards.combine"])
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_every_builtin_reward_satisfies_the_protocol() -> None:
    for name in ("format", "reasoning_budget", "length"):
        fn = make_reward(name)
        assert isinstance(fn, RewardFn)
        assert fn.name == name


# ------------------------------------------------------------------ format

FORMAT_CASES = [
    ("<think>2+2=4</think>4", True, True),
    ("  <think>2+2=4</think>\n4  ", True, True),
    ("<think></think>4", True, True),
    ("<think>2+2=4</think>", True, False),
    ("<think>2+2=4</think>   ", True, False),
    ("<think>2+2=4", True, False),
    ("4", True, False),
    ("4</think>", True, False),
    ("answer <think>x</think>4", True, False),
    ("<think>a</think><think>b</think>4", True, False),
    ("<think>a<think>b</think>4", True, False),
    ("</think><think>a</think>4", True, False),
    ("4", False, True),
    ("<think></think>4", False, True),
    ("<think>thought anyway</think>4", False, True),
    ("", False, False),
    ("<think></think>", False, False),
]


@pytest.mark.parametrize("text,thinking,expected", FORMAT_CASES)
def test_well_formed(text: str, thinking: bool, expected: bool) -> None:
    assert well_formed(text, thinking) is expected


def test_format_judges_every_policy_turn_of_a_multi_turn_episode() -> None:
    task = Task("t", "tool_use", [{"role": "system", "content": "tools"}, {"role": "user", "content": "2+3?"}])
    good_turns = [
        {"role": "assistant", "content": '<think>use the tool</think><tool_call>{"name": "add"}</tool_call>'},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "<think>got 5</think>5"},
    ]
    bad_turns = [{"role": "assistant", "content": '<tool_call>{"name": "add"}</tool_call>'}, *good_turns[1:]]
    # An assistant turn inside the prompt (a few-shot example) is not the policy's and is not judged.
    few_shot = Task("t", "tool_use", [{"role": "assistant", "content": "no think block"}, *task.prompt])
    mode = ReasoningMode()
    batch = [
        RewardInput(task, task.prompt + good_turns, "", mode),
        RewardInput(task, task.prompt + bad_turns, "", mode),
        RewardInput(few_shot, few_shot.prompt + good_turns, "", mode),
    ]
    assert FormatReward().score(batch) == [1.0, 0.0, 1.0]


def test_format_min_answer_chars() -> None:
    fn = make_reward("format", {"min_answer_chars": 3})
    assert fn.score([trajectory("<think>x</think>42"), trajectory("<think>x</think>420")]) == [0.0, 1.0]


# ------------------------------------------------------------------ budget


def test_budget_penalties() -> None:
    fn = ReasoningBudgetReward(BudgetParams(forced_close_penalty=0.3, overrun_penalty=0.4, no_think_penalty=2.0))
    batch = [
        trajectory("<think>a</think>4", budget=100, thinking_tokens=100),  # budget rounds up to 128: within
        trajectory("<think>a</think>4", budget=128, thinking_tokens=160),  # 32/128 over
        trajectory("<think>a</think>4", budget=128, thinking_tokens=1000),  # over by more than the budget: capped
        trajectory("<think>a</think>4", budget=128, thinking_tokens=128, forced_close=True),
        trajectory("<think>a</think>4", budget=128, thinking_tokens=192, forced_close=True),
        trajectory("4", thinking=False),
        trajectory("<think> \n</think>4", thinking=False),
        trajectory("4", thinking=False, thinking_tokens=3),  # counted by the rollout even if not in the text
        trajectory("<think>x</think>4", thinking=False),
        trajectory("<think>a</think>4", thinking_tokens=10_000),  # thinking on, no budget: not applicable
    ]
    expected = [0.0, -0.1, -0.4, -0.3, -0.5, 0.0, 0.0, -2.0, -2.0, None]
    got = fn.score(batch)
    assert [None if g is None else pytest.approx(g) for g in got] == expected
    assert got[0] == 0.0 and math.copysign(1, got[0]) == 1  # no -0.0 in logs


# ------------------------------------------------------------------ length


def test_length_ramp_matches_dapo() -> None:
    fn = LengthReward(LengthParams(buffer_tokens=50))
    lengths = [0, 150, 151, 175, 199, 200, 250]
    got = fn.score([trajectory("x", completion_tokens=n, max_new_tokens=200) for n in lengths])
    # DAPO eq. 13 with L_max = 200, L_cache = 50: 0 up to 150, (150 - |y|) / 50 up to 200, -1 beyond.
    assert got == [0.0, 0.0, pytest.approx(-0.02), pytest.approx(-0.5), pytest.approx(-0.98), -1.0, -1.0]


def test_length_cap_from_params_truncation_and_no_cap() -> None:
    fn = make_reward("length", {"buffer_tokens": 10, "max_new_tokens": 100, "penalty": 0.5})
    got = fn.score(
        [
            trajectory("x", completion_tokens=95, max_new_tokens=4096),  # params' cap wins
            trajectory("x", completion_tokens=20, max_new_tokens=100, truncated=True),
        ]
    )
    assert got == [pytest.approx(-0.25), -0.5]
    assert LengthReward().score([trajectory("x", completion_tokens=10)]) == [None]
    assert LengthReward(LengthParams(buffer_tokens=64)).score([trajectory("x", completion_tokens=8, max_new_tokens=16)]) == [
        pytest.approx(-0.5)
    ]


def test_reward_params_are_strict() -> None:
    with pytest.raises(PluginParamsError, match=r"reward function 'length'[\s\S]*buffer: unknown field \(did you mean 'buffer_tokens'\?\)"):
        make_reward("length", {"buffer": 10})
    with pytest.raises(PluginParamsError, match="forced_close_penalty"):
        make_reward("reasoning_budget", {"forced_close_penalty": -1})


# ------------------------------------------------------------------ combine


class _Const:
    name: ClassVar[str] = "const"
    description: ClassVar[str] = "returns fixed values"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, values: list) -> None:
        self.values = values

    def score(self, batch: list[RewardInput]) -> list[float | None]:
        return list(self.values)


def test_combine_weights_skips_none_and_keeps_raw_components(caplog) -> None:
    batch = [trajectory("a"), trajectory("b"), trajectory("c")]
    with caplog.at_level(logging.INFO, logger="rewards.combine"):
        totals, components = combine([(_Const([1.0, None, 0.5]), 2.0), (_Const([None, None, -1]), 0.5)], batch)
    assert totals == [2.0, 0.0, 0.5]
    assert components == {"const": [1.0, None, 0.5], "const#2": [None, None, -1.0]}
    logged = caplog.text
    assert "reward const (weight 2): mean 0.7500 over 2/3" in logged
    assert "reward const#2 (weight 0.5): mean -1.0000 over 1/3" in logged


def test_combine_with_the_builtins() -> None:
    batch = [
        trajectory("<think>a</think>4", budget=64, thinking_tokens=10, completion_tokens=20, max_new_tokens=100),
        trajectory("<think>a", budget=64, thinking_tokens=64, forced_close=True, completion_tokens=100, max_new_tokens=100, truncated=True),
    ]
    fns = [(make_reward("format"), 1.0), (make_reward("reasoning_budget"), 1.0), (make_reward("length"), 0.5)]
    totals, components = combine(fns, batch)
    assert components == {"format": [1.0, 0.0], "reasoning_budget": [0.0, -0.5], "length": [0.0, -1.0]}
    assert totals == [1.0, -1.0]


@pytest.mark.parametrize(
    "values,match",
    [([1.0], "returned 1 values for 2"), ([1.0, float("nan")], "returned nan for trajectory 1"), ([1.0, "x"], "returned 'x'")],
)
def test_combine_rejects_broken_reward_functions(values: list, match: str) -> None:
    with pytest.raises(RewardFnError, match=match):
        combine([(_Const(values), 1.0)], [trajectory("a"), trajectory("b")])


def test_combine_names_a_raising_reward_function() -> None:
    class Boom(_Const):
        name: ClassVar[str] = "boom"

        def score(self, batch):
            raise KeyError("missing column")

    with pytest.raises(RewardFnError, match="reward function 'boom' \\(Boom\\) raised KeyError"):
        combine([(Boom([]), 1.0)], [trajectory("a")])


# ------------------------------------------------------------------ shorter thinking pays under a small budget


def test_budget_share_penalty_makes_shorter_thinking_pay_in_group_advantages() -> None:
    """From the recipe's params to GRPO advantages: in a group of right answers at budget 16, the
    less of the budget a trajectory thought, the higher its advantage; wrong answers are not charged."""
    from align.algorithms.rl.batch import Scored, finalize
    from align.config.schema import GRPOSettings

    fn = make_reward("reasoning_budget", {"budget_share_penalty": 0.4})
    batch = [trajectory("<think>a</think>4", budget=16, thinking_tokens=n, correct=True, env_reward=1.0, forced_close=n == 16)
             for n in (4, 8, 12, 16)]  # fmt: skip
    extra, components = combine([(fn, 1.0)], batch)
    totals = [x.env_reward + e for x, e in zip(batch, extra)]
    assert components["reasoning_budget"] == pytest.approx([-0.1, -0.2, -0.3, -0.9])  # the forced one: 0.5 + 0.4
    group = finalize(Scored(trajectories=[_traj_stub() for _ in batch], rewards=totals), GRPOSettings())
    assert group.advantages == sorted(group.advantages, reverse=True) and group.advantages[0] > 0 > group.advantages[-1]
    # Per thinking token the cost is 1/budget of the penalty: 4x larger at 16 than at 64.
    small, large = fn.score([trajectory("<think>a</think>4", budget=b, thinking_tokens=8, correct=True) for b in (16, 64)])
    assert small == pytest.approx(4 * large)
    assert fn.score([trajectory("<think>a</think>5", budget=16, thinking_tokens=12, correct=False)]) == [0.0]
    assert ReasoningBudgetReward().score([trajectory("<think>a</think>4", budget=16, thinking_tokens=12, correct=True)]) == [0.0]


def _traj_stub():
    from types import SimpleNamespace

    return SimpleNamespace(truncated=False)


def test_budget_share_penalty_is_set_and_checked_from_the_recipe() -> None:
    from align.config import load_recipe
    from align.config.loader import RecipeError

    loaded = load_recipe("nano3-multienv-tiny", ["rewards=[{name: reasoning_budget, weight: 0.5, params: {budget_share_penalty: 0.3}}]"])
    (spec,) = loaded.recipe.rewards
    fn = make_reward(spec.name, spec.params)
    assert fn.params.budget_share_penalty == 0.3
    with pytest.raises(RecipeError, match=r"rewards\.0 \(reasoning_budget\)[\s\S]*budget_share_penalty"):
        load_recipe("nano3-multienv-tiny", ["rewards=[{name: reasoning_budget, params: {budget_share_penalty: -1}}]"])


def test_over_budget_penalty_charges_a_close_in_the_grace_window() -> None:
    """overrun_penalty is proportional, so the 1-3 tokens a grace window lets thinking run past the
    budget cost almost nothing; over_budget_penalty charges them as the evaluation's adherence does."""
    fn = make_reward("reasoning_budget", {"over_budget_penalty": 0.5})
    graced, on_time, forced = fn.score([
        trajectory("<think>a\n</think>4", budget=32, thinking_tokens=34, correct=True),
        trajectory("<think>a</think>4", budget=32, thinking_tokens=32, correct=True),
        trajectory("<think>a</think>4", budget=32, thinking_tokens=36, correct=True, forced_close=True),
    ])  # fmt: skip
    assert on_time == 0.0
    assert graced == pytest.approx(-(0.5 + 0.5 * 2 / 32)) and forced == pytest.approx(-(0.5 + 0.5 + 0.5 * 4 / 32))
    plain = ReasoningBudgetReward().score([trajectory("<think>a\n</think>4", budget=32, thinking_tokens=34, correct=True)])
    assert plain == [pytest.approx(-0.5 * 2 / 32)]  # off by default: the old, proportional charge only
