"""A stand-in for a user's own checkpoint: a small Llama with its own BPE tokenizer and a stock
ChatML template, written with ``save_pretrained`` like any Hugging Face folder.

It deliberately lacks everything the tiny world's tokenizer has for align: no ``<think>`` /
``</think>`` / toggle / budget tokens, a template with no ``{% generation %}`` markers that
ignores ``enable_thinking`` and ``thinking_budget``, untied embeddings, a different vocabulary.
Tests and the README's "Bring your own model" section use it to exercise that path without a
download: ``python -m align.tiny.stock OUT_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# The ChatML template as model cards publish it (e.g. transformers' chat-templating docs).
STOCK_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def stock_tokenizer(vocab_size: int = 700, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style pre-tokenizer, digits not split) trained on the tiny world's text."""
    from align.tiny.world import world_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(world_texts(seed=seed, tasks_per_env=150), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=STOCK_CHATML,
        clean_up_tokenization_spaces=False,
    )


def write_stock_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the model and tokenizer to ``out_dir`` (about 1M parameters) and return it."""
    out = Path(out_dir)
    tokenizer = stock_tokenizer(seed=seed)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32: vLLM's CPU attention needs 32 or more
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    print(write_stock_checkpoint(parser.parse_args().out_dir))
