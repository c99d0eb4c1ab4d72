"""Rows to token ids and labels, through the tokenizer's chat template.

Labels follow the Hugging Face convention: aligned with ``input_ids`` (the model shifts them),
``-100`` where no loss is taken. What carries loss comes from the template's
``{% generation %}`` markers (``assistant_masks``): for the tiny template that is each
assistant turn's content plus its ``<|im_end|>``; system, user and tool turns, the turn
headers and the empty ``<think></think>`` of /no_think turns carry none. A template without
markers (most stock templates) gets the same masks from its rendered prefixes
(:mod:`align.data.masks`).

Per-row ``enable_thinking`` / ``thinking_budget`` columns are passed to the template (the
budget rounded up to the ladder). Sequences longer than ``max_seq_len`` are cut at the end
and counted; a row left with no trained tokens is a :class:`DataError`.

Every ``tokenize_*`` function checks its row first (:mod:`align.data.validate`), so raw rows
may be given; :func:`tokenize_rows` runs one over a list with the ``on_bad_row`` policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from align.data.errors import BadRows, DataError, OnBadRow, RowRef
from align.data.masks import render_with_masks
from align.data.validate import Messages, pair_parts, validate_attribute_row, validate_sft_row
from align.reasoning import round_budget

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
Example = dict[str, list[int] | list[float]]
ExampleKind = Literal["sft", "preference", "attributes"]
_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")


def _has_generation_markers(tokenizer: PreTrainedTokenizerBase) -> bool:
    template = tokenizer.chat_template
    return isinstance(template, str) and _GENERATION.search(template) is not None


def _clean(messages: Messages) -> Messages:
    """Messages without ``None``-valued keys (Parquet rows carry them for absent fields)."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _template_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if row.get("enable_thinking") is not None:
        kwargs["enable_thinking"] = row["enable_thinking"]
    if row.get("thinking_budget") is not None:
        kwargs["thinking_budget"] = round_budget(row["thinking_budget"])
    return kwargs


def _render(tokenizer: PreTrainedTokenizerBase, messages: Messages, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    if not _has_generation_markers(tokenizer):
        return render_with_masks(tokenizer, _clean(messages), _template_kwargs(row))
    out = tokenizer.apply_chat_template(
        _clean(messages),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **_template_kwargs(row),
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


def _sft(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> tuple[Example, bool]:
    validate_sft_row(row)
    ids, mask = _render(tokenizer, row["messages"], row)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    truncated = len(ids) > max_seq_len
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    if all(x == IGNORE_INDEX for x in labels):
        raise DataError(f"no assistant token falls within max_seq_len={max_seq_len}")
    return {"input_ids": ids, "labels": labels}, truncated


def tokenize_sft(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> Example:
    """``{"input_ids", "labels"}`` for one SFT conversation; labels only on assistant tokens."""
    return _sft(row, tokenizer, max_seq_len)[0]


def _completion(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], prompt: Messages, response: Messages, row: dict[str, Any], name: str
) -> tuple[list[int], list[int]]:
    ids, mask = _render(tokenizer, [*prompt, *response], row)
    n = len(prompt_ids)
    if ids[:n] != prompt_ids:
        raise DataError(f"the chat template renders the prompt differently when {name} follows it, so the pair cannot share it")
    return ids, [t if m and j >= n else IGNORE_INDEX for j, (t, m) in enumerate(zip(ids, mask))]


def _pair(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> tuple[Example, bool]:
    parts = pair_parts(row)
    sides: dict[str, tuple[list[int], list[int]]] = {}
    if parts.format == "chat":
        assert isinstance(parts.prompt, list) and isinstance(parts.chosen, list) and isinstance(parts.rejected, list)
        prompt_ids = list(
            tokenizer.apply_chat_template(_clean(parts.prompt), tokenize=True, return_dict=True, **_template_kwargs(row))["input_ids"]
        )
        for name, response in (("chosen", parts.chosen), ("rejected", parts.rejected)):
            sides[name] = _completion(tokenizer, prompt_ids, parts.prompt, response, row, name)
    else:
        assert isinstance(parts.prompt, str) and isinstance(parts.chosen, str) and isinstance(parts.rejected, str)
        prompt_ids = list(tokenizer(parts.prompt)["input_ids"])
        for name, response in (("chosen", parts.chosen), ("rejected", parts.rejected)):
            completion = [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            sides[name] = ([*prompt_ids, *completion], [IGNORE_INDEX] * len(prompt_ids) + completion)
    truncated = any(len(ids) > max_seq_len for ids, _ in sides.values())
    out: Example = {}
    for name, (ids, labels) in sides.items():
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(x == IGNORE_INDEX for x in labels):
            raise DataError(f"the prompt fills max_seq_len={max_seq_len}, leaving no {name} tokens")
        out[f"{name}_input_ids"], out[f"{name}_labels"] = ids, labels
    if out["chosen_input_ids"] == out["rejected_input_ids"]:
        raise DataError(f"chosen and rejected are identical within max_seq_len={max_seq_len}")
    return out, truncated


def tokenize_pair(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> Example:
    """``{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}`` for one preference row.

    Both sequences start with the same prompt tokens (checked); labels cover only the
    response's assistant tokens (chat rows) or the response plus EOS (plain-text rows, as TRL does).
    """
    return _pair(row, tokenizer, max_seq_len)[0]


def _attributes(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_len: int, attribute_names: Sequence[str]
) -> tuple[Example, bool]:
    validate_attribute_row(row, attribute_names)
    prompt = row["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    messages.append({"role": "assistant", "content": row["response"]})
    ids = list(tokenizer.apply_chat_template(_clean(messages), tokenize=True, return_dict=True, **_template_kwargs(row))["input_ids"])
    return {"input_ids": ids[:max_seq_len], "attributes": [float(row["attributes"][n]) for n in attribute_names]}, len(ids) > max_seq_len


def tokenize_attributes(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_len: int, attribute_names: Sequence[str]
) -> Example:
    """``{"input_ids", "attributes"}`` for a multi-attribute regression row; ratings in ``attribute_names`` order.

    A string prompt becomes one user turn. A reward model reads its score at the last token,
    so a truncated row is scored on a cut response: keep ``max_seq_len`` above the data's length.
    """
    return _attributes(row, tokenizer, max_seq_len, attribute_names)[0]


@dataclass
class Tokenized:
    """Examples, the rows they came from (same order), and what was truncated or skipped."""

    examples: list[Example] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    num_truncated: int = 0
    num_skipped: int = 0


def tokenize_rows(
    rows: Sequence[dict[str, Any]],
    kind: ExampleKind,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    *,
    attribute_names: Sequence[str] = (),
    on_bad_row: OnBadRow = "error",
    source: str = "rows",
    refs: Sequence[RowRef] | None = None,
) -> Tokenized:
    """Tokenize every row: a bad one stops with its index (``error``) or is skipped and counted (``skip``).

    ``refs`` (one per row) are the rows' places in their file; errors then use the file's row
    index and line rather than the position in ``rows``.
    """
    if kind == "attributes" and not attribute_names:
        raise ValueError("attribute rows need attribute_names (the order of the regression targets)")
    result = Tokenized()
    bad = BadRows(source)
    for i, row in enumerate(rows):
        try:
            if kind == "sft":
                example, truncated = _sft(row, tokenizer, max_seq_len)
            elif kind == "preference":
                example, truncated = _pair(row, tokenizer, max_seq_len)
            else:
                example, truncated = _attributes(row, tokenizer, max_seq_len, attribute_names)
        except DataError as e:
            ref = refs[i] if refs is not None else RowRef(i)
            bad.add(e, ref.index, ref.line)
            continue
        result.examples.append(example)
        result.rows.append(row)
        result.num_truncated += truncated
    if on_bad_row == "error":
        bad.raise_if_any()
    result.num_skipped = len(bad.errors)
    return result


def example_lengths(examples: Sequence[Example]) -> list[int]:
    """Padded length each example needs (the longer side of a pair), for length-grouped batching."""
    return [max(len(v) for k, v in ex.items() if k.endswith("input_ids")) for ex in examples]
