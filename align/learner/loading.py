"""The model a learner trains, loaded from a Hugging Face folder."""

from __future__ import annotations

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


