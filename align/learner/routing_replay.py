"""Routing replay: the learner's MoE layers use the experts the rollout engine chose.

A token's top-k experts are a discrete choice: a tiny numeric difference between vLLM and the
learner flips one, and that token's log-prob then differs by far more than rounding (the
train/inference mismatch of MoE RL). Replay removes that source: in the old-log-prob and the
training forwards, each MoE layer takes the rollout's expert indices for every token the engine
routed, and its own top-k for the rest.

What is replayed, and what is not (as in verl's router replay and the "R3" rollout routing
replay of Ma et al. 2025): only the *indices*. The routing *weights* are the current router's
scores gathered at the replayed indices, normalised and scaled exactly as the router does its own
(sigmoid scores, ``norm_topk_prob``, ``routed_scaling_factor``), so they stay differentiable and
the router still learns when it is not frozen.

How: a forward hook on each ``NemotronHTopkRouter`` (no fork of the model) rewrites its output
``(router_logits, topk_weights, topk_indices)``. The hooks are installed once per model and read
the micro-batch's experts from ``set_replay``; that state stays until the next ``set_replay``, so
a recompute under gradient checkpointing (inside ``backward``, after the objective returned)
replays the same experts.

Layout: ``experts`` is ``[B, T, n_moe_layers, top_k]`` aligned with ``input_ids`` (rows of -1
where the engine routed nothing). With packed rows (GPU, ``align.models.enable_packed_forward``)
the router sees the packed tokens; the hook maps the experts into that layout with the same
deterministic packing the forward does (it depends on the attention mask alone).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from align.data.batching import pack_padded
from align.learner.moe import moe_routers


class _ReplayState:
    def __init__(self, packed: bool) -> None:
        self.packed = packed  # the model runs padded batches as packed rows (enable_packed_forward)
        self.experts: torch.Tensor | None = None  # [B, T, L, K]
        self.attention_mask: torch.Tensor | None = None
        self._in_rows: torch.Tensor | None = None  # the experts in packed rows, [R * W, L, K]

    def for_rows(self, rows: int) -> torch.Tensor | None:
        """This micro-batch's experts as ``[rows, L, K]`` in the layout the router sees."""
        if self.experts is None:
            return None
        b, t, n_layers, k = self.experts.shape
        out = self.experts.reshape(b * t, n_layers, k)
        if self.packed:
            if self._in_rows is None:
                assert self.attention_mask is not None
                # The packing the forward does (align.models._packed): it depends on the mask alone.
                packed = pack_padded(self.attention_mask, self.attention_mask)
                self._in_rows = out.new_full((packed.input_ids.numel(), n_layers, k), -1)
                self._in_rows[packed.target.to(out.device)] = out[packed.source.to(out.device)]
            out = self._in_rows
        if out.shape[0] != rows:
            raise RuntimeError(f"routing replay: the router saw {rows} tokens, the micro-batch has {out.shape[0]} ({b}x{t}, packed: {self.packed})")
        return out


def _state(model: nn.Module) -> _ReplayState:
    """The replay state shared by the hooks of ``model``'s routers (installing them on first use)."""
    target = getattr(model, "module", model)  # the DeepSpeed engine wraps the model
    state = getattr(target, "_align_routing_replay", None)
    if state is None:
        state = _ReplayState(packed=any(getattr(m, "_align_packed", False) for m in target.modules()))
        for layer, router in enumerate(moe_routers(target)):
            router.register_forward_hook(_make_hook(state, layer))
        target._align_routing_replay = state
    return state


def set_replay(model: nn.Module, experts: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> None:
    """Route the next forwards of ``model`` through ``experts`` (None: the routers' own top-k).

    ``experts``: ``[B, T, n_moe_layers, top_k]`` integer indices aligned with the micro-batch's
    ``input_ids``, -1 on tokens to route normally; ``attention_mask`` ``[B, T]``.
    """
    state = _state(model)
    routers = moe_routers(getattr(model, "module", model))
    if experts is not None:
        if experts.dim() != 4 or experts.shape[2] != len(routers) or experts.shape[3] != routers[0].top_k:
            raise ValueError(
                f"routed experts of shape {tuple(experts.shape)} do not fit this policy: expected [batch, tokens, "
                f"{len(routers)} MoE layers, top_k {routers[0].top_k if routers else '-'}]. Were the rollouts made by another model?"
            )
        if int(experts.max()) >= routers[0].num_experts:
            raise ValueError(f"routed expert index {int(experts.max())} is out of range for {routers[0].num_experts} experts")
    state.experts = None if experts is None else experts.long()
    state.attention_mask = attention_mask
    state._in_rows = None


def _make_hook(state: _ReplayState, layer: int) -> Any:
    def hook(router: nn.Module, inputs: tuple[torch.Tensor, ...], output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Any:
        replay = state.for_rows(output[2].shape[0])
        if replay is None:
            return output
        router_logits, own_weights, own_indices = output
        given = replay[:, layer].to(own_indices.device)
        use = (given[:, :1] >= 0).expand_as(own_indices)
        indices = torch.where(use, given.clamp(min=0), own_indices)
        # The router's own weighting, at the replayed indices (NemotronHTopkRouter.forward).
        weights = router_logits.sigmoid().gather(1, indices)
        if router.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * router.routed_scaling_factor
        return router_logits, torch.where(use, weights, own_weights), indices

    return hook
