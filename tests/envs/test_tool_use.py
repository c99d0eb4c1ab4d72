"""The tool_use environment: a full multi-turn episode, malformed calls, the turn limit, the
safe calculator, the sandboxed python tool, and the tiny world's demonstrations."""

from __future__ import annotations

import asyncio
import random

import pytest

from envs.base import Message, StepResult, Task
from envs.tool_use import ToolUseEnv, ToolUseParams
from envs.tool_use.env import answers_match, extract_boxed
from envs.tool_use.generate import tiny_tasks
from envs.tool_use.tools import CalculatorError, calculate, run_calculator

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "37*41"}}</tool_call>'


@pytest.fixture(scope="module")
def env() -> ToolUseEnv:
    return ToolUseEnv(ToolUseParams(max_concurrency=2))


def calc_task() -> Task:
    return Task(
        id="calc",
        env="tool_use",
        prompt=[{"role": "user", "content": "Use the calculator: 37*41"}],
        answer="1517",
        meta={"kind": "calculator", "tools": ["calculator"], "think": "multiply", "call": {"name": "calculator", "arguments": {"expression": "37*41"}}},
    )


def play(env: ToolUseEnv, task: Task, actions: list[str]) -> tuple[list[StepResult], list[Message]]:
    """Play assistant turns in order, appending observations, as the rollout layer does."""

    async def run() -> tuple[list[StepResult], list[Message]]:
        history = env.reset(task)
        results = []
        for action in actions:
            result = await env.step(task, history, action)
            results.append(result)
            history = [*history, {"role": "assistant", "content": action}, *result.observation]
            if result.done:
                break
        return results, history

    return asyncio.run(run())


def test_full_episode(env: ToolUseEnv) -> None:
    task = calc_task()
    opening = env.reset(task)
    assert len(opening) == 1 and opening[0]["role"] == "user"
    assert opening[0]["content"].startswith("Tools: calculator(expression).") and opening[0]["content"].endswith("Use the calculator: 37*41")
    assert task.prompt[0]["content"] == "Use the calculator: 37*41"  # reset does not mutate the task

    results, history = play(env, task, [f"<think>multiply</think>{CALL}", "<think></think>\\boxed{1517}"])
    first, last = results
    assert (first.done, first.observation) == (False, [{"role": "tool", "content": "1517"}])
    assert (last.done, last.correct, last.reward) == (True, True, 1.0)
    assert last.info == {"reason": "answer", "turns": 2, "answer": "1517", "tool_calls": 1, "malformed": 0, "well_formed": 1.0}
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]


def test_wrong_answer_keeps_the_format_credit(env: ToolUseEnv) -> None:
    results, _ = play(env, calc_task(), [CALL, "\\boxed{1518}"])
    assert (results[-1].correct, results[-1].reward) == (False, pytest.approx(0.2))


def test_answer_without_any_call_gets_no_format_credit(env: ToolUseEnv) -> None:
    results, _ = play(env, calc_task(), ["<think></think>\\boxed{1517}"])
    assert (results[0].done, results[0].correct, results[0].reward) == (True, True, pytest.approx(0.8))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("<tool_call>{not json}</tool_call>", "bad JSON"),
        ('<tool_call>["calculator"]</tool_call>', '{"name": ..., "arguments": {...}}'),
        ('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>', "unknown tool 'search'; available: calculator"),
        ('<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>', "unknown tool 'python'"),
        ('<tool_call>{"name": "calculator", "arguments": {}}</tool_call>', "wrong arguments: calculator takes {'expression': str}"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": 5}}</tool_call>', "wrong arguments"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "1", "x": "2"}}</tool_call>', "wrong arguments"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "37*41"}}', "unclosed <tool_call>"),
    ],
)
def test_malformed_calls_get_error_observations(env: ToolUseEnv, call: str, error: str) -> None:
    results, _ = play(env, calc_task(), [call, CALL, "\\boxed{1517}"])
    first, second, last = results
    assert first.done is False and len(first.observation) == 1
    assert first.observation[0]["role"] == "tool"
    assert first.observation[0]["content"].startswith("error: ") and error in first.observation[0]["content"]
    assert second.observation == [{"role": "tool", "content": "1517"}]
    assert (last.correct, last.info["tool_calls"], last.info["malformed"], last.info["well_formed"]) == (True, 2, 1, 0.5)
    assert last.reward == pytest.approx(0.8 + 0.2 * 0.5)


def test_arguments_as_a_json_string_and_several_calls_in_one_turn(env: ToolUseEnv) -> None:
    as_string = '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2+3\\"}"}</tool_call>'
    results, _ = play(env, calc_task(), [as_string + CALL])
    assert [m["content"] for m in results[0].observation] == ["5", "1517"]


def test_turn_limit_ends_the_episode() -> None:
    env = ToolUseEnv(ToolUseParams(max_turns=3))
    results, _ = play(env, calc_task(), [CALL, CALL, CALL, "\\boxed{1517}"])
    assert len(results) == 3
    assert [r.done for r in results] == [False, False, True]
    last = results[-1]
    assert (last.correct, last.info["reason"], last.info["turns"], last.info["answer"]) == (False, "turn_limit", 3, None)
    assert last.observation == []


def test_calculator_is_safe() -> None:
    assert calculate("37*41") == 1517
    assert calculate("(2+3)*-4 // 3 % 5") == (2 + 3) * -4 // 3 % 5
    assert run_calculator("6/3") == "2" and run_calculator("7/2") == "3.5" and run_calculator("2^10") == "1024"
    assert run_calculator("sqrt(2)") == "1.414213562"
    hostiles = ["__import__('os').system('true')", "().__class__.__bases__", "9**9**9", "10**100", "1/0", "x"]
    hostiles += ["open('/etc/passwd')", "True+1", "'a'*3", "[1]*9**9", "(lambda: 1)()"]
    for hostile in hostiles:
        with pytest.raises(CalculatorError):
            calculate(hostile)
    assert run_calculator("1/0") == "error: division by zero"


def test_lookup(env: ToolUseEnv) -> None:
    task = tiny_tasks(2, seed=0)[1]
    assert task.meta["kind"] == "lookup"
    key = task.meta["call"]["arguments"]["key"]
    call = f'<tool_call>{{"name": "lookup", "arguments": {{"key": "{key.upper()}"}}}}</tool_call>'
    missing = '<tool_call>{"name": "lookup", "arguments": {"key": "Atlantis"}}</tool_call>'
    results, _ = play(env, task, [call + missing, f"\\boxed{{{task.answer}}}"])
    assert [m["content"] for m in results[0].observation] == [task.answer, "not found: Atlantis"]
    assert results[-1].correct is True
    assert task.answer not in env.reset(task)[0]["content"]  # only reachable through the tool


def test_python_tool_runs_in_the_sandbox(env: ToolUseEnv) -> None:
    task = tiny_tasks(1, seed=0, kinds=("python",))[0]

    def call(code: str) -> str:
        import json

        return f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>"

    results, _ = play(env, task, [call("print(6*7)") + call("1/0") + call("import os; print(os.listdir(os.path.expanduser('~')))")])
    outputs = [m["content"] for m in results[0].observation]
    assert outputs[0] == "42"
    assert outputs[1] == "error (error): ZeroDivisionError: division by zero"
    assert outputs[2] == "['main.py']"  # home is the sandbox's private /tmp, holding only the program


def test_demonstrations_score_right_and_corruptions_wrong(env: ToolUseEnv) -> None:
    tasks = tiny_tasks(30, seed=1, kinds=("calculator", "lookup", "python"))
    rng = random.Random(0)
    for task in tasks:
        demo = env.demonstrate(task)
        assert [m["role"] for m in demo] == ["assistant", "tool", "assistant"]
        results, history = play(env, task, [m["content"] for m in demo if m["role"] == "assistant"])
        assert results[-1].correct is True and results[-1].reward == 1.0, task.id
        assert history[2] == demo[1]  # the demonstration's tool turn is exactly what the env returns
        bad = env.corrupt(task, rng)
        assert [m["role"] for m in bad] == ["assistant", "tool", "assistant"]
        results, history = play(env, task, [m["content"] for m in bad if m["role"] == "assistant"])
        assert results[-1].correct is False, (task.id, bad)
        assert history[2] == bad[1]


def test_demonstration_shape() -> None:
    env = ToolUseEnv()
    demo = env.demonstrate(calc_task())
    assert demo == [
        {"role": "assistant", "content": f"<think>multiply</think>{CALL}"},
        {"role": "tool", "content": "1517"},
        {"role": "assistant", "content": "<think></think>\\boxed{1517}"},
    ]


def test_self_checks(env: ToolUseEnv) -> None:
    for check in env.self_checks():
        results, _ = play(env, check.task, check.actions)
        assert results[-1].done and results[-1].correct == check.expect_correct, check.note


def test_answer_helpers() -> None:
    assert extract_boxed("x \\boxed{1} then \\boxed{ 2 }") == "2"
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert answers_match("1517.0", "1517") and answers_match("-3", "-3") and answers_match("3/2", "1.5")
    assert not answers_match("1516", "1517") and not answers_match("Paris", "Rome")
    assert answers_match("  new   york ", "New York")


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown task kinds"):
        ToolUseEnv(ToolUseParams(kinds=("calculator", "weather")))


def test_chain_keys_are_two_digit_numbers_copied_from_the_prompt() -> None:
    """What a chain's calls carry is digits of the prompt and of tool results, as they stand (issue 20:
    invented names of several tokens were beyond the tiny policy)."""
    env = ToolUseEnv()
    for task in tiny_tasks(60, seed=4, kinds=("lookup", "lookup_calc", "lookup2_calc")):
        prompt = task.prompt[0]["content"]
        keys = task.meta.get("keys") or [task.meta["call"]["arguments"]["key"]]
        assert all(k.isdigit() and len(k) == 2 and f" {k}" in prompt for k in keys), (prompt, keys)
        calls = [m["content"] for m in env.demonstrate(task) if m["role"] == "assistant"][0]
        assert all(f'"key": "{k}"' in calls for k in keys)
