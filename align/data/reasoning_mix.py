"""SFT transforms that teach reasoning control: thinking off, and traces cut at a budget.

Two pure row transforms (they return a new row and never mutate their input) and the mix
that applies them to a share of a data set (DESIGN.md, "Reasoning control"):

- :func:`strip_thinking`: drop every ``<think>...</think>`` block from the assistant turns and
  mark the row ``enable_thinking=False``; the chat template then opens each assistant turn
  with an empty ``<think></think>`` (outside the loss), the same prefix rollouts use.
- :func:`truncate_thinking`: pick a ladder budget the longest trace does not fit, cut every
  trace that does not fit to at most ``budget`` tokens (the thinking tokens between the tags,
  as a rollout counts them: rollout/episode.py), close it with ``</think>`` and keep the answer
  after it; the row gets ``thinking_budget`` = that step, so the system turn carries its budget
  token. The cut leaves up to a quarter of the budget unused (drawn per row), so the policy
  learns to close with a margin rather than at one exact count.
- :func:`fit_budget`: give the row the smallest ladder step its traces fit, or the next one,
  without cutting anything, so a budget token also appears where nothing had to be cut.

Limits: token counts assume ``<think>``/``</think>`` are added tokens (true of the tiny
tokenizer and of Qwen/Nemotron-style ones), so a trace tokenizes the same alone and in
context. A cut is re-encoded to check its length; when byte-level BPE merges differently at
the cut (rare), the nearest cut with fewer tokens is used instead of an exact one.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from align.config.schema import ReasoningDataConfig
from align.reasoning import BUDGET_LADDER, THINK_CLOSE, THINK_OPEN

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Row = dict[str, Any]
_BLOCK = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)


def _assistant_turns(row: Row) -> list[dict[str, Any]]:
    return [m for m in row["messages"] if m.get("role") == "assistant"]


def has_thinking(row: Row) -> bool:
    """Whether any assistant turn holds a closed, non-empty ``<think>`` block."""
    return any((m := _BLOCK.search(t["content"])) and m.group(1).strip() for t in _assistant_turns(row))


def strip_thinking(row: Row) -> Row | None:
    """The row in /no_think form: think blocks removed, ``enable_thinking=False``, no budget.

    None when a turn would be left empty (it held only thinking) or holds an unclosed ``<think>``.

    >>> strip_thinking({"messages": [{"role": "user", "content": "2+2?"},
    ...                              {"role": "assistant", "content": "<think>2+2=4</think>\\n4"}]})
    {'messages': [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}], 'enable_thinking': False, 'thinking_budget': None}
    """
    out = copy.deepcopy(row)
    for turn in _assistant_turns(out):
        text = _BLOCK.sub("", turn["content"]).strip()
        if THINK_OPEN in text or THINK_CLOSE in text or not text:
            return None
        turn["content"] = text
    out["enable_thinking"] = False
    out["thinking_budget"] = None
    return out


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _cut_to_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int], budget: int) -> str:
    """A prefix of the trace that encodes to exactly ``budget`` tokens (else the nearest below)."""

    def prefix(k: int) -> tuple[str, int]:
        text = tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text, len(_encode(tokenizer, text))

    for k in (budget, *range(budget - 1, max(budget - 8, 0), -1), *range(budget + 1, min(budget + 8, len(ids)))):
        text, n = prefix(k)
        if n == budget:
            return text
    for k in range(budget, 0, -1):
        text, n = prefix(k)
        if n <= budget:
            return text
    return ""


def _longest_trace(row: Row, tokenizer: PreTrainedTokenizerBase) -> int:
    longest = 0
    for turn in _assistant_turns(row):
        m = _BLOCK.search(turn["content"])
        if m:
            longest = max(longest, len(_encode(tokenizer, m.group(1))))
    return longest


def truncation_budgets(row: Row, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ladder steps below the longest trace's token count (empty: nothing to truncate)."""
    longest = _longest_trace(row, tokenizer)
    return [b for b in BUDGET_LADDER if b < longest]


def fit_budget(row: Row, tokenizer: PreTrainedTokenizerBase, rng: random.Random) -> Row | None:
    """The row with ``thinking_budget`` = the smallest ladder step its longest trace fits or
    the next one, traces unchanged; None for /no_think rows and rows without thinking.
    """
    if row.get("enable_thinking") is False or not has_thinking(row):
        return None
    need = _longest_trace(row, tokenizer)
    fitting = [b for b in BUDGET_LADDER if b >= need]
    if not fitting:
        return None
    out = copy.deepcopy(row)
    out["enable_thinking"] = True
    out["thinking_budget"] = rng.choice(fitting[:2])
    return out


def truncate_thinking(row: Row, tokenizer: PreTrainedTokenizerBase, rng: random.Random, budget: int | None = None) -> Row | None:
    """The row with its traces cut at a ladder budget (``budget``, or one drawn with ``rng``).

    None when the longest trace fits every ladder step (too short to truncate), ``budget``
    is not such a step, or the row asks for /no_think.
    """
    if row.get("enable_thinking") is False:
        return None
    steps = truncation_budgets(row, tokenizer)
    if not steps or (budget is not None and budget not in steps):
        return None
    step = budget if budget is not None else rng.choice(steps)
    out = copy.deepcopy(row)
    for turn in _assistant_turns(out):
        text = turn["content"]
        m = _BLOCK.search(text)
        if not m:
            continue
        ids = _encode(tokenizer, m.group(1))
        keep = step - rng.randint(0, step // 4)
        if len(ids) <= keep:
            continue
        cut = _cut_to_tokens(tokenizer, ids, keep)
        turn["content"] = text[: m.start()] + THINK_OPEN + cut + THINK_CLOSE + text[m.end() :]
    out["enable_thinking"] = True
    out["thinking_budget"] = step
    return out


def apply_reasoning_mix(
    rows: Sequence[Row], cfg: ReasoningDataConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> tuple[list[Row], dict[str, int]]:
    """Turn ``cfg.no_think_fraction`` of the rows to /no_think, ``cfg.truncated_budget_fraction``
    to truncated traces and ``cfg.fitted_budget_fraction`` to budgets their traces fit.

    Shares are of all rows; only rows with thinking (and not already /no_think) are
    candidates, so with too few candidates fewer are transformed: the counts report what was
    asked (``*_requested``) next to what was done. Rows are visited in a seeded random order,
    truncation first (its candidates are scarcer), then fitted budgets, then /no_think;
    positions in the list do not change.
    """
    n = len(rows)
    want = {"truncated_budget": round(n * cfg.truncated_budget_fraction), "fitted_budget": round(n * cfg.fitted_budget_fraction),
            "no_think": round(n * cfg.no_think_fraction)}  # fmt: skip
    done = dict.fromkeys(want, 0)
    out = list(rows)
    order = list(range(n))
    random.Random(f"reasoning-mix:{seed}").shuffle(order)
    for i in order:
        if done == want:
            break
        row = rows[i]
        if row.get("enable_thinking") is False or not has_thinking(row):
            continue
        rng = random.Random(f"reasoning-budget:{seed}:{i}")
        transforms = {
            "truncated_budget": lambda: truncate_thinking(row, tokenizer, rng),  # noqa: B023 - called in this iteration
            "fitted_budget": lambda: fit_budget(row, tokenizer, rng),  # noqa: B023
            "no_think": lambda: strip_thinking(row),  # noqa: B023
        }
        for kind, transform in transforms.items():
            if done[kind] < want[kind] and (new := transform()) is not None:
                out[i] = new
                done[kind] += 1
                break
    counts = {**done, "unchanged": n - sum(done.values())}
    counts.update({f"{k}_requested": v for k, v in want.items()})
    return out, counts
