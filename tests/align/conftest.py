"""Shared fixtures for tests/align: a tiny chat tokenizer trained in about a second."""

import pytest

from align.tiny.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    words = ["the", "answer", "is", "think", "step", "add", "then", "carry", "so", "we", "get", "tool", "call", "result"]
    texts = [f"What is {i} + {3 * i}? {words[i % len(words)]} {words[(i * 7) % len(words)]} {4 * i}." for i in range(300)]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_moe_config():
    """A tiny MoE hybrid in Nemotron 3 Nano's shape, built from transformers' NemotronHConfig:
    Mamba2 (M), MoE (E: 4 routed relu2 experts, top-2, one shared expert) and attention (*) layers."""
    from transformers import NemotronHConfig

    return NemotronHConfig(
        vocab_size=96, hidden_size=64, hybrid_override_pattern="ME*ME*", num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, intermediate_size=128, mamba_num_heads=4, mamba_head_dim=32, ssm_state_size=16, n_groups=1,
        chunk_size=32, expand=2, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32, mlp_hidden_act="relu2", residual_in_fp32=False, pad_token_id=0,
        eos_token_id=1, bos_token_id=None, tie_word_embeddings=True, architectures=["NemotronHForCausalLM"],
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_moe_checkpoint(tiny_moe_config, tmp_path_factory) -> str:
    """The tiny MoE hybrid with random weights (seed 0), saved as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("moe") / "init"
    AutoModelForCausalLM.from_config(tiny_moe_config, dtype=torch.float32).save_pretrained(str(path), safe_serialization=True)
    return str(path)
