"""Recipe models: one strict, frozen pydantic model per job.

Every section forbids unknown keys (a typo must fail, not pass silently as it does with
``extra="allow"`` configs), and names carry scope and unit (``micro_batch_size_per_device``,
``max_new_tokens``, ``timeout_s``). Batch sizes that are algorithmic are global
(``prompts_per_step``); sizes that are about performance end in ``_per_device``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

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
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class TokenizerConfig(Strict):
    """``path`` loads an existing tokenizer; ``null`` trains the tiny world's BPE tokenizer."""

    path: str | None = None
    vocab_size: int = 1024


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
    lora: LoraConfig | None = None
    max_seq_len: int = Field(512, ge=8)
    # MoE layers (align/learner/moe.py). auto: grouped_mm on CUDA, eager on CPU. freeze_router null:
    # frozen in RL (as Nemotron 3 Nano), trained in SFT/DPO/RM.
    experts_implementation: Literal["auto", "grouped_mm", "batched_mm", "eager"] = "auto"
    freeze_router: bool | None = None
    on_nonfinite: Literal["stop", "skip_step"] = "stop"  # align/guards.py: skip the update; stop after
    max_nonfinite_steps: int = Field(3, ge=1)  # this many non-finite steps in a row (exit 3)


class CheckpointConfig(Strict):
    every_steps: int = Field(50, ge=1)
    keep_last: int = Field(2, ge=1)


# ---------------------------------------------------------------- data


class ReasoningDataConfig(Strict):
    """How SFT data teaches the reasoning toggle and budgets (Nemotron 3 Nano used ~10% / ~3%)."""

    no_think_fraction: float = Field(0.1, ge=0, le=1)
    truncated_budget_fraction: float = Field(0.03, ge=0, le=1)

    @model_validator(mode="after")
    def _fractions_fit(self) -> "ReasoningDataConfig":
        if self.no_think_fraction + self.truncated_budget_fraction > 1:
            raise ValueError("no_think_fraction + truncated_budget_fraction must be at most 1")
        return self


class GeneratedData(Strict):
    """Samples generated by environments' task generators from a seed (the tiny world)."""

    envs: dict[str, float] = {"math": 1.0}  # environment name -> share of samples
    num_train: int = Field(2000, ge=1)
    num_eval: int = Field(100, ge=0)
    seed: int = 0


class DataConfig(Strict):
    """Either a dataset (local JSONL/Parquet path or a ``datasets`` name) or generated tasks."""

    path: str | None = None
    split: str = "train"
    eval_path: str | None = None
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    generated: GeneratedData | None = GeneratedData()
    # What to do with a malformed row: stop with its index, or skip it and count it.
    on_bad_row: Literal["error", "skip"] = "error"
    reasoning: ReasoningDataConfig = ReasoningDataConfig()

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if self.path is None and self.generated is None:
            raise ValueError("set data.path or data.generated")
        return self


# ---------------------------------------------------------------- jobs


class JobBase(Strict):
    job: str
    description: str = ""
    seed: int = 0
    output_dir: str = "runs/${name}"
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    cluster: ClusterConfig = ClusterConfig()
    learner: LearnerConfig = LearnerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # Start from a previous stage's checkpoint (an HF folder). null: model.path or a fresh tiny model.
    init_from: str | None = None
    log_every_steps: int = Field(1, ge=1)


class DataJobBase(JobBase):  # SFT, DPO, RM train on rows; RL reads tasks from its environments
    data: DataConfig = DataConfig()


class SFTSettings(Strict):
    max_steps: int = Field(100, ge=1)
    eval_every_steps: int = Field(25, ge=1)
    num_eval_samples_to_generate: int = Field(4, ge=0)
    max_new_tokens: int = Field(128, ge=1)


class SFTRecipe(DataJobBase):
    job: Literal["sft"] = "sft"
    sft: SFTSettings = SFTSettings()


class DPOSettings(Strict):
    max_steps: int = Field(100, ge=1)
    eval_every_steps: int = Field(25, ge=1)
    loss: Literal["sigmoid", "ipo", "sft_regularized"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    sft_weight: float = Field(1.0, ge=0)  # used by sft_regularized
    # separate_group: a frozen copy in its own learner group; lora_disabled: base weights under LoRA.
    reference: Literal["separate_group", "lora_disabled"] = "separate_group"
    # Generated data only: greedy task accuracy of the start and final policy on this many
    # held-out tasks per environment (0: skip), generating up to max_new_tokens.
    num_eval_samples_to_generate: int = Field(0, ge=0)
    max_new_tokens: int = Field(128, ge=1)


class DPORecipe(DataJobBase):
    job: Literal["dpo"] = "dpo"
    dpo: DPOSettings = DPOSettings()


class RMSettings(Strict):
    max_steps: int = Field(100, ge=1)
    eval_every_steps: int = Field(25, ge=1)
    objective: Literal["bradley_terry", "regression"] = "bradley_terry"
    # Multi-attribute regression: attribute name -> weight used to combine them at inference.
    attributes: dict[str, float] = {}
    center_rewards_coefficient: float = Field(0.0, ge=0)


class RMRecipe(DataJobBase):
    job: Literal["rm"] = "rm"
    rm: RMSettings = RMSettings()


class SamplingConfig(Strict):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1
    max_new_tokens: int = Field(256, ge=1)
    # Tokens left for the answer after a forced </think> when the thinking budget runs out.
    max_answer_tokens: int = Field(64, ge=1)


class RolloutConfig(Strict):
    backend: Literal["vllm"] = "vllm"
    sampling: SamplingConfig = SamplingConfig()
    gpu_memory_utilization: float = Field(0.15, gt=0, le=1)  # on CPU it means CPU memory
    # KV-cache size in MiB; set on CPU, where vLLM's share-of-free-memory estimate is unreliable.
    kv_cache_memory_mb: int | None = Field(None, ge=16)
    max_model_len: int = Field(1024, ge=64)
    max_turns: int = Field(4, ge=1)
    enforce_eager: bool = True
    # How new weights reach the engines after an update (align/weight_sync/). auto: cuda_ipc when
    # every engine shares a GPU with a learner, broadcast (NCCL) when the engines have GPUs of their
    # own, object_store on CPU and with grpo.off_policy_overlap (which needs a snapshot).
    weight_sync: Literal["auto", "object_store", "broadcast", "cuda_ipc"] = "auto"
    weight_sync_bucket_mb: int = Field(512, ge=1)
    # Record each token's routed experts per MoE layer in the trajectories (routing replay).
    return_routed_experts: bool = False


class EnvSpec(Strict):
    name: str
    weight: float = Field(1.0, gt=0)
    params: dict[str, Any] = {}  # validated by the environment's own params model
    data_path: str | None = None  # null: the environment's task generator; else a file, dataset folder or hub id
    columns: dict[str, str] = {}  # the environment's field -> the dataset's column (envs/public_data.py)
    on_bad_row: Literal["error", "skip"] = "error"
    num_train: int = Field(1000, ge=1)
    num_eval: int = Field(64, ge=0)


class RewardSpec(Strict):
    name: str
    weight: float = 1.0
    params: dict[str, Any] = {}


class GRPOSettings(Strict):
    max_steps: int = Field(50, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    generations_per_prompt: int = Field(4, ge=2)
    baseline: Literal["mean_std", "leave_one_out"] = "leave_one_out"
    clip_low: float = Field(0.2, gt=0)
    clip_high: float = Field(0.28, gt=0)
    # k3 KL to the frozen start policy, per token in the loss (0: off, as Nemotron 3 Nano).
    kl_coef: float = Field(0.0, ge=0)
    # Where that reference lives when kl_coef > 0: separate_group (a second learner group with the
    # start weights) or lora_disabled (the policy's learners with the LoRA adapters off; needs learner.lora).
    reference: Literal["separate_group", "lora_disabled"] = "separate_group"
    loss_aggregation: Literal["token", "sequence"] = "token"
    dynamic_sampling: bool = True
    max_refill_rounds: int = Field(2, ge=0)
    overlong_filtering: bool = True
    tis_cap: float = Field(2.0, gt=0)  # truncated importance sampling cap for train/infer mismatch
    # Drop whole sequences whose mean over policy tokens of exp(|logp_learner - logp_rollout|)
    # exceeds this (NeMo-RL's seq_logprob_error_threshold; null: off). See align/algorithms/rl/guard.py.
    max_seq_logprob_error: float | None = Field(None, ge=1)
    # rollout: MoE layers route each token to the experts vLLM chose (align/learner/routing_replay.py).
    # (YAML reads a bare off as false: both mean "off".)
    routing_replay: Annotated[Literal["off", "rollout"], BeforeValidator(lambda v: "off" if v is False else v)] = "off"
    epochs_per_step: int = Field(1, ge=1)
    eval_every_steps: int = Field(10, ge=1)
    # Off-policy overlap: the rollout of step t+1 runs while the learners update on step t, so its
    # trajectories come from weights up to max_staleness updates old (logged as `staleness`); the
    # PPO ratio is taken against the learner's current weights and TIS corrects the rest.
    off_policy_overlap: bool = False
    max_staleness: int = Field(1, ge=1)
    max_env_error_rate: float = Field(0.5, ge=0, le=1)  # align/guards.py: warn above this share of failed
    max_env_failing_steps: int = Field(3, ge=1)  # samples; stop after this many such steps in a row (exit 3)
    keep_reward_only_groups: bool = False  # train on groups the environment failed on (see batch.py)


class RLReasoningConfig(Strict):
    """Reasoning modes of RL prompts: a share in /no_think, a share with a thinking budget."""

    no_think_fraction: float = Field(0.1, ge=0, le=1)
    budget_fraction: float = Field(0.2, ge=0, le=1)
    budgets: list[int] = [16, 32, 64]  # ladder steps drawn for budgeted prompts
    eval_budgets: list[int] = [16, 32, 64]

    @model_validator(mode="after")
    def _fractions_fit(self) -> "RLReasoningConfig":
        if self.no_think_fraction + self.budget_fraction > 1:
            raise ValueError("no_think_fraction + budget_fraction must be at most 1")
        return self


class RLRecipe(JobBase):
    """GRPO over several environments.

    Gradient accumulation is derived, not set: every step trains on
    ``prompts_per_step * generations_per_prompt`` sequences, cut into micro-batches of
    ``learner.micro_batch_size_per_device`` on each of ``cluster.num_learners`` learners.
    """

    job: Literal["rl"] = "rl"
    rollout: RolloutConfig = RolloutConfig()
    envs: list[EnvSpec] = [EnvSpec(name="math")]
    rewards: list[RewardSpec] = []
    grpo: GRPOSettings = GRPOSettings()
    reasoning: RLReasoningConfig = RLReasoningConfig()

    @model_validator(mode="after")
    def _batch_divides(self) -> "RLRecipe":
        per_step = self.grpo.prompts_per_step * self.grpo.generations_per_prompt
        per_pass = self.cluster.num_learners * self.learner.micro_batch_size_per_device
        if per_step % per_pass:
            raise ValueError(
                f"grpo.prompts_per_step * grpo.generations_per_prompt = {per_step} sequences must split evenly into "
                f"cluster.num_learners * learner.micro_batch_size_per_device = {per_pass}"
            )
        if self.learner.gradient_accumulation_steps != 1:
            raise ValueError("learner.gradient_accumulation_steps is derived in RL recipes; leave it at 1")
        if self.grpo.off_policy_overlap and self.rollout.weight_sync in ("broadcast", "cuda_ipc"):
            raise ValueError(
                f"rollout.weight_sync={self.rollout.weight_sync} streams the learner's live weights, but grpo.off_policy_overlap "
                "loads them later, behind the rollout in flight, and needs a snapshot: use rollout.weight_sync=object_store (or auto)"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        per_step = self.grpo.prompts_per_step * self.grpo.generations_per_prompt
        return per_step // (self.cluster.num_learners * self.learner.micro_batch_size_per_device)

    @model_validator(mode="after")
    def _unique_envs(self) -> "RLRecipe":
        names = [e.name for e in self.envs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"environment listed twice in envs: {', '.join(dupes)}")
        return self


class PipelineStage(Strict):
    name: str
    recipe: str  # a recipe name or path; its job runs with the overrides below
    # Dotted overrides; "${stage:NAME}" is replaced by stage NAME's final checkpoint folder.
    overrides: list[str] = []
    evaluate: bool = True  # evaluate this stage's policy in the report (not for reward models)


class PipelineEval(Strict):
    """The held-out evaluation every stage's policy gets, for the report."""

    envs: dict[str, int] = {"math": 32}  # environment -> number of held-out tasks
    budgets: list[int] = [16, 32, 64]
    max_new_tokens: int = Field(96, ge=1)
    max_answer_tokens: int = Field(32, ge=1)
    max_turns: int = Field(3, ge=1)


class PipelineRecipe(Strict):
    job: Literal["pipeline"] = "pipeline"
    description: str = ""
    seed: int = 0
    output_dir: str = "runs/${name}"
    stages: list[PipelineStage]
    eval: PipelineEval = PipelineEval()

    @model_validator(mode="after")
    def _stage_refs(self) -> "PipelineRecipe":
        import re

        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            for ref in re.findall(r"\$\{stage:([^}]+)\}", " ".join(stage.overrides)):
                if ref not in seen:
                    raise ValueError(f"stages.{i}.overrides: stage '{stage.name}' refers to '${{stage:{ref}}}', which is not an earlier stage")
            if stage.name in seen:
                raise ValueError(f"stages.{i}.name: stage name '{stage.name}' is used twice")
            seen.add(stage.name)
        return self


RECIPE_MODELS: dict[str, type[BaseModel]] = {
    "sft": SFTRecipe,
    "dpo": DPORecipe,
    "rm": RMRecipe,
    "rl": RLRecipe,
    "pipeline": PipelineRecipe,
}

Recipe = SFTRecipe | DPORecipe | RMRecipe | RLRecipe | PipelineRecipe
