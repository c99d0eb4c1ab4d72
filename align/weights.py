"""Weights on the wire: state dicts as NumPy arrays, so Ray moves them without pickling tensors.

Ray serializes a ``torch.Tensor`` by pickling it (a copy into the pickle stream, another out of
it), but hands NumPy arrays to its object store as raw buffers that the receiver maps without a
copy. Sending the learner's weights as arrays made the driver's sync 3.5-4.6x faster for 50M-150M
parameters (bench/bench_weight_sync.py). NumPy has no bfloat16, so a tensor of a dtype NumPy lacks
travels as its bytes reinterpreted as a same-width integer, with its dtype name alongside.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: an RL job picks its engines' dtype (inference_dtype) before
# it imports torch, so that its engines spawn as soon as Ray is up (align/algorithms/rl/prestart.py).


@functools.cache
def _int_views() -> dict[torch.dtype, torch.dtype]:
    """The same-width integer dtype each dtype NumPy cannot hold travels as (built once, on first use)."""
    import torch

    return {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}

Wire = dict[str, tuple[np.ndarray, str]]


def to_wire(state_dict: Mapping[str, torch.Tensor]) -> Wire:
    """``{name: (array, dtype name)}``; the arrays share memory with the (CPU) tensors."""
    out: Wire = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        view = _int_views().get(t.dtype)
        out[name] = ((t.view(view) if view is not None else t).numpy(), str(t.dtype).removeprefix("torch."))
    return out


def from_wire(wire: Mapping[str, tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
    """Tensors over the arrays (no copy). Arrays from Ray's object store are read-only: the
    tensors must only be read (vLLM's weight loader copies them into its own parameters)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, (array, dtype) in wire.items():
        with warnings.catch_warnings():
            # torch warns that writing to a read-only array is undefined; nothing here writes.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(array)
        want = getattr(torch, dtype)
        out[name] = t.view(want) if t.dtype != want else t
    return out


def is_wire(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and isinstance(next(iter(obj.values())), tuple)


def inference_dtype(precision: str = "auto") -> str:
    """vLLM dtype matching the learner's precision, so rollout log-probs match training's.

    vLLM on CPU turns "auto" into bfloat16 even for a float32 checkpoint; the learner trains in
    float32 there, and the gap shows up as train/inference mismatch. So it is always explicit.
    """
    if precision == "bf16":
        return "bfloat16"
    if precision == "fp32":
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
