"""Shared fixtures for the rollout tests: a tiny NemotronH checkpoint built from scratch.

The checkpoint is built once per session; each test module starts its own in-process vLLM
engine on it (about a second once vLLM is imported).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from align.config.schema import ModelConfig, TinyModelConfig, TokenizerConfig
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_tokenizer

MAX_MODEL_LEN = 512


def synthetic_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Short arithmetic and tool-echo strings: enough for the BPE merges the tests touch."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        texts.append(f"What is {a} + {b}? The answer is {a + b}." if i % 2 else f"echo {i % 7} then answer {a - b}")
    return texts


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rollout") / "tiny"
    return prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=512), out, texts=synthetic_texts())


# Nemotron 3 Nano's layer kinds: Mamba2, MoE (routed relu2 experts + a shared expert), attention.
MOE = TinyModelConfig(layers_block_type="ME*ME*", n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1)


@pytest.fixture(scope="session")
def moe_config() -> TinyModelConfig:
    return MOE


@pytest.fixture(scope="session")
def tiny_moe_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rollout") / "tiny-moe"
    return prepare_initial_checkpoint(ModelConfig(tiny=MOE), TokenizerConfig(vocab_size=512), out, texts=synthetic_texts())


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint: Path):
    return load_tokenizer(tiny_checkpoint)


@pytest.fixture(scope="session")
def make_engine():
    """Returns a function that starts a VLLMEngine on a checkpoint folder.

    The engine settings every rollout test uses: float32, eager, a fixed 64 MiB KV cache.

    The KV cache is sized explicitly: on CPU, vLLM sizes it from gpu_memory_utilization minus
    what the process already holds, which a long test session can exhaust.
    """
    from rollout.engine import VLLMEngine

    return lambda path, **kwargs: VLLMEngine(
        str(path),
        seed=0,
        gpu_memory_utilization=0.1,
        max_model_len=MAX_MODEL_LEN,
        enforce_eager=True,
        dtype="float32",
        kv_cache_memory_bytes=64 << 20,
        **kwargs,
    )
