"""Liger Kernel's fused RMSNorm, SwiGLU and rotary kernels in the learner's model (CUDA only).

Why: a profile of the 1B Llama-style learner step on an H200 (bench/README.md section 7) spent
212 ms in matrix multiplies and about 300 ms in memory-bound elementwise kernels (the RMSNorm's
casts and multiplies, SiLU times up-projection, rotary embedding), which caps its MFU near 34%.
Liger Kernel (``pip install liger-kernel``, pinned in the ``gpu`` extra) replaces those modules'
forwards with fused Triton kernels, forward and backward.

What is patched, on the model instance (:func:`apply_liger`): every RMSNorm and SwiGLU MLP's
forward, plus the model family's module-level ``apply_rotary_pos_emb``. Parameter names and
shapes are unchanged, so checkpoints, LoRA and weight sync see the same model. Not patched:
Liger's fused linear cross-entropy, which never materialises the logits: align's objectives
need per-token log-probs (GRPO's ratios, the mismatch metrics), so the logits stay.

Setting ``learner.liger_kernel`` (:func:`choose_liger`):

- ``auto`` (default): on where CUDA is present, the package is installed and the model type is
  one measured here (:data:`AUTO_MODEL_TYPES`); off otherwise, saying why in the learner's log;
- ``true``: on, or a :class:`LigerUnavailable` error naming what is missing;
- ``false``: off.

Liger's own per-call choice among its kernel languages is pinned to Triton
(:func:`pin_triton_kernels`: its CuTe DSL rotary kernel recompiled for every packed length).

Limits: the rotary patch is process-wide (every model of that family in the learner's process
uses it, as transformers resolves ``apply_rotary_pos_emb`` at call time); Liger's RMSNorm
backward writes its gradient in place (its Llama default). Nothing here imports Liger, Triton or
transformers until :func:`apply_liger` runs, so CPU jobs import nothing more.

Liger's ``apply_liger_kernel_to_<family>`` also swaps the family's classes in transformers'
module (``modeling_llama.LlamaRMSNorm = LigerRMSNorm``, ``LlamaMLP = LigerSwiGLUMLP``), even
when given an instance. Every model of that family built later in the process would then be a
Liger model: with ``liger_kernel: false``, and on CPU, where its Triton kernels cannot run (this
failed ``tests/gpu/test_packing.py``'s Llama case, run after the Liger test in one process).
:func:`apply_liger` puts those classes back; the patched instance keeps its Liger forwards.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal

from align.errors import AlignError

PACKAGE = "liger_kernel"
PIN = "liger-kernel==0.8.5"  # as in pyproject's gpu extra
# auto turns Liger on only for these model types: the ones whose Liger path was checked against
# the eager model (tests/gpu/test_liger_gpu.py) and measured (bench/README.md section 7).
AUTO_MODEL_TYPES = ("llama",)
# The kernels asked for; never Liger's (fused linear) cross-entropy.
PATCHES = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}

Setting = Literal["auto"] | bool


class LigerUnavailable(AlignError, RuntimeError):
    """``learner.liger_kernel: true`` where Liger cannot run."""


@dataclass(frozen=True)
class LigerChoice:
    on: bool
    why: str  # for the learner's start-up line


def installed() -> bool:
    """Whether the package is importable, found without importing it (no Triton import on CPU)."""
    return importlib.util.find_spec(PACKAGE) is not None


def supported_model_types() -> frozenset[str]:
    """The model types Liger has a patch function for (imports Liger: call only where it will run)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def choose_liger(setting: Setting, model_type: str | None, cuda: bool, have_package: bool | None = None) -> LigerChoice:
    """Whether the learner patches its model with Liger, and why (see the module docstring)."""
    if setting is False:
        return LigerChoice(False, "liger kernels off (learner.liger_kernel: false)")
    have_package = installed() if have_package is None else have_package
    forced = setting is True
    if not cuda:
        if forced:
            raise LigerUnavailable("learner.liger_kernel: true needs a CUDA GPU (Liger's kernels are Triton); "
                                   "set learner.liger_kernel: auto or false on this machine")  # fmt: skip
        return LigerChoice(False, "liger kernels off (no CUDA)")
    if not have_package:
        if forced:
            raise LigerUnavailable(f"learner.liger_kernel: true, but the {PACKAGE} package is not installed in the learner's "
                                   f"Python: pip install '{PIN}' (or align's gpu extra), or set learner.liger_kernel: auto")  # fmt: skip
        return LigerChoice(False, f"liger kernels off ({PIN} not installed)")
    if forced:
        supported = supported_model_types()
        if model_type not in supported:
            raise LigerUnavailable(f"learner.liger_kernel: true, but Liger has no kernels for model type {model_type!r}; "
                                   f"it has: {', '.join(sorted(supported))}. Set learner.liger_kernel: auto or false")  # fmt: skip
        return LigerChoice(True, f"liger kernels on ({model_type}: rms_norm, swiglu, rope)")
    if model_type not in AUTO_MODEL_TYPES:
        return LigerChoice(False, f"liger kernels off (model type {model_type}: auto covers {', '.join(AUTO_MODEL_TYPES)})")
    return LigerChoice(True, f"liger kernels on ({model_type}: rms_norm, swiglu, rope; auto)")


def pin_triton_kernels() -> None:
    """Make Liger run its Triton kernels for the patched ops, unless the user chose (``LIGER_KERNEL_IMPL[_<OP>]``).

    Liger 0.8.5 picks, per call, its CuTe DSL rotary kernel over the Triton one for large bf16
    inputs (head_dim >= 128, >= 131,072 query rows: the 1B policy's packed micro-batches). That
    kernel is compiled for each input shape, and packed rows change length with every
    micro-batch: on the H200 it cost 12.6 ms of CPU per forward call and 14.1 ms per backward,
    0.85 s of a 1.5 s learner step, while its GPU time was 2.4 ms (bench/README.md section 7,
    session 8). The Triton kernels compile once per head layout and dtype.
    """
    for op in ("ROPE", "RMS_NORM", "SWIGLU"):
        if not (os.environ.get("LIGER_KERNEL_IMPL") or os.environ.get(f"LIGER_KERNEL_IMPL_{op}")):
            os.environ[f"LIGER_KERNEL_IMPL_{op}"] = "nvidia-triton"


def apply_liger(model: Any) -> None:
    """Patch ``model`` (a transformers model, before LoRA or compilation) with :data:`PATCHES`.

    Only the instance changes, plus the rotary function (see the module docstring): the classes
    Liger swaps in the modeling modules of the model's parts are put back afterwards.
    """
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    pin_triton_kernels()
    # The modeling modules of the model's parts (transformers.models.llama.modeling_llama, also
    # under align's reward model) and their classes as they are now.
    families = {sys.modules[type(m).__module__] for m in model.modules() if type(m).__module__.startswith("transformers.models.")}
    classes = [(family, name, value) for family in families for name, value in vars(family).items() if isinstance(value, type)]
    _apply_liger_kernel_to_instance(model=model, **PATCHES)
    for family, name, cls in classes:
        if getattr(family, name, None) is not cls:
            setattr(family, name, cls)


def use_liger(model: Any, setting: Setting, cuda: bool) -> str:
    """Choose and, where on, apply Liger to ``model``; returns the choice for the start-up log."""
    choice = choose_liger(setting, getattr(getattr(model, "config", None), "model_type", None), cuda)
    if choice.on:
        apply_liger(model)
    return choice.why
