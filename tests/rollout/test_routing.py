"""rollout/routing.py without an engine: padding routes to a trajectory, and refusing to record
routes for a policy that has no MoE layers (before any engine starts)."""

from __future__ import annotations

import numpy as np
import pytest

from align.cluster import ClusterError, RolloutGroup
from align.config.schema import ClusterConfig, RolloutConfig
from rollout.routing import has_moe_layers, moe_layer_indices, pad_routes


def test_pad_routes_marks_tokens_past_the_last_call_unrouted() -> None:
    routes = np.arange(3 * 2 * 2, dtype=np.int16).reshape(3, 2, 2)
    padded = pad_routes(routes, 5)
    assert padded.shape == (5, 2, 2) and padded.dtype == np.int16
    assert np.array_equal(padded[:3], routes) and (padded[3:] == -1).all()
    assert np.array_equal(pad_routes(routes, 2), routes[:2])
    assert pad_routes(None, 4) is None


def test_unsigned_routes_from_vllm_on_gpu_are_padded_with_minus_one() -> None:
    """vLLM 0.26 on GPU returns uint8 expert ids (seen on an H200: OverflowError before this)."""
    routes = np.array([[[3, 63]], [[0, 1]]], dtype=np.uint8)
    padded = pad_routes(routes, 4)
    assert padded.dtype.kind == "i" and padded[:2].tolist() == routes.tolist() and (padded[2:] == -1).all()


def test_moe_layers_are_read_from_the_checkpoint(tiny_checkpoint, tiny_moe_checkpoint) -> None:
    assert has_moe_layers(tiny_moe_checkpoint) and not has_moe_layers(tiny_checkpoint)
    # vLLM on GPU returns routes for every decoder layer; the engine keeps these (the MoE ones).
    import json

    kinds = json.loads((tiny_moe_checkpoint / "config.json").read_text())["layers_block_type"]
    idx = moe_layer_indices(tiny_moe_checkpoint)
    assert idx and len(idx) < len(kinds) and all(kinds[i] == "moe" for i in idx)
    assert moe_layer_indices(tiny_checkpoint) == []


def test_routes_from_a_dense_policy_are_refused_before_engines_start(tiny_checkpoint) -> None:
    with pytest.raises(ClusterError, match="return_routed_experts is on, but the policy .* has no MoE layers; turn it off"):
        RolloutGroup(ClusterConfig(), RolloutConfig(return_routed_experts=True), str(tiny_checkpoint), seed=0, in_process=True)
