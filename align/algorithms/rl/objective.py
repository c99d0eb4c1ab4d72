"""The GRPO objective and the log-prob pass, as picklable callables run inside learner actors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from align.losses import grpo_loss_sum, shift, token_logprobs, truncated_is_weights


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token log-probs of ``labels`` at the sampling temperature, [B, T-1]."""

    temperature: float = 1.0

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
        lg, lb = shift(logits, mb["labels"])
        return token_logprobs(lg, lb, self.temperature)


@dataclass(frozen=True)
class GRPOObjective:
    """Clipped surrogate on policy tokens, with truncated importance sampling.

    ``old_logprobs`` (the learner's own log-probs before this step's update) define the PPO
    ratio; ``rollout_logprobs`` (what vLLM sampled with) differ from them by numerics and, with
    off-policy overlap, staleness. The TIS weight min(pi_old / pi_rollout, cap) corrects for
    that gap, as in Yao et al. / verl's "TIS".
    """

    clip_low: float
    clip_high: float
    aggregation: str
    tis_cap: float
    kl_coef: float = 0.0
    temperature: float = 1.0

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logp = TokenLogprobs(self.temperature)(model, mb)
        mask = mb["loss_mask"]
        old = mb["old_logprobs"]
        weights = truncated_is_weights(old, mb["rollout_logprobs"], self.tis_cap) * mask
        loss, stats = grpo_loss_sum(
            logp, old, mb["advantages"], mask, self.clip_low, self.clip_high, self.aggregation,
            is_weights=weights, ref_logp=mb.get("ref_logprobs"), kl_coef=self.kl_coef,
        )  # fmt: skip
        return loss, {k: float(v) for k, v in stats.items()}
