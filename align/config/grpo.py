"""GRPO's recipe sections: the algorithm (``grpo``), its curriculum, and the reasoning modes of RL prompts.

Re-exported by :mod:`align.config.schema`, where the RL recipe holds them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from align.config.sections import Strict


class CurriculumConfig(Strict):
    """Sampling of RL tasks by the pass rates measured in their groups (align/algorithms/rl/curriculum.py)."""

    enabled: bool = False
    solved_streak: int = Field(1, ge=1)  # all-correct groups in a row after which a task counts as solved
    solved_weight: float = Field(0.0, ge=0, le=1)  # 0: solved tasks leave the pool; else their weight is scaled by it
    # uniform; learnability: p(1-p) + min_weight; easy_first: p + min_weight (p: the task's last pass rate)
    weighting: Literal["uniform", "learnability", "easy_first"] = "uniform"
    min_weight: float = Field(0.01, gt=0)
    unseen_pass_rate: float = Field(0.5, ge=0, le=1)  # p of a task not sampled yet
    # A Task.meta key (the built-in generators label ``grade``): an unseen task's p is then the mean
    # last pass rate of the seen tasks of its environment with the same value, shrunk toward
    # unseen_pass_rate by one pseudo-task. Null: every unseen task counts as unseen_pass_rate.
    unseen_prior_key: str | None = None
    histogram_bins: int = Field(5, ge=1, le=20)  # pass-rate histogram per environment in the metrics


class GRPOSettings(Strict):
    max_steps: int = Field(50, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    generations_per_prompt: int = Field(4, ge=2)
    # greedy: each group also plays its prompt once greedily, and a sample's advantage is its reward
    # minus that one's (ReMax, Li et al. 2023; self-critical training, Rennie et al. 2017). What is
    # judged greedily then trains where it is wrong: right samples of a prompt the greedy answer
    # fails are pushed up, wrong samples of a prompt it passes are pushed down, and a prompt whose
    # samples all agree still trains when its greedy answer differs. Costs one more episode a group.
    baseline: Literal["mean_std", "leave_one_out", "greedy"] = "leave_one_out"
    clip_low: float = Field(0.2, gt=0)
    clip_high: float = Field(0.28, gt=0)
    # k3 KL to the frozen start policy, per token in the loss (0: off, as Nemotron 3 Nano).
    kl_coef: float = Field(0.0, ge=0)
    # Where that reference lives when kl_coef > 0: separate_group (a second learner group with the
    # start weights) or lora_disabled (the policy's learners with the LoRA adapters off; needs learner.lora).
    reference: Literal["separate_group", "lora_disabled"] = "separate_group"
    loss_aggregation: Literal["token", "sequence"] = "token"
    # Scales negative advantages (1: plain GRPO). Below 1 the step leans on the samples that beat
    # their group. Zhu et al. 2025 ("The Surprising Effectiveness of Negative Reinforcement in LLM
    # Reasoning") found that reinforcing the right samples raises pass@1 and narrows the output,
    # while penalizing the wrong ones spreads probability and keeps pass@k; their W-REINFORCE weighs
    # the positives 0.1 for pass@k. This is the other way round, for greedy (pass@1) accuracy.
    negative_advantage_scale: float = Field(1.0, ge=0, le=1)
    # Which tokens carry a sample's advantage. sequence: all of its policy tokens (plain GRPO).
    # blamed_step: a sample below its group whose environment blamed a span of its answer
    # (StepResult.info["blame"], such as math's first false step, envs/math/steps.py) trains from
    # that span to its end, so the correct steps before the mistake are not pushed down with it
    # (the tail stays: it carries the mistake on, and any overrun of a thinking budget); every
    # other sample keeps its whole sequence. The first-error credit of step-labelled process
    # supervision (Lightman et al. 2023), from a verifier instead of a learned model.
    credit: Literal["sequence", "blamed_step"] = "sequence"
    # The share of each micro-batch's policy tokens, those with the highest entropy under the
    # sampling distribution, that carry the policy gradient (1: all). Wang et al. 2025 ("Beyond the
    # 80/20 Rule: High-Entropy Minority Tokens Drive Effective RLVR") train on the top 20%: the
    # forks where the policy chooses. The confident rest (copied numbers, known facts) is then not
    # pushed around by the advantages of the samples it sits in. The KL term, if any, keeps every token.
    forking_share: float = Field(1.0, gt=0, le=1)
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
    # Optimizer updates per step (PPO mini-batches; verl's ppo_mini_batch_size, TRL's
    # steps_per_generation): the step's sequences are shuffled into this many equal parts and each
    # part is one update, clipped against the same pi_old (a log-prob pass before the first update).
    # More updates for the same rollouts, at the same learner compute.
    mini_batches: int = Field(1, ge=1)
    eval_every_steps: int = Field(10, ge=1)
    # Off-policy overlap: the rollout of step t+1 runs while the learners update on step t, so its
    # trajectories come from weights up to max_staleness updates old (logged as `staleness`); the
    # PPO ratio is taken against the learner's current weights and TIS corrects the rest.
    off_policy_overlap: bool = False
    # async: engines generate all the time from a prompt stream into a bounded queue of scored
    # groups; every sampled token of a group trained at step s comes from weights of update
    # >= s - max_staleness (align/algorithms/rl/async_loop.py). Needs engines apart from the learners.
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = Field(1, ge=1)
    max_env_error_rate: float = Field(0.5, ge=0, le=1)  # align/guards.py: warn above this share of failed
    max_env_failing_steps: int = Field(3, ge=1)  # samples; stop after this many such steps in a row (exit 3)
    keep_reward_only_groups: bool = False  # train on groups the environment failed on (see batch.py)
    curriculum: CurriculumConfig = CurriculumConfig()


class RLReasoningConfig(Strict):
    """Reasoning modes of RL prompts: a share in /no_think, a share with a thinking budget."""

    no_think_fraction: float = Field(0.1, ge=0, le=1)
    budget_fraction: float = Field(0.2, ge=0, le=1)
    budgets: list[int] = [16, 32, 64]  # ladder steps drawn for budgeted prompts
    eval_budgets: list[int] = [16, 32, 64]
    # After the budget, think on for up to ceil(fraction * budget) tokens and close at the first
    # newline (NVIDIA's budget control; NIM uses 0.1). 0: force </think> at the budget. rollout/episode.py
    budget_grace_fraction: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _fractions_fit(self) -> "RLReasoningConfig":
        if self.no_think_fraction + self.budget_fraction > 1:
            raise ValueError("no_think_fraction + budget_fraction must be at most 1")
        return self
