"""Bring your own model: fit a checkpoint's tokenizer and chat template to align's reasoning control.

What align needs from a tokenizer, and what it does when a checkpoint lacks it:

- ``<think>``, ``</think>``, ``/think``, ``/no_think`` and the budget-ladder tokens
  (:mod:`align.reasoning`), each one token: missing ones are added (the tags and toggles as
  plain added tokens that survive decoding, the budget tokens as special tokens, as the tiny
  world's tokenizer has them); the caller resizes the embeddings (:mod:`align.models`).
- A chat template: ``tokenizer.chat_template`` of the recipe (a Jinja string or a ``.jinja``
  file) replaces the checkpoint's.
- A template that acts on ``enable_thinking`` and ``thinking_budget``. One that ignores them
  (every stock template ignores the budget; ChatML ignores both) is wrapped: before the
  template runs, the wrapper writes the toggle and the budget token at the start of the system
  turn (adding one if there is none) and, in ``/no_think`` mode, opens assistant turns and the
  generation prompt with an empty ``<think></think>``, as the tiny world's template does.
  A template that cannot render a system turn, or (``init_from``, never wrapped) renders
  ``/no_think`` as ``/think``, is refused: toggle compliance would be measured on nothing.

Templates without ``{% generation %}`` markers are fine: :mod:`align.data.masks` finds the
assistant tokens from rendered prefixes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken

from align.errors import AlignError
from align.reasoning import BUDGET_LADDER, BUDGET_TOKENS, THINK_CLOSE, THINK_OFF, THINK_ON, THINK_OPEN
from align.tiny.tokenizer import TEMPLATE_FILE as TINY_TEMPLATE_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# One token each, visible in decoded text (verifiers and the budget logic read them).
MARKUP = (THINK_OPEN, THINK_CLOSE, THINK_ON, THINK_OFF)
REASONING_TOKENS = (*MARKUP, *BUDGET_TOKENS)
_PROBE = [{"role": "user", "content": "Hi"}]


class ChatTemplateError(AlignError, ValueError):
    """The tokenizer or chat template cannot carry align's reasoning control; the message names the key."""


def load_chat_template(value: str) -> str:
    """The template text of ``tokenizer.chat_template``: a ``.jinja`` file's content, or the string itself."""
    path = Path(value).expanduser()
    if value.endswith((".jinja", ".j2")) or (len(value) < 4096 and "{" not in value):
        if not path.is_file():
            raise ChatTemplateError(
                f"tokenizer.chat_template: no file '{value}'. Give a path to a .jinja file or the Jinja template text itself."
            )
        return path.read_text()
    return value


def template_digest(value: str | None) -> str | None:
    """A short hash of the template ``value`` stands for (its file's content for a path), for fingerprints."""
    return None if value is None else hashlib.sha256(load_chat_template(value).encode()).hexdigest()[:16]


def is_one_token(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    return len(tokenizer.encode(text, add_special_tokens=False)) == 1


def add_reasoning_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add the reasoning tokens that are not one token yet; returns those added."""
    missing = [t for t in REASONING_TOKENS if not is_one_token(tokenizer, t)]
    tokenizer.add_tokens([AddedToken(t, special=t in BUDGET_TOKENS, normalized=False) for t in missing])
    return missing


def _render(tokenizer: PreTrainedTokenizerBase, **kwargs: object) -> str:
    return str(tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True, **kwargs))


def _reacts(tokenizer: PreTrainedTokenizerBase, key: str) -> tuple[bool, bool]:
    """Whether the template's prompt changes with ``enable_thinking`` and with ``thinking_budget``."""
    try:
        think = _render(tokenizer, enable_thinking=True)
        budget = _render(tokenizer, enable_thinking=True, thinking_budget=BUDGET_LADDER[0])
        return think != _render(tokenizer, enable_thinking=False), think != budget
    except Exception as e:  # noqa: BLE001 - a template may raise anything (TemplateError, its raise_exception)
        raise ChatTemplateError(
            f"{key}: the chat template cannot render a conversation with a system turn ({e}); "
            f"set tokenizer.chat_template to one that can, e.g. align's own: tokenizer.chat_template={TINY_TEMPLATE_FILE}"
        ) from e


def wrap_template(template: str, toggle: bool, budget: bool) -> str:
    """``template`` preceded by Jinja that puts the toggle (if ``toggle``) and the budget token (if
    ``budget``) at the start of the system turn, and opens ``/no_think`` assistant turns with an
    empty think block (if ``toggle``). The messages are rebuilt, never mutated."""
    tags = []
    if toggle:
        tags.append("{%- set _tags = _tags + [('/think' if _think else '/no_think')] -%}")
    if budget:
        tags.append("{%- if _think and thinking_budget is defined and thinking_budget is not none -%}"
                    "{%- set _tags = _tags + ['<|budget_' ~ thinking_budget ~ '|>'] -%}{%- endif -%}")  # fmt: skip
    empty_think = "not _think and m['role'] == 'assistant' and not (m['content'] is string and m['content'].startswith('<think>'))"
    head = (
        "{#- align: reasoning control around the checkpoint's template (align/byom.py) -#}"
        "{%- set _think = enable_thinking if enable_thinking is defined else true -%}"
        "{%- set _tags = [] -%}" + "".join(tags) + "{%- set _ns = namespace(msgs=[]) -%}"
        "{%- set _rest = messages -%}"
        "{%- if _tags and messages and messages[0]['role'] == 'system' -%}"
        "{%- set _ns.msgs = [dict(messages[0], content=(_tags | join(' ')) ~ '\\n' ~ messages[0]['content'])] -%}"
        "{%- set _rest = messages[1:] -%}"
        "{%- elif _tags -%}{%- set _ns.msgs = [{'role': 'system', 'content': _tags | join(' ')}] -%}{%- endif -%}"
        "{%- for m in _rest -%}"
        + ("{%- if " + empty_think + " -%}{%- set _ns.msgs = _ns.msgs + [dict(m, content='<think></think>' ~ m['content'])] -%}{%- else -%}"
           if toggle else "{%- if false -%}{%- else -%}")
        + "{%- set _ns.msgs = _ns.msgs + [m] -%}{%- endif -%}{%- endfor -%}"
        "{%- set messages = _ns.msgs -%}"
    )  # fmt: skip
    tail = "{% if add_generation_prompt and not _think %}<think></think>{% endif %}" if toggle else ""
    return head + template.removesuffix("\n") + tail


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, chat_template: str | None) -> list[str]:
    """Fit ``tokenizer`` in place (template, tokens, wrapper); returns one note per change.

    Raises :class:`ChatTemplateError` if the result still cannot carry the toggle.
    """
    notes = []
    if chat_template is not None:
        tokenizer.chat_template = load_chat_template(chat_template)
        notes.append("chat template from tokenizer.chat_template")
    if not isinstance(tokenizer.chat_template, str):
        raise ChatTemplateError(
            "the tokenizer has no chat template (or several): set tokenizer.chat_template to a Jinja string or a .jinja file"
        )
    added = add_reasoning_tokens(tokenizer)
    if added:
        notes.append(f"added {len(added)} reasoning tokens ({', '.join(added[:5])}{', ...' if len(added) > 5 else ''})")
    toggle_ok, budget_ok = _reacts(tokenizer, "tokenizer.chat_template")
    if not (toggle_ok and budget_ok):
        tokenizer.chat_template = wrap_template(tokenizer.chat_template, toggle=not toggle_ok, budget=not budget_ok)
        ignored = " and ".join(n for n, ok in (("enable_thinking", toggle_ok), ("thinking_budget", budget_ok)) if not ok)
        notes.append(f"the chat template ignores {ignored}: wrapped to write {'them' if ' and ' in ignored else 'it'} into the system turn")
    check_chat(tokenizer, "tokenizer.chat_template")
    return notes


def check_chat(tokenizer: PreTrainedTokenizerBase, key: str) -> None:
    """Refuse a tokenizer whose reasoning tokens are split or whose template ignores ``/no_think``.

    ``key`` is the recipe key to change (``tokenizer.chat_template``, ``init_from``).
    """
    split = [t for t in (THINK_OPEN, THINK_CLOSE) if not is_one_token(tokenizer, t)]
    if split:
        raise ChatTemplateError(
            f"{key}: the tokenizer splits {', '.join(split)} into several tokens, so thinking budgets cannot be "
            "enforced. Start from model.path (align then adds the reasoning tokens and resizes the embeddings)."
        )
    if not _reacts(tokenizer, key)[0]:
        raise ChatTemplateError(
            f"{key}: /no_think renders the same prompt as /think (the template ignores enable_thinking and the "
            "system turn), so the toggle cannot be trained or measured. Set tokenizer.chat_template to a template "
            f"that writes the system turn, e.g. align's own: tokenizer.chat_template={TINY_TEMPLATE_FILE}"
        )

