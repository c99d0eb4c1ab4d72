"""Build or load the policy and its tokenizer.

``model.path`` set: load a real checkpoint (local folder or hub id) through transformers.
``model.path`` null: build the tiny world's policy from the recipe's config, a hybrid
Mamba-Transformer ``NemotronHForCausalLM`` (or a Llama-style alternative), with random weights.
:mod:`align.init_checkpoint` writes either as the Hugging Face folder a job starts from.

On GPU, :func:`select_kernels` points the hybrid policy's Mamba2 layers at ``mamba_ssm``'s
Triton kernels when they are installed (``align.kernels``), and :func:`enable_packed_forward`
makes a model run padded batches as packed rows (no compute on padding; sample boundaries kept
by ``position_ids`` for attention and ``seq_idx`` for Mamba2). On CPU neither changes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, NemotronHConfig, PreTrainedModel, PreTrainedTokenizerBase

from align.config.schema import ModelConfig
from align.data.batching import pack_padded, unpack_to_padded
from align.kernels import KernelStatus, enable_mamba_kernels
from align.weights import inference_dtype as inference_dtype  # it lives with torch alone, for align/algorithms/rl/prestart.py

log = logging.getLogger(__name__)


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
        # Llama ties its output head to the embeddings. NemotronH never does, in transformers
        # (_tied_weights_keys is empty) and in vLLM alike, whatever the flag says, so its config says
        # false: a loader that honoured a true would swap the trained lm_head for the embeddings.
        tie_word_embeddings=cfg.arch == "llama",
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
        n_routed_experts=t.n_routed_experts,
        num_experts_per_tok=t.num_experts_per_tok,
        n_shared_experts=t.n_shared_experts,
        moe_intermediate_size=t.moe_intermediate_size,
        moe_shared_expert_intermediate_size=t.moe_shared_expert_intermediate_size,
        n_group=t.n_group,
        topk_group=t.topk_group,
        norm_topk_prob=t.norm_topk_prob,
        routed_scaling_factor=t.routed_scaling_factor,
        **common,
    )


def build_tiny_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = tiny_config(cfg, tokenizer)
    config.architectures = [{"llama": "LlamaForCausalLM", "nemotron_h": "NemotronHForCausalLM"}[cfg.arch]]
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def torch_dtype(name: str) -> torch.dtype | str:
    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_model(path: str | Path, dtype: str = "float32") -> PreTrainedModel:
    select_kernels()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))


def select_kernels() -> KernelStatus:
    """Fast Mamba2 kernels where CUDA and ``mamba_ssm`` are present (process-wide); a no-op on CPU."""
    return enable_mamba_kernels(require_cuda=True)


def has_mamba_layers(model: torch.nn.Module) -> bool:
    return any(type(m).__name__.endswith("Mamba2Mixer") for m in model.modules())


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps token ids to hidden states: ``model.model`` of a causal LM, the
    reward model's ``backbone``, or the model itself."""
    inner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return inner if isinstance(inner, torch.nn.Module) else model


def packing_supported(model: torch.nn.Module) -> tuple[bool, str]:
    """Whether packed rows are both exact and fast for ``model`` here, and why not if not."""
    if not torch.cuda.is_available():
        return False, "no CUDA device: padded batches"
    if has_mamba_layers(model) and select_kernels().chunk_scan != "mamba_ssm triton":
        return False, "Mamba2 layers without mamba_ssm's Triton kernels: padded batches (install the gpu extra)"
    return True, ""


def enable_packed_forward(model: torch.nn.Module, force: bool = False) -> bool:
    """Make ``model`` run padded ``(input_ids, attention_mask)`` batches as packed rows.

    The backbone's forward is wrapped on this instance: it packs the batch
    (:func:`align.data.pack_padded`), runs the rows with ``position_ids`` restarting per sample
    (transformers then builds a block-diagonal causal mask for attention) and, for Mamba2
    layers, ``seq_idx`` (the scan state and the convolution reset at each sample), then puts the
    hidden states back into the padded layout. Objectives keep reading padded logits, so SFT,
    DPO, RM and the RL learner all use it unchanged; each sample's outputs are those it gets in
    a padded batch (within bf16 rounding). Calls with a cache, ``position_ids``, embeddings or
    per-layer outputs take the original forward.

    Returns whether packing is on: :func:`packing_supported`, unless ``force`` (tests on CPU,
    after ``align.kernels.enable_mamba_kernels(require_cuda=False)``).
    """
    ok, why = packing_supported(model)
    if not (ok or force):
        log.info("packed sequences off: %s", why)
        return False
    backbone = _backbone(model)
    if getattr(backbone, "_align_packed", False):
        return True
    backbone.forward = _packed(backbone.forward, hybrid=has_mamba_layers(backbone), pad_id=int(getattr(backbone.config, "pad_token_id", None) or 0))
    backbone._align_packed = True
    return True


def _packed(forward: Callable[..., Any], hybrid: bool, pad_id: int) -> Callable[..., Any]:
    def packed_forward(
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        plain = (
            input_ids is None or attention_mask is None or attention_mask.dim() != 2 or position_ids is not None
            or past_key_values is not None or inputs_embeds is not None or use_cache
            or kwargs.get("output_hidden_states") or kwargs.get("output_attentions")
        )  # fmt: skip
        if plain:
            return forward(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
            )  # fmt: skip
        packed = pack_padded(input_ids, attention_mask, pad_id=pad_id)
        if hybrid:
            kwargs["seq_idx"] = packed.seq_idx
        out = forward(input_ids=packed.input_ids, attention_mask=None, position_ids=packed.position_ids, use_cache=False, **kwargs)
        out.last_hidden_state = unpack_to_padded(out.last_hidden_state, packed)
        return out

    return packed_forward


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))
