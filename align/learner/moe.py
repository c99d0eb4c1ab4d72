"""Mixture-of-Experts layers in the learner: the experts kernel, a frozen router, LoRA on experts.

transformers' NemotronH MoE layer (``NemotronHMoE``) holds a router (``gate``:
``NemotronHTopkRouter``, a ``[n_experts, hidden]`` weight plus an ``e_score_correction_bias``
buffer), routed experts (``experts``: two 3-D parameters ``up_proj`` / ``down_proj``, non-gated
relu2) and a shared expert (``shared_experts``: a plain MLP).

What the checkpoint defines, and how the learner keeps it:
- the expert bias ``e_score_correction_bias`` is a *buffer*: it shifts which experts are chosen
  but never the weights of the chosen ones, no optimizer ever sees it, and it is saved and synced
  as loaded (transformers keeps it in float32). Pre-training updates it outside the gradient
  (aux-loss-free load balancing); nothing here does, so it stays fixed, as in Nano 3's RL;
- there is no load-balancing loss to turn off: transformers' NemotronH forward returns router
  logits (``output_router_logits``) but adds no auxiliary loss, so the learner's loss is the
  objective's alone;
- ``freeze_router`` (on in RL unless the recipe says otherwise) sets ``requires_grad=False`` on
  every router weight, so it is left out of the optimizer (and its moments), and its values after
  any number of steps are the checkpoint's.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from align.config.schema import LearnerConfig

log = logging.getLogger(__name__)


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The routers of ``model``'s NemotronH MoE layers, in layer order (the order vLLM reports routed
    experts). Other MoE families' routers return other things and are not handled here."""
    return [m for m in model.modules() if type(m).__name__ == "NemotronHTopkRouter"]


def has_moe_layers(model: nn.Module) -> bool:
    return bool(moe_routers(model))


def resolve_experts_implementation(requested: str) -> tuple[str, str]:
    """The experts kernel to use, and why.

    ``auto``: ``grouped_mm`` on a CUDA device of compute capability 8.0 or more (one grouped GEMM
    per projection: about 6x transformers' eager loop over experts on an H200), ``eager`` otherwise.
    On CPU (torch 2.13) all three run and agree; on a tiny MoE policy (bench/bench_moe_experts.py,
    8x128 tokens, one thread, forward + backward) ``eager`` trained 8,503 tokens/s, ``grouped_mm``
    8,103 and ``batched_mm`` (a GEMM per token and expert slot) 746, so ``eager``, the reference
    loop, is the CPU choice.
    """
    if requested != "auto":
        return requested, "set in learner.experts_implementation"
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        return "grouped_mm", "auto: CUDA device of compute capability 8.0 or more"
    if torch.cuda.is_available():
        return "eager", "auto: CUDA device below compute capability 8.0 has no grouped_mm kernel"
    return "eager", "auto: no CUDA device (on CPU grouped_mm is no faster than the eager loop)"


_logged: set[tuple[str, str]] = set()


def configure_moe(model: nn.Module, cfg: LearnerConfig, freeze_router: bool) -> dict[str, object]:
    """Set the experts kernel and freeze the routers of an MoE ``model`` in place (before LoRA and
    the optimizer). A model without MoE layers is left alone. Returns what was done, for logs and tests."""
    routers = moe_routers(model)
    if not routers:
        return {"moe_layers": 0}
    impl, why = resolve_experts_implementation(cfg.experts_implementation)
    # The outermost transformers model (a reward model wraps one as its backbone) sets it for all layers.
    next(m for m in model.modules() if hasattr(m, "set_experts_implementation")).set_experts_implementation(impl)
    if (impl, why) not in _logged:  # once per process, not once per learner rebuild
        _logged.add((impl, why))
        log.warning("MoE experts: %s (%s)", impl, why)
    frozen = 0
    if freeze_router:
        for router in routers:
            for p in router.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
    return {"moe_layers": len(routers), "experts_implementation": impl, "frozen_router_params": frozen}


def lora_target_parameters(model: nn.Module, wanted: list[str], dropout: float = 0.0) -> list[str] | None:
    """The entries of ``learner.lora.target_parameters`` this model has (peft refuses names that
    match nothing, and a dense model has no expert parameters); None when there are none."""
    names = [n for n, _ in model.named_parameters()]
    present = [w for w in wanted if any(n == w or n.endswith("." + w) for n in names)]
    if present and dropout:
        raise ValueError(
            f"learner.lora.dropout={dropout}: peft cannot apply dropout to LoRA on parameters, and "
            f"learner.lora.target_parameters adapts {', '.join(present)} here. Set learner.lora.dropout=0, "
            "or learner.lora.target_parameters=[] to leave the routed experts out of LoRA"
        )
    return present or None
