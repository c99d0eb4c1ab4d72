"""Checks of the tiny policy's layer pattern and MoE settings, run when a recipe is validated.

Without them a bad combination fails minutes later, inside transformers' router or vLLM's
MoE layer, with a message about tensor shapes.
"""

from __future__ import annotations

from typing import Any

LAYER_KINDS = {"M": "Mamba2", "*": "attention", "-": "MLP", "E": "MoE"}


def check_tiny_layers(t: Any) -> None:
    """Raise ``ValueError`` naming the ``model.tiny`` field to fix."""
    unknown = sorted(set(t.layers_block_type) - set(LAYER_KINDS))
    if unknown:
        kinds = ", ".join(f"{k} = {v}" for k, v in LAYER_KINDS.items())
        raise ValueError(f"layers_block_type {t.layers_block_type!r} has unknown layer kinds {unknown}; use {kinds}")
    if "E" not in t.layers_block_type:
        return
    if t.n_routed_experts % t.n_group:
        raise ValueError(f"n_routed_experts ({t.n_routed_experts}) must be a multiple of n_group ({t.n_group})")
    if t.topk_group > t.n_group:
        raise ValueError(f"topk_group ({t.topk_group}) cannot exceed n_group ({t.n_group})")
    per_group = t.n_routed_experts // t.n_group
    if t.n_group > 1 and per_group < 2:
        raise ValueError(f"with n_group > 1 each group needs 2 or more experts (groups are scored by their top 2); got {per_group}")
    reachable = t.topk_group * per_group
    if t.num_experts_per_tok > reachable:
        raise ValueError(
            f"num_experts_per_tok ({t.num_experts_per_tok}) exceeds the experts a token can reach: "
            f"topk_group ({t.topk_group}) x n_routed_experts / n_group ({per_group}) = {reachable}"
        )
