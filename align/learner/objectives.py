"""Objectives: picklable functions ``objective(model, micro_batch) -> (loss_sum, metrics)``.

They run inside learner actors. Each returns a *sum* over its units; the learner divides by
``micro_batch["loss_denominator"]``, the unit count of the whole global batch. Metrics computed
on the device stay detached 0-d tensors (the learner sums them there and reads them back once a
step, align/learner/step_stats.py); ``float()`` on them would wait for the GPU per micro-batch.
Counts known from shapes are plain floats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from align.losses import IGNORE, bradley_terry_losses, dpo_losses, regression_loss_sum, shift, sft_loss_sum, token_logprobs


Metrics = dict[str, float | torch.Tensor]


def sft_objective(model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
    loss, tokens = sft_loss_sum(logits, mb["labels"])
    return loss, {"tokens": tokens}


def sequence_token_logprobs(model: nn.Module, mb: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of ``labels`` (shifted; 0 where labels are IGNORE), shape [B, T-1]."""
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
    lg, lb = shift(logits, mb["labels"])
    return token_logprobs(lg, lb, temperature)


# ---------------------------------------------------------------------------- preference pairs
#
# DPO and reward-model objectives read padded pair micro-batches (align.data.pad_batch):
# chosen_/rejected_ input_ids, attention_mask and labels, padded to one shared length so both
# sides go through the model in one forward pass. Units are pairs (rows for regression);
# metrics are sums (counts, summed margins) so they add up over micro-batches, ranks and eval
# chunks, and the driver divides them by ``pairs`` (or ``rows``).


def _both_sides(mb: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return torch.cat([mb[f"chosen_{key}"], mb[f"rejected_{key}"]])


def pair_token_logprobs(model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the chosen and rejected responses ([B, T-1] each) and their masks."""
    both = {k: _both_sides(mb, k) for k in ("input_ids", "attention_mask", "labels")}
    logp = sequence_token_logprobs(model, both)
    mask = both["labels"][:, 1:] != IGNORE
    n = mb["chosen_input_ids"].size(0)
    return logp[:n], logp[n:], mask[:n], mask[n:]


def reference_pair_logps(model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, 2]``: summed log-probs of (chosen, rejected) under ``model``, for ``LearnerGroup.compute``."""
    chosen, rejected, _, _ = pair_token_logprobs(model, mb)
    return torch.stack([chosen.sum(-1), rejected.sum(-1)], dim=-1)


@dataclass(frozen=True)
class AdaptersOff:
    """``fn(model, mb)`` on the base weights: the LoRA adapters are off inside peft's context.

    The frozen reference of a LoRA policy (DPO, GRPO's KL): exact for a reference equal to the
    weights LoRA started from (adapters initialise to zero), and it costs no second copy of the
    model. Picklable, for ``LearnerGroup.compute``.
    """

    fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        module = getattr(model, "module", model)  # the DeepSpeed engine wraps the peft model
        if not hasattr(module, "disable_adapter"):
            raise ValueError("reference lora_disabled needs a LoRA learner (set learner.lora), or use reference: separate_group")
        with module.disable_adapter():
            return self.fn(model, mb)


def reference_pair_logps_lora_disabled(model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`reference_pair_logps` of the base weights (:class:`AdaptersOff`)."""
    return AdaptersOff(reference_pair_logps)(model, mb)


@dataclass(frozen=True)
class DPOObjective:
    """DPO on summed sequence log-probs against reference log-probs carried in the micro-batch.

    The micro-batch needs ``ref_chosen_logps`` / ``ref_rejected_logps`` ([B]), which the driver
    computes from the frozen reference just before the step (they are never stored).

    - ``sigmoid``: DPO, with conservative label smoothing ``e`` (cDPO) when ``label_smoothing > 0``.
    - ``ipo``: IPO on per-token *average* log-ratios, as TRL 1.16 does (confirmed by the IPO
      authors there): the squared loss would otherwise scale with response length.
    - ``sft_regularized``: sigmoid DPO + ``sft_weight`` x the chosen response's per-token NLL
      (RPO, Pang et al. 2024: the NLL is length-normalised per pair, so every pair counts once).
    """

    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 1.0

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        chosen_tok, rejected_tok, chosen_mask, rejected_mask = pair_token_logprobs(model, mb)
        chosen, rejected = chosen_tok.sum(-1), rejected_tok.sum(-1)
        ref_chosen, ref_rejected = mb["ref_chosen_logps"].to(chosen), mb["ref_rejected_logps"].to(rejected)
        n_chosen = chosen_mask.sum(-1).clamp(min=1)
        n_rejected = rejected_mask.sum(-1).clamp(min=1)
        if self.loss == "ipo":
            losses, _, _ = dpo_losses(chosen / n_chosen, rejected / n_rejected, ref_chosen / n_chosen, ref_rejected / n_rejected, self.beta, "ipo")
        elif self.loss in ("sigmoid", "sft_regularized"):
            losses, _, _ = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, self.beta, "sigmoid", self.label_smoothing)
        else:
            raise ValueError(f"unknown DPO loss {self.loss!r}; expected sigmoid, ipo or sft_regularized")
        nll = -chosen / n_chosen
        if self.loss == "sft_regularized":
            losses = losses + self.sft_weight * nll
        with torch.no_grad():
            chosen_reward = self.beta * (chosen - ref_chosen)
            rejected_reward = self.beta * (rejected - ref_rejected)
            margin = chosen_reward - rejected_reward
            metrics = {
                "pairs": float(chosen.numel()),
                "accuracy": (margin > 0).sum(),
                "margin": margin.sum(),
                "chosen_reward": chosen_reward.sum(),
                "rejected_reward": rejected_reward.sum(),
                "chosen_logps": chosen.sum(),
                "rejected_logps": rejected.sum(),
                "chosen_nll_per_token": nll.sum(),
            }
        return losses.sum(), metrics


# ---------------------------------------------------------------------------- reward models


@dataclass(frozen=True)
class BradleyTerryObjective:
    """-log s(r_chosen - r_rejected) per pair on a one-output reward model, as TRL's RewardTrainer.

    ``center_rewards_coefficient`` adds ``c * (r_chosen + r_rejected)^2`` per pair (Eisenstein et
    al. 2023, TRL's option of that name), which keeps rewards centred on zero.
    """

    center_rewards_coefficient: float = 0.0

    def __call__(self, model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        rewards = model(input_ids=_both_sides(mb, "input_ids"), attention_mask=_both_sides(mb, "attention_mask"))[:, 0]
        n = mb["chosen_input_ids"].size(0)
        chosen, rejected = rewards[:n], rewards[n:]
        losses = bradley_terry_losses(chosen, rejected)
        if self.center_rewards_coefficient > 0:
            losses = losses + self.center_rewards_coefficient * (chosen + rejected) ** 2
        with torch.no_grad():
            margin = chosen - rejected
            metrics = {
                "pairs": float(n),
                "accuracy": (margin > 0).sum(),
                "margin": margin.sum(),
                "chosen_reward": chosen.sum(),
                "rejected_reward": rejected.sum(),
            }
        return losses.sum(), metrics


def regression_objective(model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
    """Squared error over every (row, attribute) rating; per-attribute sums ``sq_err_<i>`` as metrics.

    Units are ratings (rows x attributes), so the loss is the mean squared error per rating.
    """
    pred = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
    target = mb["attributes"].to(pred)
    loss = regression_loss_sum(pred, target)
    with torch.no_grad():
        sq = ((pred - target) ** 2).sum(0)
        metrics: Metrics = {"rows": float(pred.size(0)), **{f"sq_err_{i}": v for i, v in enumerate(sq)}}
    return loss, metrics


def reward_model_scores(model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, num_labels]`` rewards of plain (``input_ids``) micro-batches, for ``LearnerGroup.compute``."""
    return model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
