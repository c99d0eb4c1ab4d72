"""Scoring one turn against a ground-truth function call (public tool-calling data, OpenAI shape).

A task from :mod:`envs.tool_use.dataset` carries ``meta["functions"]`` (the tools' OpenAI
``function`` objects: name, description, JSON-schema ``parameters``) and
``meta["expected_calls"]`` (``[{"name", "arguments"}]``), or no expected call and a final
``answer``. The policy answers in one turn: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
for each call, or ``\\boxed{answer}``. The tools are never run: their implementations are not
in the data.

``correct``: the calls equal the expected ones as a multiset (same names, arguments equal as
JSON values after parsing, so key order and ``3`` vs ``3.0`` do not matter; extra or missing
calls are wrong), or, with no call expected, no call and the final answer matching
(:func:`envs.tool_use.tools.answers_match`). Reward is 1 or 0. ``info["reason"]`` says why in
words; argument schema violations (a missing required argument, a wrong type) are named there.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import jsonschema

from align.reasoning import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, split_thinking
from envs.base import Message, StepResult, Task
from envs.tool_use.tools import answers_match, extract_boxed, format_call, has_tool_call


def normalize_call(call: Any) -> dict[str, Any]:
    """``{"name", "arguments": dict}`` from an OpenAI tool call (``{"type": "function", "function":
    {...}}``) or a bare ``{"name", "arguments"}``; ``arguments`` may be a JSON string. Raises ValueError."""
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ValueError('a call is {"name": ..., "arguments": {...}}')
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"arguments of {call['name']} are not JSON: {e.msg}") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {call['name']} must be an object")
    return {"name": call["name"], "arguments": args}


def schema_problem(call: dict[str, Any], functions: dict[str, dict[str, Any]]) -> str | None:
    """Why ``call`` does not fit the tools (unknown function, arguments against its JSON schema), or None."""
    fn = functions.get(call["name"])
    if fn is None:
        return f"unknown function {call['name']!r} (tools: {', '.join(functions)})"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(fn.get("parameters") or {}).iter_errors(call["arguments"]))
    return None if error is None else f"{call['name']} arguments: {error.message}"


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _key(call: dict[str, Any]) -> str:
    return json.dumps([call["name"], _canonical(call["arguments"])], sort_keys=True)


def render(calls: list[dict[str, Any]]) -> str:
    """Calls as short text: ``get_weather({"city": "Paris"})``."""
    return ", ".join(f"{c['name']}({json.dumps(c['arguments'], sort_keys=True)})" for c in calls) or "no call"


def parse_calls(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The calls in ``text`` and the errors of those that do not parse (an unclosed call is one)."""
    calls, errors = [], []
    for chunk in text.split(TOOL_CALL_OPEN)[1:]:
        body, closed, _ = chunk.partition(TOOL_CALL_CLOSE)
        if not closed:
            errors.append(f"unclosed {TOOL_CALL_OPEN}")
            continue
        try:
            calls.append(normalize_call(json.loads(body)))
        except json.JSONDecodeError as e:
            errors.append(f"bad JSON in tool call: {e.msg}")
        except ValueError as e:
            errors.append(str(e))
    return calls, errors


def score_turn(task: Task, action: str) -> StepResult:
    """The verdict on one turn of a function-calling task (see the module docstring)."""
    _, answer = split_thinking(action)
    calls, errors = parse_calls(answer)
    functions = {f["name"]: f for f in task.meta["functions"]}
    expected = list(task.meta["expected_calls"])
    extracted: str | None = render(calls) if calls else None
    if expected:
        problems = [p for p in (schema_problem(c, functions) for c in calls) if p]
        correct = not errors and Counter(map(_key, calls)) == Counter(map(_key, expected))
        if correct:
            reason = f"expected call(s) made: {render(expected)}"
        elif errors:
            reason = f"malformed tool call ({errors[0]}); expected {render(expected)}"
        else:
            reason = f"wrong tool call: expected {render(expected)}, got {render(calls)}" + (f"; {problems[0]}" if problems else "")
    elif calls or errors or has_tool_call(answer):
        correct, reason = False, f"called {render(calls) if calls else 'a tool (malformed)'}; expected a final answer, no call"
    else:
        extracted = extract_boxed(answer) or (answer.strip() or None)
        correct = extracted is not None and answers_match(extracted, str(task.answer))
        reason = f"final answer {extracted!r} {'matches' if correct else 'does not match'} {str(task.answer)!r}"
    return StepResult(reward=float(correct), done=True, correct=correct, info={"reason": reason, "extracted": extracted})


def reference_turn(task: Task) -> list[Message]:
    """The ground truth as an assistant turn: the expected calls, or the boxed final answer."""
    expected = task.meta["expected_calls"]
    if expected:
        calls = "".join(format_call(c["name"], c["arguments"]) for c in expected)
        return [{"role": "assistant", "content": "<think>call the tools</think>" + calls}]
    return [{"role": "assistant", "content": f"<think></think>\\boxed{{{task.answer}}}"}]
