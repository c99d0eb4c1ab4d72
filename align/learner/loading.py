"""The model a learner trains, loaded from a Hugging Face folder, and the parameters it keeps out of training."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from align.models import select_kernels

# Reward models: "reward" trains the head's bias (regression), "pairwise_reward" keeps it at zero
# (Bradley-Terry cannot see it; align.learner.reward_model).
REWARD_KINDS = ("reward", "pairwise_reward")


def load_for_training(path: str, kind: str, num_labels: int, bf16: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    select_kernels()
    if kind == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if kind in REWARD_KINDS:
        from align.learner.reward_model import RewardModel

        return RewardModel.from_causal_lm(path, num_labels=num_labels, dtype=dtype, train_bias=kind == "reward")
    raise ValueError(f"unknown model kind {kind!r}; expected causal_lm, {' or '.join(REWARD_KINDS)}")


def freeze_matching(model: nn.Module, patterns: Sequence[str]) -> int:
    """``requires_grad=False`` on each parameter whose name one of ``patterns`` finds (``re.search``).

    Returns how many elements were frozen. A pattern that finds nothing is an error, not a no-op:
    a typo would otherwise train the whole model without a word (the message shows real names).
    """
    if not patterns:
        return 0
    found = dict.fromkeys(patterns, False)
    frozen = 0
    for name, param in model.named_parameters():
        hits = [p for p in patterns if re.search(p, name)]
        for p in hits:
            found[p] = True
        if hits:
            frozen += param.numel() if param.requires_grad else 0
            param.requires_grad_(False)
    if missing := [p for p, hit in found.items() if not hit]:
        names = [n for n, _ in model.named_parameters()]
        raise ValueError(f"learner.freeze: no parameter name has a match for {' or '.join(missing)}; "
                         f"the model's names look like {', '.join(names[:2])}, ..., {names[-1]}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"learner.freeze: {', '.join(patterns)} freeze every parameter, so nothing would train")
    return frozen
