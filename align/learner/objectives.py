"""Objectives: picklable functions ``objective(model, micro_batch) -> (loss_sum, metrics)``.

They run inside learner actors. Each returns a *sum* over its units; the learner divides by
``micro_batch["loss_denominator"]``, the unit count of the whole global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from align.losses import shift, sft_loss_sum, token_logprobs


def sft_objective(model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
    loss, tokens = sft_loss_sum(logits, mb["labels"])
    return loss, {"tokens": float(tokens)}


def sequence_token_logprobs(model: nn.Module, mb: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of ``labels`` (shifted; 0 where labels are IGNORE), shape [B, T-1]."""
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
    lg, lb = shift(logits, mb["labels"])
    return token_logprobs(lg, lb, temperature)
