"""Build or load the policy and its tokenizer.

``model.path`` set: load a real checkpoint (local folder or hub id) through transformers.
``model.path`` null: build the tiny world's policy from the recipe's config, a hybrid
Mamba-Transformer ``NemotronHForCausalLM`` (or a Llama-style alternative), with random weights.
Either way the result is saved in Hugging Face format, which transformers and vLLM both load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, NemotronHConfig, PreTrainedModel, PreTrainedTokenizerBase

from align.config.schema import ModelConfig, TokenizerConfig
from align.tiny.tokenizer import train_tokenizer


def tiny_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> NemotronHConfig | LlamaConfig:
    t = cfg.tiny
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    if cfg.arch == "llama":
        return LlamaConfig(num_hidden_layers=t.num_hidden_layers, **common)
    return NemotronHConfig(
        hybrid_override_pattern=t.layers_block_type,
        head_dim=t.hidden_size // t.num_attention_heads,
        mamba_num_heads=t.mamba_num_heads,
        mamba_head_dim=t.mamba_head_dim,
        ssm_state_size=t.ssm_state_size,
        n_groups=t.mamba_n_groups,
        chunk_size=t.mamba_chunk_size,
        expand=t.mamba_num_heads * t.mamba_head_dim // t.hidden_size,
        mlp_hidden_act="relu2",
        residual_in_fp32=False,
        **common,
    )


def build_tiny_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = tiny_config(cfg, tokenizer)
    config.architectures = [{"llama": "LlamaForCausalLM", "nemotron_h": "NemotronHForCausalLM"}[cfg.arch]]
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def inference_dtype(precision: str = "auto") -> str:
    """vLLM dtype matching the learner's precision, so rollout log-probs match training's.

    vLLM on CPU turns "auto" into bfloat16 even for a float32 checkpoint; the learner trains in
    float32 there, and the gap shows up as train/inference mismatch. So it is always explicit.
    """
    if precision == "bf16":
        return "bfloat16"
    if precision == "fp32":
        return "float32"
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def torch_dtype(name: str) -> torch.dtype | str:
    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_model(path: str | Path, dtype: str = "float32") -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


def prepare_initial_checkpoint(
    model_cfg: ModelConfig,
    tokenizer_cfg: TokenizerConfig,
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write an HF folder (weights + tokenizer) to start a job from, and return its path.

    Idempotent: an existing complete folder is reused, so a resumed run starts from the same
    weights. A real checkpoint is loaded and re-saved only if a separate tokenizer is named.
    """
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    if tokenizer_cfg.path is not None:
        tokenizer = load_tokenizer(tokenizer_cfg.path)
    elif model_cfg.path is not None:
        tokenizer = load_tokenizer(model_cfg.path)
    else:
        if texts is None:
            from align.tiny.world import world_texts

            texts = world_texts(seed=seed)
        tokenizer = train_tokenizer(texts, vocab_size=tokenizer_cfg.vocab_size)
    if model_cfg.path is not None:
        model = load_model(model_cfg.path, model_cfg.dtype)
    else:
        model = build_tiny_model(model_cfg, tokenizer, seed=seed)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out
