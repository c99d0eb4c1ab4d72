"""Recipe sections shared by every job: the model and tokenizer, the cluster, the learner and
checkpoints (each a strict, frozen pydantic model; :mod:`align.config.schema` composes them into
job recipes)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from align.config.experts import check_tiny_layers


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- model and tokenizer


class TinyModelConfig(Strict):
    """Size of the tiny world's policy, built from a config (never downloaded)."""

    hidden_size: int = 128
    # NemotronH layer pattern: M = Mamba2, * = attention, - = MLP, E = MoE (routed relu2 experts
    # plus a shared expert, as Nemotron 3 Nano). Llama uses num_hidden_layers.
    # Two attention layers: with one, the tiny policy learns the format but cannot copy operands
    # from the prompt (held-out math accuracy 0.00 vs 0.42 after 600 SFT steps, same data).
    layers_block_type: str = "M*-M*-"
    num_hidden_layers: int = 4
    # head_dim = hidden_size / num_attention_heads; vLLM's CPU attention needs 32 or more.
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    mamba_num_heads: int = 8
    mamba_head_dim: int = 32
    ssm_state_size: int = 16
    mamba_n_groups: int = 1
    mamba_chunk_size: int = 64
    max_position_embeddings: int = 1024
    # MoE layers (E): routing as transformers' NemotronHTopkRouter (sigmoid scores, top-k within
    # the best topk_group of n_group groups, renormalized, times routed_scaling_factor).
    n_routed_experts: int = Field(4, ge=1)
    num_experts_per_tok: int = Field(2, ge=1)
    n_shared_experts: int = Field(1, ge=0)
    moe_intermediate_size: int = Field(128, ge=1)
    moe_shared_expert_intermediate_size: int = Field(128, ge=1)
    n_group: int = Field(1, ge=1)
    topk_group: int = Field(1, ge=1)
    norm_topk_prob: bool = True
    routed_scaling_factor: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _layers(self) -> "TinyModelConfig":
        check_tiny_layers(self)
        return self


class ModelConfig(Strict):
    """Which policy to train. ``path`` is a local folder or a hub id; ``null`` builds a tiny one."""

    arch: Literal["nemotron_h", "llama"] = "nemotron_h"
    path: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    # The start checkpoint's dtype (<run>/init). auto: the loaded checkpoint's own, float32 for a
    # tiny one. Learners and vLLM engines then load it in learner.precision's dtype.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class TokenizerConfig(Strict):
    """``path`` loads an existing tokenizer; ``null`` takes model.path's (or trains the tiny world's BPE)."""

    path: str | None = None
    vocab_size: int = 1024
    # A Jinja chat template (the text, or a path to a .jinja file) replacing the tokenizer's;
    # align/byom.py wraps one that ignores enable_thinking / thinking_budget.
    chat_template: str | None = None


# ---------------------------------------------------------------- cluster and learner


class ClusterConfig(Strict):
    # null: start Ray embedded on this machine (or join RAY_ADDRESS if it is set).
    ray_address: str | None = None
    num_learners: int = Field(1, ge=1)
    cpus_per_learner: float = Field(1.0, gt=0)
    gpus_per_learner: float = Field(0.0, ge=0)
    num_rollout_engines: int = Field(1, ge=1)
    gpus_per_rollout_engine: float = Field(0.0, ge=0)
    # Fail fast if the nodes do not offer what the placement group asks for.
    placement_timeout_s: float = Field(120.0, gt=0)
    # Fail with the stuck actor and step named if an actor's set-up (model load, DeepSpeed engine,
    # vLLM start) takes longer than this.
    setup_timeout_s: float = Field(900.0, gt=0)
    # Fail with what it was starting if Ray itself is not up within this (an embedded start takes
    # 2-3 s; a join that never answers made ray.init wait on without end, align/ray_start.py).
    ray_start_timeout_s: float = Field(120.0, gt=0)

    def gpus_needed(self, with_rollout: bool) -> float:
        rollout = self.num_rollout_engines * self.gpus_per_rollout_engine if with_rollout else 0.0
        return self.num_learners * self.gpus_per_learner + rollout


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = 32
    dropout: float = 0.0
    # peft refuses out_proj and conv1d on Mamba models; these are valid for NemotronH and Llama.
    target_modules: list[str] = ["in_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    # MoE routed experts are 3-D parameters, not Linear modules: peft adapts them by parameter name.
    # Used only where the model has them (NemotronH MoE layers); the router is never adapted.
    target_parameters: list[str] = ["experts.up_proj", "experts.down_proj"]


class ProfileConfig(Strict):
    """torch.profiler on chosen train steps of every learner (align/learner/step_stats.py)."""

    steps: list[int] = Field(min_length=1)  # each learner's train steps to record, counted from 1
    dir: str  # each rank writes learner{rank}_step{N}.txt (operators by device time) and .json.gz (a trace)

    @model_validator(mode="after")
    def _positive(self) -> "ProfileConfig":
        if min(self.steps) < 1:
            raise ValueError(f"learner.profile.steps count from 1, got {self.steps}")
        return self


class LearnerConfig(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0
    micro_batch_size_per_device: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = Field(1.0, gt=0)
    # auto: bf16 where the device supports it (CUDA with bf16), float32 on CPU.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    # torch.compile the model's forward (nn.Module.compile, dynamic shapes; DeepSpeed's optimizer
    # stays outside). CUDA only; the learner logs which path it took. Measured: bench/README.md 7.
    compile: bool = False
    # Liger Kernel's fused RMSNorm/SwiGLU/rotary Triton kernels (align/learner/liger.py; never its
    # fused cross-entropy). auto: on with CUDA, the package and a measured model type (llama).
    liger_kernel: Literal["auto"] | bool = "auto"
    lora: LoraConfig | None = None
    # Parameters kept out of training: regular expressions searched in the names that
    # model.named_parameters() gives (with LoRA, in its wrapped names: a match freezes the adapters
    # of those modules too). Each must match a parameter. Frozen weights still save and sync.
    # The demo's GRPO freezes the tiny policy's Mamba mixers (recipes/tiny.yaml says why).
    freeze: list[str] = []
    max_seq_len: int = Field(512, ge=8)
    # MoE layers (align/learner/moe.py). auto: grouped_mm on CUDA, eager on CPU. freeze_router null:
    # frozen in RL (as Nemotron 3 Nano), trained in SFT/DPO/RM.
    experts_implementation: Literal["auto", "grouped_mm", "batched_mm", "eager"] = "auto"
    freeze_router: bool | None = None
    on_nonfinite: Literal["stop", "skip_step"] = "stop"  # align/guards.py: skip the update; stop after
    max_nonfinite_steps: int = Field(3, ge=1)  # this many non-finite steps in a row (exit 3)
    profile: ProfileConfig | None = None  # off; e.g. {steps: [3], dir: runs/x/profile}

    @field_validator("freeze")
    @classmethod
    def _freeze_patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"learner.freeze: '{pattern}' is not a regular expression ({e})") from None
        return patterns


class CheckpointConfig(Strict):
    every_steps: int = Field(50, ge=1)
    keep_last: int = Field(2, ge=1)
    save_hf: bool = True  # each checkpoint also holds hf/, a Hugging Face folder (align/export.py)
