"""Public tool-calling rows (OpenAI function-calling shape) as ``tool_use`` tasks.

Fields (map others with ``columns``, see :mod:`envs.public_data`):

- ``prompt`` (else ``question`` or ``query``): the request, a string or chat messages;
- ``tools``: a list (or a JSON string of a list, as xLAM stores it; ``None`` values, which a
  ``datasets`` table fills in for keys other tools have, are dropped) of
  ``{"type": "function", "function": {"name", "description", "parameters"}}`` where
  ``parameters`` is a JSON schema; a bare ``{"name", "description", "parameters"}`` is accepted;
- ``tool_calls`` (xLAM: ``answers``): the ground-truth calls, OpenAI ``{"type": "function",
  "function": {"name", "arguments"}}`` or bare ``{"name", "arguments"}``, ``arguments`` an object
  or a JSON string (keep it a string in a ``datasets`` table, whose schema would otherwise
  add every other call's keys as ``None``); or an empty list and an ``answer`` when the right move is to answer directly;
- ``answer``: the final answer when no call is expected;
- ``id``: optional.

Loading checks that every tool's ``parameters`` is a valid JSON schema and every ground-truth
call names a listed tool with arguments that fit its schema. The tools are described to the
policy in the prompt, as JSON, with the call syntax; scoring is
:mod:`envs.tool_use.function_calling` (one turn, the tools are not run).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from align.data.errors import DataError
from align.reasoning import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from envs.base import Message, Task
from envs.rows import prompt_messages
from envs.tool_use.function_calling import normalize_call, schema_problem

FIELDS: tuple[str, ...] = ("id", "prompt", "question", "query", "tools", "tool_calls", "answers", "answer")


def _json_list(row: dict[str, Any], name: str) -> list[Any] | None:
    value = row.get(name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"field {name!r}: not a JSON list ({e.msg})") from None
    if value is not None and not isinstance(value, list):
        raise DataError(f"field {name!r}: expected a list, got {type(value).__name__}")
    return value


def _drop_none(value: Any) -> Any:
    """A tools list read through ``datasets`` has every key of the union, the absent ones None."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _functions(row: dict[str, Any]) -> list[dict[str, Any]]:
    tools = _drop_none(_json_list(row, "tools"))
    if not tools:
        raise DataError("field 'tools': missing or empty; give the OpenAI tools list [{type: function, function: {...}}]")
    functions = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError(f"field 'tools': tool {i} is not {{type: function, function: {{name, description, parameters}}}}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as e:
            raise DataError(f"field 'tools': {fn['name']}'s parameters are not a JSON schema: {e.message}") from None
        functions.append({"name": fn["name"], "description": str(fn.get("description") or ""), "parameters": params})
    return functions


def _expected(row: dict[str, Any], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    name = "tool_calls" if row.get("tool_calls") is not None else "answers"
    raw = _json_list(row, name) or []
    by_name = {f["name"]: f for f in functions}
    calls = []
    for i, call in enumerate(raw):
        try:
            calls.append(normalize_call(call))
        except ValueError as e:
            raise DataError(f"field {name!r}: call {i}: {e}") from None
        problem = schema_problem(calls[-1], by_name)
        if problem:
            raise DataError(f"field {name!r}: call {i}: {problem}")
    return calls


def tools_prompt(functions: list[dict[str, Any]]) -> str:
    tools = json.dumps([{"type": "function", "function": f} for f in functions])
    return (
        f"Tools: {tools}\nCall a tool with {TOOL_CALL_OPEN}{{\"name\": ..., \"arguments\": {{...}}}}{TOOL_CALL_CLOSE} "
        "(one per call), or give the final answer in \\boxed{}."
    )


def _with_tools(prompt: list[Message], functions: list[dict[str, Any]]) -> list[Message]:
    first_user = next((i for i, m in enumerate(prompt) if m["role"] == "user"), None)
    if first_user is None:
        raise DataError("field 'prompt': no user message")
    out = [dict(m) for m in prompt]
    out[first_user]["content"] = tools_prompt(functions) + "\n" + out[first_user]["content"]
    return out


def to_task(row: dict[str, Any], index: int) -> Task:
    """One function-calling row as a single-turn ``tool_use`` task."""
    prompt = prompt_messages(row, ("prompt", "question", "query"))
    functions = _functions(row)
    expected = _expected(row, functions)
    answer = row.get("answer")
    if not expected and (answer is None or not str(answer).strip()):
        raise DataError("field 'tool_calls': no ground-truth call, and no 'answer' either; a row needs one of them")
    meta = {"functions": functions, "expected_calls": expected, "tool_required": bool(expected)}
    return Task(
        id=str(row.get("id") or f"tool_use-{index}"),
        env="tool_use",
        prompt=_with_tools(prompt, functions),
        answer=None if expected else str(answer),
        meta=meta,
    )
