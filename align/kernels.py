"""Fast Mamba2 kernels for the hybrid policy on GPU, and sequence boundaries for packed rows.

transformers' ``NemotronHMamba2Mixer`` calls five module-level functions, each resolved once,
when ``modeling_nemotron_h`` is imported, to a package kernel or to a reference PyTorch version,
and a gated RMSNorm module:

========================================  =====================  ===================================
function in ``modeling_nemotron_h``        package it looks for   what it is
========================================  =====================  ===================================
``mamba2_chunk_scan``                      ``mamba_ssm``          the SSD chunked scan (the hot spot)
``mamba2_split_conv1d_scan_combined``      ``mamba_ssm``          conv + scan + norm + out_proj fused
``mamba2_selective_state_update``          ``mamba_ssm``          one decode step
``causal_conv1d_fn`` / ``_update``         ``causal_conv1d``      the depthwise causal convolution
``Zamba2RMSNormGated.forward`` (a class)   none                   the gated RMSNorm, ~10 PyTorch ops
========================================  =====================  ===================================

Two things keep a plain ``MAMBA_SKIP_CUDA_BUILD=TRUE pip install mamba_ssm`` (Triton kernels
only, no nvcc) from being used by transformers as it is:

1. ``import mamba_ssm`` runs its ``__init__``, which imports the CUDA extension
   ``selective_scan_cuda`` that such an install lacks, so transformers' import fails and every
   function falls back to PyTorch. The Triton kernels themselves (``mamba_ssm.ops.triton``) need
   no extension: :func:`_load_mamba_triton` imports them without running the package ``__init__``.
2. The fused ``mamba_split_conv1d_scan_combined`` calls ``causal_conv1d``'s CUDA functions; with
   ``mamba_ssm`` present but ``causal_conv1d`` absent it would fail at the first training step.

:func:`enable_mamba_kernels` therefore rebinds those module functions: the SSD scan and the
decode step to ``mamba_ssm``'s Triton kernels; the fused path to ``mamba_ssm``'s only when
``causal_conv1d`` is importable (else it returns ``None``, which the mixer reads as "take the
unfused path"); the convolution to ``causal_conv1d`` when present, else to PyTorch's
``conv1d``; the gated RMSNorm of the unfused path to ``mamba_ssm``'s Triton kernel. Each
rebound function dispatches on the device of its input: CPU tensors still go to transformers'
own PyTorch reference, so one process can hold a CPU and a GPU model.

Measured on an H100 (bench/bench_gpu_train.py, 888M parameters, bf16, AdamW, batch 8x1024):
transformers' PyTorch Mamba2 21,400 tokens/s; Triton scan only 41,500; scan + gated norm
(Triton only, no nvcc) 46,900; fused with ``causal_conv1d`` 50,000; the Llama-style model of the
same size 58,400. What is left is host time: each Mamba2 backward spends 5-7 ms of CPU in
Triton launches, and at 8x1024 the hybrid's GPU time per step (125 ms) is already below the
transformer's (133 ms).

Packed rows: several samples concatenated in one row carry ``seq_idx`` (the sample number of
each token, int32, shape ``[rows, length]``). The Triton scan resets its state where ``seq_idx``
changes; the convolution here masks taps that would reach into the previous sample. On CPU the
scan is run sample by sample (slow, but exact), so the packing logic is testable without a GPU.

Both GPU paths (with and without ``causal_conv1d``) pass tests/gpu/test_packing.py on an H100.
Limits: ``initial_states`` / ``return_final_states`` with ``seq_idx`` (packed prefill with a
cache) are refused; the module functions are rebound process-wide, for every NemotronH model.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

_FUNCTIONS = (
    "mamba2_chunk_scan",
    "mamba2_split_conv1d_scan_combined",
    "mamba2_selective_state_update",
    "causal_conv1d_fn",
    "causal_conv1d_update",
)


@dataclass(frozen=True)
class KernelStatus:
    """Which implementation each Mamba2 function of transformers' NemotronH uses on CUDA tensors."""

    enabled: bool
    chunk_scan: str
    conv1d: str
    fused_split_scan: str
    state_update: str
    gated_norm: str = "torch"
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_TORCH_ONLY = KernelStatus(False, "torch", "torch", "torch (returns None)", "torch")
_originals: dict[str, Callable[..., Any]] = {}
_status: KernelStatus | None = None


def _nemotron_h() -> ModuleType:
    return importlib.import_module("transformers.models.nemotron_h.modeling_nemotron_h")


def _load_mamba_triton() -> tuple[ModuleType, ModuleType]:
    """``mamba_ssm.ops.triton.ssd_combined`` and ``.selective_state_update``, with or without its CUDA build.

    A full build imports normally. A Triton-only install (``MAMBA_SKIP_CUDA_BUILD=TRUE``) fails
    in the package ``__init__`` (``import selective_scan_cuda``); then the package is registered
    as a bare namespace (its ``__init__`` not run) so that its pure-Triton submodules import.
    """
    try:
        importlib.import_module("mamba_ssm")
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or spec.submodule_search_locations is None:
            raise
        bare = importlib.util.module_from_spec(spec)
        sys.modules["mamba_ssm"] = bare
        try:
            return _submodules()
        except Exception:
            del sys.modules["mamba_ssm"]
            raise
    return _submodules()


def _submodules() -> tuple[ModuleType, ModuleType]:
    ssd = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    ssu = importlib.import_module("mamba_ssm.ops.triton.selective_state_update")
    return ssd, ssu


def _causal_conv1d() -> ModuleType | None:
    try:
        module = importlib.import_module("causal_conv1d")
        importlib.import_module("causal_conv1d.cpp_functions")  # the CUDA extension itself
        return module
    except Exception:
        return None


def _accepts(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def _only(kwargs: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in names}


# ---------------------------------------------------------------------------- convolution


def masked_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution ``[B, C, T] -> [B, C, T]`` that never reaches across samples.

    Without ``seq_idx`` it is PyTorch's ``conv1d`` (what transformers' fallback computes). With
    ``seq_idx`` ([B, T]) tap ``j`` of token ``t`` is dropped when token ``t - j`` belongs to
    another sample, so a packed row gives each sample what it gets alone in a padded row.
    """
    width = weight.shape[-1]
    if seq_idx is None:
        out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]]
    else:
        # float32 sums of the taps, as cuDNN accumulates, so a packed row matches a padded one.
        length = x.shape[-1]
        padded = F.pad(x.float(), (width - 1, 0))
        sid = F.pad(seq_idx, (width - 1, 0), value=-1)
        w = weight.float()
        out = None
        for j in range(width):  # tap j reads token t - (width - 1 - j)
            same = (sid[:, j : j + length] == seq_idx).unsqueeze(1)
            term = padded[..., j : j + length] * w[:, j].view(1, -1, 1) * same
            out = term if out is None else out + term
        if bias is not None:
            out = out + bias.float().view(1, -1, 1)
        out = out.to(weight.dtype)
    if activation in ("silu", "swish"):
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r}")
    return out.to(x.dtype)


# ---------------------------------------------------------------------------- dispatchers


def _segments(row: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end)]`` runs of equal values in a 1-D tensor."""
    change = torch.nonzero(row[1:] != row[:-1]).flatten().tolist()
    bounds = [0, *(c + 1 for c in change), row.numel()]
    return list(zip(bounds[:-1], bounds[1:]))


def _make_chunk_scan(torch_fn: Callable[..., Any], kernel: Callable[..., Any] | None) -> Callable[..., Any]:
    names = _accepts(kernel) if kernel is not None else frozenset()

    def mamba2_chunk_scan(hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int, **kwargs: Any) -> Any:
        seq_idx = kwargs.get("seq_idx")
        if kernel is not None and hidden_states.is_cuda:
            if seq_idx is not None:
                kwargs["seq_idx"] = seq_idx.to(torch.int32).contiguous()
            return kernel(hidden_states, dt, A, B, C, chunk_size, **_only(kwargs, names))
        if seq_idx is None:
            return torch_fn(hidden_states, dt, A, B, C, chunk_size, **kwargs)
        if kwargs.get("initial_states") is not None or kwargs.get("return_final_states"):
            raise NotImplementedError("packed rows (seq_idx) with a recurrent cache are not supported")
        # Reference: each sample of each row on its own (exact; for tests on CPU).
        kwargs = {k: v for k, v in kwargs.items() if k != "seq_idx"}
        rows = []
        for b in range(hidden_states.shape[0]):
            parts = [
                torch_fn(hidden_states[b : b + 1, s:e], dt[b : b + 1, s:e], A, B[b : b + 1, s:e], C[b : b + 1, s:e], chunk_size, **kwargs)
                for s, e in _segments(seq_idx[b])
            ]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    return mamba2_chunk_scan


def _make_conv(torch_fn: Callable[..., Any], cc1d: ModuleType | None) -> Callable[..., Any]:
    def causal_conv1d_fn(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None, **kwargs: Any) -> torch.Tensor:
        seq_idx = kwargs.get("seq_idx")
        if cc1d is not None and hidden_states.is_cuda:
            if seq_idx is not None:  # causal_conv1d wants channel-last input with seq_idx
                x = hidden_states.transpose(1, 2).contiguous().transpose(1, 2)
                return cc1d.causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx.to(torch.int32).contiguous(), activation=activation)
            return cc1d.causal_conv1d_fn(hidden_states, weight, bias, activation=activation)
        if seq_idx is None and not hidden_states.is_cuda:
            return torch_fn(hidden_states, weight, bias, activation=activation)
        return masked_causal_conv1d(hidden_states, weight, bias, activation, seq_idx)

    return causal_conv1d_fn


def _make_fused(torch_fn: Callable[..., Any], kernel: Callable[..., Any] | None) -> Callable[..., Any]:
    names = _accepts(kernel) if kernel is not None else frozenset()

    def mamba2_split_conv1d_scan_combined(zxbcdt: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if kernel is not None and zxbcdt.is_cuda:
            if kwargs.get("seq_idx") is not None:
                kwargs["seq_idx"] = kwargs["seq_idx"].to(torch.int32).contiguous()
            return kernel(zxbcdt, *args, **_only(kwargs, names))
        return None  # the mixer then takes its unfused path

    return mamba2_split_conv1d_scan_combined


def _make_state_update(torch_fn: Callable[..., Any], kernel: Callable[..., Any] | None) -> Callable[..., Any]:
    names = _accepts(kernel) if kernel is not None else frozenset()

    def mamba2_selective_state_update(state: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if kernel is not None and state.is_cuda:
            return kernel(state, *args, **_only(kwargs, names))
        return torch_fn(state, *args, **kwargs)

    return mamba2_selective_state_update


def _make_conv_update(torch_fn: Callable[..., Any], cc1d: ModuleType | None) -> Callable[..., Any]:
    def causal_conv1d_update(hidden_states: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
        if cc1d is not None and hidden_states.is_cuda:
            return cc1d.causal_conv1d_update(hidden_states, conv_state, weight, bias, activation)
        return torch_fn(hidden_states, conv_state, weight, bias, activation)

    return causal_conv1d_update


# ---------------------------------------------------------------------------- gated norm


def _make_gated_norm(torch_forward: Callable[..., Any], rmsnorm_fn: Callable[..., Any] | None) -> Callable[..., Any]:
    """``Zamba2RMSNormGated.forward`` (the mixer's ``norm(y, gate)``: ``y * silu(gate)``, then RMSNorm
    per group) as one Triton kernel from ``mamba_ssm`` on CUDA, instead of about ten PyTorch ops."""

    def forward(self: torch.nn.Module, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if rmsnorm_fn is None or not hidden_states.is_cuda:
            return torch_forward(self, hidden_states, gate)
        out = rmsnorm_fn(hidden_states, self.weight, None, z=gate, eps=self.variance_epsilon, group_size=self.group_size, norm_before_gate=False)
        return out.to(hidden_states.dtype)

    return forward


# ---------------------------------------------------------------------------- switch


def _gated_norm_class() -> type:
    return importlib.import_module("transformers.models.zamba2.modeling_zamba2").Zamba2RMSNormGated


def _torch_references() -> dict[str, Callable[..., Any]]:
    """transformers' pure-PyTorch versions, whatever it bound at import.

    Its wrappers keep the PyTorch function as ``__wrapped__``; going through them would pick
    ``mamba_ssm``'s kernels if ``mamba_ssm`` was importable when ``modeling_nemotron_h`` loaded,
    and those refuse CPU tensors.
    """
    if not _originals:
        mod = _nemotron_h()
        _originals.update({name: getattr(mod, name) for name in _FUNCTIONS})
        _originals["norm_forward"] = _gated_norm_class().forward
    return {k: inspect.unwrap(v) if k != "norm_forward" else v for k, v in _originals.items()}


def _install(scan: Callable[..., Any] | None, fused: Callable[..., Any] | None, update: Callable[..., Any] | None,
             cc1d: ModuleType | None, norm: Callable[..., Any] | None) -> None:  # fmt: skip
    ref = _torch_references()
    mod = _nemotron_h()
    mod.mamba2_chunk_scan = _make_chunk_scan(ref["mamba2_chunk_scan"], scan)
    mod.mamba2_split_conv1d_scan_combined = _make_fused(ref["mamba2_split_conv1d_scan_combined"], fused)
    mod.mamba2_selective_state_update = _make_state_update(ref["mamba2_selective_state_update"], update)
    mod.causal_conv1d_fn = _make_conv(ref["causal_conv1d_fn"], cc1d)
    mod.causal_conv1d_update = _make_conv_update(ref["causal_conv1d_update"], cc1d)
    _gated_norm_class().forward = _make_gated_norm(ref["norm_forward"], norm)


def enable_mamba_kernels(require_cuda: bool = True, gated_norm: bool = True, conv: bool = True) -> KernelStatus:
    """Point transformers' NemotronH Mamba2 functions at the fastest implementations present.

    Process-wide; calling again with the same arguments does nothing. ``gated_norm`` / ``conv``
    = False keep the PyTorch gated RMSNorm / convolution even where a kernel exists (the
    benchmark compares them). ``require_cuda=False`` installs the dispatchers without a GPU
    (CPU tensors then take the PyTorch paths, plus ``seq_idx`` support): tests use it. Returns
    what each function uses on CUDA tensors; never raises for a missing package.
    """
    global _status
    key = (gated_norm, conv)
    if _status is not None and _status.enabled and _key == key:
        return _status
    if require_cuda and not torch.cuda.is_available():
        return KernelStatus(**{**_TORCH_ONLY.as_dict(), "reason": "no CUDA device"})
    _torch_references()  # before mamba_ssm is made importable: keep transformers' own bindings on record
    ssd = ssu = norm_mod = None
    reason = ""
    try:
        ssd, ssu = _load_mamba_triton()
        norm_mod = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
    except Exception as e:  # absent, or a Triton / torch mismatch
        reason = f"mamba_ssm Triton kernels unavailable ({type(e).__name__}: {e})"
    cc1d = _causal_conv1d() if conv else None
    scan = ssd.mamba_chunk_scan_combined if ssd is not None else None
    fused = ssd.mamba_split_conv1d_scan_combined if ssd is not None and cc1d is not None else None
    update = ssu.selective_state_update if ssu is not None else None
    norm = norm_mod.rmsnorm_fn if norm_mod is not None and gated_norm else None
    _install(scan, fused, update, cc1d, norm)
    _set_key(key)
    _status = KernelStatus(
        enabled=True,
        chunk_scan="mamba_ssm triton" if scan is not None else "torch",
        conv1d="causal_conv1d" if cc1d is not None else "torch conv1d",
        fused_split_scan="mamba_ssm + causal_conv1d" if fused is not None else "off (causal_conv1d absent)" if conv else "off",
        state_update="mamba_ssm triton" if update is not None else "torch",
        gated_norm="mamba_ssm triton" if norm is not None else "torch",
        reason=reason,
    )
    return _status


_key: tuple[bool, bool] | None = None


def _set_key(key: tuple[bool, bool] | None) -> None:
    global _key
    _key = key


def disable_mamba_kernels() -> None:
    """transformers' PyTorch Mamba2 everywhere, whatever is installed (the benchmark's baseline)."""
    global _status
    _install(None, None, None, None, None)
    _set_key(None)
    _status = None


def kernel_status() -> KernelStatus:
    return _status if _status is not None else _TORCH_ONLY
