"""Reasoning control: the toggle, the budget-token ladder, and the think-tag helpers.

One place for these so that the tokenizer, the SFT data pipeline, rollouts, rewards and evals
agree on them. The system turn carries ``/think`` or ``/no_think`` and, optionally, one budget
token from a fixed ladder; a budget N given by a user rounds *up* to the ladder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_ON = "/think"
THINK_OFF = "/no_think"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

BUDGET_LADDER: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def budget_token(budget: int) -> str:
    return f"<|budget_{budget}|>"


BUDGET_TOKENS: tuple[str, ...] = tuple(budget_token(b) for b in BUDGET_LADDER)
_BUDGET_RE = re.compile(r"<\|budget_(\d+)\|>")


def round_budget(budget: int) -> int:
    """The smallest ladder step >= ``budget``; the top of the ladder for anything larger.

    >>> round_budget(50), round_budget(64), round_budget(10**6)
    (64, 64, 16384)
    """
    if budget < 1:
        raise ValueError(f"a thinking budget must be a positive number of tokens, got {budget}")
    for step in BUDGET_LADDER:
        if budget <= step:
            return step
    return BUDGET_LADDER[-1]


@dataclass(frozen=True)
class ReasoningMode:
    """What the system turn asks for: thinking on/off and an optional budget (a ladder step)."""

    thinking: bool = True
    budget: int | None = None


def parse_mode(system_text: str) -> ReasoningMode:
    """Read the toggle and budget back from a rendered system turn (or prompt text).

    >>> parse_mode("/think <|budget_64|>\\nYou are helpful.")
    ReasoningMode(thinking=True, budget=64)
    >>> parse_mode("/no_think")
    ReasoningMode(thinking=False, budget=None)
    """
    thinking = THINK_OFF not in system_text
    m = _BUDGET_RE.search(system_text)
    return ReasoningMode(thinking=thinking, budget=int(m.group(1)) if m else None)


_THINK_RE = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split an assistant text into (thinking, answer). Thinking is None when there is no block.

    An unclosed ``<think>`` counts as all thinking and no answer.

    >>> split_thinking("<think>2+2=4</think>The answer is 4")
    ('2+2=4', 'The answer is 4')
    >>> split_thinking("4")
    (None, '4')
    """
    m = _THINK_RE.search(text)
    if m:
        return m.group(1), (text[: m.start()] + text[m.end() :]).strip()
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1], ""
    return None, text.strip()
