"""Assistant masks for chat templates without ``{% generation %}`` markers (most stock templates).

An assistant turn's text is what the template adds when the turn is appended to the
conversation before it, rendered with a generation prompt: ``render(messages[:i + 1])`` minus
``render(messages[:i], add_generation_prompt=True)``. That covers the turn's content and its
end-of-turn token (``tokenizer.eos_token``); what the template writes after that token (ChatML:
a newline) and the generation prompt itself (the turn header, a ``/no_think`` empty think
block) carry no loss, as with the tiny world's markers. Tokens of the full rendering are then
assigned by their character offsets: a token carries loss if it starts inside such a span.

Limit: the template must render earlier turns the same whatever follows them. Templates that
rewrite history (e.g. drop the thinking of earlier assistant turns) break that for multi-turn
rows, which are then refused with the reason; a template with markers avoids it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from align.data.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool, kwargs: dict[str, Any]) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs))


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns' trained text."""
    full = _text(tokenizer, messages, False, kwargs)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = _text(tokenizer, messages[:i], True, kwargs)
        upto = _text(tokenizer, messages[: i + 1], False, kwargs)
        if not upto.startswith(before) or not full.startswith(upto):
            raise DataError(
                f"the chat template renders the conversation before messages[{i}] differently once later turns follow, "
                "so its assistant tokens cannot be located; use a template with {% generation %} markers "
                "(tokenizer.chat_template) or single-turn rows"
            )
        turn = upto[len(before) :]
        eos = tokenizer.eos_token or ""
        cut = turn.rfind(eos) if eos else -1
        spans.append((len(before), len(before) + (cut + len(eos) if cut >= 0 else len(turn))))
    return full, spans


def render_with_masks(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> tuple[list[int], list[int]]:
    """``(input_ids, assistant_masks)`` as ``apply_chat_template(..., return_assistant_tokens_mask=True)``
    gives them for a template with markers."""
    text, spans = assistant_spans(tokenizer, messages, kwargs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= start < e for s, e in spans)) for start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask
