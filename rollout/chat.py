"""Chat rendering as token ids: the prompt, observations appended after a turn, thinking counts,
and the chat-template variables of a reasoning mode (shared with the reward model's scorer).

Token ids are kept end to end: the prompt is rendered once with the chat template, and each
environment observation is appended as the tokens the chat template gives it, so earlier turns
are never decoded and re-tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from align.reasoning import THINK_CLOSE, THINK_OPEN, ReasoningMode, round_budget
from envs.base import Message

if TYPE_CHECKING:  # only annotated: the rollout engines' actors and the driver's early spawn skip transformers' import
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ChatTokens:
    """The token ids the episode runner acts on, read from the tokenizer."""

    eos_id: int
    think_open_id: int | None
    think_close_id: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "ChatTokens":
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: set it to the token that ends an assistant turn (ChatML: <|im_end|>)")
        return cls(tokenizer.eos_token_id, _single_token(tokenizer, THINK_OPEN), _single_token(tokenizer, THINK_CLOSE))


def _single_token(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


@lru_cache(maxsize=8)
def newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Every non-special token whose text contains a newline: where a grace window may close thinking.

    Decoded in one batch over the vocabulary, once per tokenizer (cached). "Contains" rather
    than "is": BPE merges newlines with indentation or punctuation (``".\\n"``, ``"\\n  "``),
    and those end a line too.
    """
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    return tuple(i for i, text in zip(ids, texts, strict=True) if "\n" in text)


def chat_template_kwargs(mode: ReasoningMode) -> dict[str, Any]:
    """Chat-template variables for ``mode``: ``enable_thinking``, and ``thinking_budget`` (rounded up
    to the ladder) only when there is one.

    With no budget the variable is left out rather than passed as None, as SFT data renders it
    (``align.data.tokenize``): a template that tests ``thinking_budget is defined`` would
    otherwise write a budget of "None". (The tiny template treats both the same.)

    >>> chat_template_kwargs(ReasoningMode(True, 50)), chat_template_kwargs(ReasoningMode(False, 50))
    ({'enable_thinking': True, 'thinking_budget': 64}, {'enable_thinking': False})
    """
    kwargs: dict[str, Any] = {"enable_thinking": mode.thinking}
    if mode.thinking and mode.budget is not None:
        kwargs["thinking_budget"] = round_budget(mode.budget)
    return kwargs


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], mode: ReasoningMode) -> list[int]:
    """The prompt's token ids: system turn with the toggle/budget, messages, generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **chat_template_kwargs(mode))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def observation_ids(
    tokenizer: PreTrainedTokenizerBase, history: list[Message], observation: list[Message], mode: ReasoningMode
) -> list[int]:
    """Tokens to append after an assistant turn that ended with the eos token: the observation
    messages and the next generation prompt, exactly as the chat template renders them.

    It is the template's text for ``history + observation`` (with a generation prompt) minus its
    text for ``history``, preceded by whatever the template writes after the assistant's
    end-of-turn token (ChatML: a newline), which the policy did not sample. Requires a template
    that renders earlier turns the same whatever follows them (ours does; templates that drop
    earlier turns' thinking may not, and get a clear error).
    """
    kwargs = chat_template_kwargs(mode)
    base = tokenizer.apply_chat_template(history, tokenize=False, **kwargs)
    full = tokenizer.apply_chat_template(history + observation, tokenize=False, add_generation_prompt=True, **kwargs)
    if not full.startswith(base):
        raise ValueError(
            "the chat template renders the conversation differently once an observation follows it, so observation "
            "tokens cannot be appended to the token stream; use a template that keeps earlier turns unchanged"
        )
    end_of_turn = tokenizer.eos_token
    cut = base.rfind(end_of_turn)
    glue = base[cut + len(end_of_turn) :] if cut >= 0 else ""
    return list(tokenizer(glue + full[len(base) :], add_special_tokens=False)["input_ids"])


def count_thinking(turn_ids: list[int], turn_mask: list[int], chat: ChatTokens, thinking: bool) -> int:
    """Policy tokens inside the think block of one assistant turn.

    Thinking on: the block runs from the turn's start (after a ``<think>`` if the model wrote
    one) to the first ``</think>``; with no ``</think>``, from a ``<think>`` to the end of the
    turn, or nothing if there is no ``<think>`` either. Thinking off: the prompt already closed
    the block, so only a ``<think>`` the model opened anyway counts, up to its ``</think>``.
    Forced tokens (mask 0) never count.
    """
    if chat.think_close_id is None:
        return 0
    n = len(turn_ids) - 1 if turn_ids and turn_ids[-1] == chat.eos_id else len(turn_ids)
    ids = turn_ids[:n]
    open_at = ids.index(chat.think_open_id) if chat.think_open_id in ids else None
    if thinking:
        close_at = ids.index(chat.think_close_id) if chat.think_close_id in ids else None
        if close_at is not None:
            start = open_at + 1 if open_at is not None and open_at < close_at else 0
            end = close_at
        elif open_at is not None:
            start, end = open_at + 1, n
        else:
            return 0
    else:
        if open_at is None:
            return 0
        start = open_at + 1
        end = next((i for i in range(start, n) if ids[i] == chat.think_close_id), n)
    return sum(turn_mask[start:end])
