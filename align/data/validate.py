"""Row checks for the three row shapes: SFT conversations, preference pairs, attribute ratings.

Each check raises :class:`DataError` with a reason and returns nothing; where the row came
from is added by :func:`align.data.errors.check_rows`. The checks are the contract the
tokenizers rely on: a row that passes renders through the chat template without surprises.

Shapes (the ones TRL and the Hugging Face hub use):

- SFT: ``{"messages": [{"role", "content"}, ...]}`` with optional ``enable_thinking`` (bool)
  and ``thinking_budget`` (tokens; rounded up to the ladder when rendered) columns.
- Preference, conversational: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``;
  a response may also be a plain string (one assistant turn). Without ``prompt``, ``chosen`` and
  ``rejected`` are whole conversations and their shared leading turns are the prompt (TRL's
  "implicit prompt"). Preference, standard: ``{"prompt": str, "chosen": str, "rejected": str}``,
  plain text with no chat template.
- Attributes: ``{"prompt": str | [messages], "response": str, "attributes": {name: float}}``.

Limits: only ``role`` and ``content`` are checked; other message keys (``tool_calls``,
``name``) pass through to the chat template untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from align.data.errors import DataError
from align.reasoning import split_thinking

ROLES = ("system", "user", "assistant", "tool")
Messages = list[dict[str, Any]]


def _type(x: Any) -> str:
    return type(x).__name__


def check_messages(messages: Any, field: str = "messages", *, allow_system: bool = True) -> None:
    """A list of ``{"role", "content"}`` dicts with known roles, string content, system only first."""
    if not isinstance(messages, list):
        raise DataError(f"{field} is a {_type(messages)}, expected a list of {{role, content}} objects")
    if not messages:
        raise DataError(f"{field} is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{field}[{i}] is a {_type(m)}, expected an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"{field}[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if role == "system" and (i > 0 or not allow_system):
            raise DataError(f"{field}[{i}] is a system turn; only the first turn of a prompt may be one")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{field}[{i}] ({role}) has content of type {_type(m.get('content'))}, expected a string")


def _check_assistant_turns(messages: Messages, field: str) -> None:
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise DataError(f"{field} has no assistant turn, so nothing would be trained")
    for i in assistant:
        if not messages[i]["content"].strip():
            raise DataError(f"{field}[{i}] is an empty assistant turn")


def check_thinking_controls(row: dict[str, Any]) -> None:
    """``enable_thinking`` is a bool (or absent/None); ``thinking_budget`` a positive int (or absent/None)."""
    flag = row.get("enable_thinking")
    if flag is not None and not isinstance(flag, bool):
        raise DataError(f"enable_thinking is {flag!r}, expected true, false or null")
    budget = row.get("thinking_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise DataError(f"thinking_budget is {budget!r}, expected a positive number of tokens or null")


def _require_object(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"the row is a {_type(row)}, expected an object")
    return row


def validate_sft_row(row: Any) -> None:
    """Raise :class:`DataError` unless ``row`` is a trainable SFT conversation."""
    row = _require_object(row)
    if "messages" not in row or row["messages"] is None:
        raise DataError(f"missing 'messages' (columns present: {', '.join(sorted(row)) or 'none'})")
    check_messages(row["messages"])
    _check_assistant_turns(row["messages"], "messages")
    check_thinking_controls(row)
    if row.get("enable_thinking") is False:
        for i, m in enumerate(row["messages"]):
            if m["role"] == "assistant" and (trace := split_thinking(m["content"])[0]) is not None and trace.strip():
                raise DataError(
                    f"enable_thinking is false but messages[{i}] holds a <think> trace, which would teach thinking "
                    "when told not to; strip it (align.data.strip_thinking) or set enable_thinking to true"
                )


@dataclass(frozen=True)
class PairParts:
    """A preference row resolved to one format: messages (``chat``) or raw text (``text``)."""

    format: Literal["chat", "text"]
    prompt: Messages | str
    chosen: Messages | str
    rejected: Messages | str


def _response(value: Any, field: str) -> Messages | str:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{field} is an empty response")
        return value
    check_messages(value, field, allow_system=False)
    _check_assistant_turns(value, field)
    return value


def pair_parts(row: Any) -> PairParts:
    """Resolve a preference row's format (see the module docstring); raise :class:`DataError` if bad."""
    row = _require_object(row)
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise DataError(f"missing '{key}' (columns present: {', '.join(sorted(row)) or 'none'})")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise DataError("missing 'prompt' (only conversational chosen/rejected lists may leave it implicit)")
        check_messages(chosen, "chosen")
        check_messages(rejected, "rejected")
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        while n > 0 and chosen[n - 1]["role"] == "assistant":  # the prompt ends before a response
            n -= 1
        if n == 0:
            raise DataError("no 'prompt', and chosen and rejected share no leading turns to use as one")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if isinstance(prompt, str):
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            raise DataError("prompt is plain text but chosen/rejected are not; use strings for all three or messages")
        if not prompt.strip():
            raise DataError("prompt is empty")
        fmt: Literal["chat", "text"] = "text"
    else:
        check_messages(prompt, "prompt")
        fmt = "chat"
    chosen_r, rejected_r = _response(chosen, "chosen"), _response(rejected, "rejected")
    if fmt == "chat":
        chosen_r = _as_turns(chosen_r)
        rejected_r = _as_turns(rejected_r)
    if chosen_r == rejected_r:
        raise DataError("chosen and rejected are identical, so the pair carries no preference")
    check_thinking_controls(row)
    return PairParts(fmt, prompt, chosen_r, rejected_r)


def _as_turns(response: Messages | str) -> Messages:
    return [{"role": "assistant", "content": response}] if isinstance(response, str) else response


def validate_preference_row(row: Any) -> None:
    """Raise :class:`DataError` unless ``row`` is a usable preference pair."""
    pair_parts(row)


def check_prompt_response(row: dict[str, Any]) -> None:
    """A rated row's ``prompt`` (text or messages) and ``response`` (text) are present and not empty.

    Shared by attribute rows and HelpSteer rows (:mod:`align.data.helpsteer`).

    >>> check_prompt_response({"prompt": "q", "response": " "})
    Traceback (most recent call last):
    ...
    align.data.errors.DataError: response is ' ', expected a non-empty string
    """
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError("prompt is empty")
    else:
        check_messages(prompt, "prompt")
    if not isinstance(row["response"], str) or not row["response"].strip():
        raise DataError(f"response is {row['response']!r}, expected a non-empty string")


def validate_attribute_row(row: Any, attribute_names: Sequence[str] | None = None) -> None:
    """Raise :class:`DataError` unless ``row`` has a prompt, a response and finite ratings.

    ``attribute_names``: every one must be rated (partial labels are refused, not guessed).
    """
    row = _require_object(row)
    for key in ("prompt", "response", "attributes"):
        if row.get(key) is None:
            raise DataError(f"missing '{key}' (columns present: {', '.join(sorted(row)) or 'none'})")
    check_prompt_response(row)
    attrs = row["attributes"]
    if not isinstance(attrs, dict):
        raise DataError(f"attributes is a {_type(attrs)}, expected an object of name -> number")
    for name in attribute_names if attribute_names is not None else list(attrs):
        value = attrs.get(name)
        if value is None:
            raise DataError(f"attribute {name!r} is missing (rated: {', '.join(sorted(k for k, v in attrs.items() if v is not None))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"attribute {name!r} is {value!r}, expected a finite number")
    check_thinking_controls(row)
