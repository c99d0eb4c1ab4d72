"""The tiny world's tokenizer: a byte-level BPE trained in seconds on the world's own text.

Byte-level means every string is encodable, whatever was in the training text. Digits are
split one per token (arithmetic is learnable that way). Chat turns use ChatML markers; the
system turn always carries the reasoning toggle and, when thinking with a budget, one budget
token from the ladder (see :mod:`align.reasoning`).

``<think>``, ``</think>`` and the tool tags are added tokens that are *not* special, so they
survive ``decode(skip_special_tokens=True)`` (vLLM's default) and stay visible to verifiers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from align.reasoning import (
    BUDGET_TOKENS,
    THINK_CLOSE,
    THINK_OFF,
    THINK_ON,
    THINK_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, EOS, IM_START, IM_END, *BUDGET_TOKENS]
# Visible in decoded text: the verifiers and the budget logic read them.
MARKUP_TOKENS = [THINK_OPEN, THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE, THINK_ON, THINK_OFF]

# Template variables: enable_thinking (default true), thinking_budget (a ladder step or none;
# callers round with align.reasoning.round_budget). In /no_think mode an assistant turn opens
# with an empty think block, both in training data and in the generation prompt, so the two
# always match. {% generation %} marks the tokens that carry loss (assistant content + <|im_end|>).
# A file, so that a user's recipe can name it: tokenizer.chat_template=<this path>.
TEMPLATE_FILE = Path(__file__).with_name("chatml_reasoning.jinja")
CHAT_TEMPLATE = TEMPLATE_FILE.read_text().removesuffix("\n")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the tiny world's BPE tokenizer on ``texts`` and wrap it for transformers."""
    # transformers is imported here: recipe checks read this module's token lists before a job
    # starts Ray, and importing transformers (2-3 s of CPU) would hold Ray's start back.
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=IM_END,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    tokenizer.save_pretrained(str(path))
