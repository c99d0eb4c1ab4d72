"""Weights on the wire (align.weights): exact round trips, through Ray's object store too."""

import pickle

import pytest
import torch

from align.weights import from_wire, is_wire, to_wire


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "fp32": torch.randn(7, generator=g),
        "fp16": torch.randn(2, 2, generator=g).half(),
        "int": torch.arange(4),
        "noncontiguous": torch.randn(4, 6, generator=g).t(),
    }


def test_round_trip_is_exact_for_every_dtype() -> None:
    sd = _state_dict()
    wire = to_wire(sd)
    assert is_wire(wire) and not is_wire(sd) and not is_wire({})
    back = from_wire(pickle.loads(pickle.dumps(wire, protocol=5)))
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and torch.equal(back[name], t), name


def test_round_trip_through_the_ray_object_store() -> None:
    ray = pytest.importorskip("ray")
    from align.cluster import init_ray

    started = not ray.is_initialized()
    if started:
        init_ray(num_cpus=1)
    try:
        sd = _state_dict()
        back = from_wire(ray.get(ray.put(to_wire(sd))))  # read-only arrays mapped from shared memory
        for name, t in sd.items():
            assert torch.equal(back[name], t), name
    finally:
        if started:
            ray.shutdown()
