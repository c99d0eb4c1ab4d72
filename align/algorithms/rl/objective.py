"""The GRPO objective and the log-prob pass, as picklable callables run inside learner actors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from align.config.schema import GRPOSettings
from align.learner.routing_replay import set_replay
from align.losses import grpo_loss_sum, kl_k3, shift, token_logprobs, top_entropy_mask, truncated_is_weights


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token log-probs of ``labels`` at the sampling temperature, [B, T-1].

    A micro-batch that carries ``routed_experts`` (``grpo.routing_replay: rollout``) is run with
    the rollout's expert choices in every MoE layer (align/learner/routing_replay.py); one without
    runs the routers' own top-k. The frozen reference (``grpo.kl_coef > 0``) reads the same
    micro-batches, so it replays them too: KL is then measured on one routing.
    """

    temperature: float = 1.0

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.with_logits(model, mb)[0]

    def with_logits(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probs and the shifted logits they came from, [B, T-1, V]."""
        set_replay(model, mb.get("routed_experts"), mb["attention_mask"])
        logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
        lg, lb = shift(logits, mb["labels"])
        return token_logprobs(lg, lb, self.temperature), lg


@dataclass(frozen=True)
class GRPOObjective:
    """Clipped surrogate on policy tokens, with truncated importance sampling and an optional KL.

    ``old_logprobs`` (the learner's own log-probs before this step's update) define the PPO
    ratio; ``rollout_logprobs`` (what vLLM sampled with) differ from them by numerics and, with
    off-policy overlap, staleness. The TIS weight min(pi_old / pi_rollout, cap) corrects for
    that gap, as in Yao et al. / verl's "TIS".

    With off-policy overlap or ``grpo.mode: async`` the trajectories come from weights up to
    ``max_staleness`` updates older than the learner's, and ``old_logprobs`` are still the learner's *current* weights,
    not the generating ones: the clip keeps the trust region around the policy being updated,
    and the behaviour gap (staleness plus numerics) is all in the TIS weight (the decoupled PPO
    objective of Hilton et al. 2022, as AReaL uses). The generating weights are never kept.

    ``kl_coef > 0`` adds ``kl_coef`` x k3 KL to the frozen reference per token; the micro-batch
    must then carry ``ref_logprobs`` (the driver computes them every step, never stores them).
    ``forking_share < 1`` keeps the clipped term on that share of the micro-batch's tokens with the
    highest entropy (:func:`top_entropy_mask`); the rest still count in the token total.
    """

    clip_low: float
    clip_high: float
    aggregation: str
    tis_cap: float
    kl_coef: float = 0.0
    temperature: float = 1.0
    forking_share: float = 1.0

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        if self.kl_coef > 0 and "ref_logprobs" not in mb:
            raise ValueError("GRPOObjective: kl_coef > 0 but the micro-batch has no ref_logprobs (the reference log-probs)")
        logp, logits = TokenLogprobs(self.temperature).with_logits(model, mb)
        mask = mb["loss_mask"]
        # Without a separate pass (see needs_old_pass) the update is the step's only one, so the
        # weights before it are the ones this forward runs: pi_old is logp itself, detached.
        old = mb["old_logprobs"] if "old_logprobs" in mb else logp.detach()
        weights = truncated_is_weights(old, mb["rollout_logprobs"], self.tis_cap) * mask
        if self.forking_share < 1.0:
            weights = weights * top_entropy_mask(logits, mask, self.forking_share, self.temperature)
        loss, stats = grpo_loss_sum(
            logp, old, mb["advantages"], mask, self.clip_low, self.clip_high, self.aggregation,
            is_weights=weights, ref_logp=mb.get("ref_logprobs"), kl_coef=self.kl_coef,
        )  # fmt: skip
        with torch.no_grad():  # train/inference mismatch, summed; the driver divides by ``tokens``
            stats["mismatch_k3_sum"] = (kl_k3(mb["rollout_logprobs"], old) * mask).sum()
            stats["mismatch_abs_sum"] = ((mb["rollout_logprobs"] - old).abs() * mask).sum()
        return loss, {k: v.detach() if isinstance(v, torch.Tensor) else float(v) for k, v in stats.items()}  # summed on the device


def needs_old_pass(g: GRPOSettings, has_reference: bool) -> bool:
    """Whether a step needs the learner's log-probs in a pass of their own, before its update.

    Only where something reads them before the update: more than one update per step (epochs or
    mini-batches: each must clip against the same pi_old), sequence masking by log-prob error, or the KL to a reference
    (its per-environment metric). Otherwise the update's own forward gives them for free, as TRL
    does when ``num_iterations == 1``: a step then costs one forward fewer.
    """
    return g.epochs_per_step > 1 or g.mini_batches > 1 or g.max_seq_logprob_error is not None or has_reference
