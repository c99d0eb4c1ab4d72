"""Shared fixtures for tests/align: a tiny chat tokenizer trained in about a second."""

import pytest

from align.tiny.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    words = ["the", "answer", "is", "think", "step", "add", "then", "carry", "so", "we", "get", "tool", "call", "result"]
    texts = [f"What is {i} + {3 * i}? {words[i % len(words)]} {words[(i * 7) % len(words)]} {4 * i}." for i in range(300)]
    return train_tokenizer(texts, vocab_size=400)
