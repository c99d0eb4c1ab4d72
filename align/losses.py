"""Losses and advantages: pure tensor functions, in one place.

Each is tested against hand-computed values and, where TRL implements the same loss, against
TRL's implementation on the same inputs. Functions that feed the learner return a *sum* over
their units (tokens, sequences, pairs); the learner divides by the global-batch count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


# ------------------------------------------------------------------------- token log-probs


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels[t] | < t) for already-shifted ``logits[b, t]`` / ``labels[b, t]`` (IGNORE -> 0)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    safe = labels.clamp(min=0)
    logp = torch.gather(F.log_softmax(logits, dim=-1), -1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * (labels != IGNORE)


def top_entropy_mask(logits: torch.Tensor, mask: torch.Tensor, share: float, temperature: float = 1.0) -> torch.Tensor:
    """1.0 on the ``share`` of ``mask``'s tokens whose next-token distribution (``logits / temperature``,
    already shifted) has the highest entropy, else 0.0; ties at the cut are all kept. No gradient.

    One sequence at a time, so that the extra [T, V] softmax is one row's, not the micro-batch's."""
    with torch.no_grad():
        entropy = torch.stack([_entropy(row.float() / temperature) for row in logits])
        on = mask.bool()
        n = int(on.sum())
        if n == 0:
            return torch.zeros_like(entropy)
        cut = entropy[on].topk(max(1, math.ceil(share * n))).values.min()
        return ((entropy >= cut) & on).float()


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1 (labels are token ids, IGNORE where no loss)."""
    return logits[:, :-1, :], labels[:, 1:]


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over supervised tokens, and their count (a 0-d tensor on the
    logits' device: reading it as a number would wait for the GPU)."""
    lg, lb = shift(logits, labels)
    loss = F.cross_entropy(lg.reshape(-1, lg.size(-1)).float(), lb.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, (lb != IGNORE).sum()


# ------------------------------------------------------------------------- preference losses


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses from summed sequence log-probs, plus chosen/rejected implicit rewards.

    sigmoid: -(1-e) log s(b h) - e log s(-b h) (conservative DPO when e > 0);
    ipo: (h - 1/(2b))^2, with h the log-ratio margin. Same conventions as TRL's DPOTrainer;
    TRL 1.16 feeds IPO per-token *average* log-probs (so does ``DPOObjective``), the others sums.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; expected sigmoid or ipo")
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log s(r_c - r_r [- margin]) per pair, as TRL's RewardTrainer."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def regression_loss_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed squared error over attributes (multi-attribute reward models, HelpSteer style)."""
    return ((pred.float() - target.float()) ** 2).sum()


# ------------------------------------------------------------------------- GRPO


def group_advantages(rewards: torch.Tensor, baseline: str = "leave_one_out", eps: float = 1e-6) -> torch.Tensor:
    """Advantages for the G rewards of one prompt's group.

    mean_std: (r - mean) / (std + eps)  (GRPO); leave_one_out: r_i - mean_{j != i} r_j (RLOO).
    A group whose rewards are all equal gets zero advantages either way.
    """
    g = rewards.numel()
    if g < 2:
        return torch.zeros_like(rewards)
    if baseline == "mean_std":
        return (rewards - rewards.mean()) / (rewards.std(unbiased=True) + eps)
    if baseline == "leave_one_out":
        return rewards - (rewards.sum() - rewards) / (g - 1)
    raise ValueError(f"unknown baseline {baseline!r}; expected mean_std or leave_one_out")


def truncated_is_weights(train_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_train / pi_rollout, cap) per token: corrects the train/inference mismatch (TIS)."""
    return torch.exp(train_logp - rollout_logp).clamp(max=cap).detach()


def seq_logprob_error(train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, mean over masked tokens of exp(|log p_train - log p_rollout|), shape [B].

    NeMo-RL's sequence "multiplicative probability error" (its ``seq_logprob_error_threshold``
    compares against it; Nemotron 3 Nano used 2): 1.0 is perfect agreement, 2.0 means the typical
    token's probability differs by a factor of two. The absolute value is taken per token, so
    errors of opposite sign cannot cancel as they do in a sequence's importance ratio. A sequence
    without masked tokens scores 1.0.
    """
    mask = mask.float()
    err = torch.exp((train_logp.float() - rollout_logp.float()).abs().clamp(max=80.0))
    n = mask.sum(-1)
    return torch.where(n > 0, (err * mask).sum(-1) / n.clamp(min=1), torch.ones_like(n))


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(p || ref) for tokens sampled from p: r - log r - 1, r = ref / p.

    Unbiased and never negative (Schulman 2020, "Approximating KL divergence"); the estimator
    GRPO uses for its KL penalty (DeepSeekMath eq. 4). Gradients flow through ``logp``.
    """
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1


def grpo_loss_sum(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    aggregation: str = "token",
    is_weights: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate with separate low/high clip (DAPO clip-higher), summed over units.

    ``logp``/``old_logp``/``mask``: [B, T] per-token; ``advantages``: [B]. With ``token``
    aggregation the unit is a token (divide by the global token count); with ``sequence``
    each sequence's token mean counts once (divide by the number of sequences).
    With ``kl_coef`` > 0, the k3 KL to the reference (:func:`kl_k3` against ``ref_logp``) is
    added per token times ``kl_coef``, outside the importance weights (as GRPO/DeepSeekMath).
    """
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    if kl_coef > 0 and ref_logp is not None:
        per_token = per_token + kl_coef * kl_k3(logp, ref_logp)
    if aggregation == "token":
        total = (per_token * mask).sum()
    elif aggregation == "sequence":
        total = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected token or sequence")
    with torch.no_grad():
        is_clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        stats = {"clip_frac_sum": (is_clipped.float() * mask).sum(), "ratio_sum": (ratio * mask).sum(), "tokens": mask.sum()}
    return total, stats
