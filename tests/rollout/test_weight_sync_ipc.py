"""The ``cuda_ipc`` protocol of align.weight_sync on CPU tensors: the learner's buffer (two slots,
kept across syncs), the order of packing, requests and waits, and an engine mapping the buffer
once. The handles themselves (CUDA IPC) are exercised on a GPU by tests/gpu/test_rl_gpu.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from align.weight_sync.transports import IpcArena, IpcView, load_ipc, plan_buckets, push_ipc, send_ipc, unpack


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sd = {"model.embed.weight": torch.randn(40, 8, generator=g)}
    for i in range(5):
        sd[f"model.layers.{i}.w"] = torch.randn(6 + i, 8, generator=g)
        sd[f"model.layers.{i}.norm"] = torch.randn(8, generator=g).to(torch.bfloat16)
    sd["lm_head.weight"] = torch.randn(40, 8, generator=g)
    return sd


def _plan(sd: dict[str, torch.Tensor], cap: int) -> list[Any]:
    return plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in sd.items()], cap)


class _LazyEngine:
    """Reads a bucket out of the learner's buffer only when its request is waited for, as a busy
    engine would: a slot refilled too early would hand it another bucket's bytes."""

    def __init__(self, arena: IpcArena) -> None:
        self.arena, self.events, self.loaded = arena, [], {}

    def start(self, i: int, bucket: Any, offset: int) -> Any:
        self.events.append(("request", i))

        def wait() -> str:
            flat = self.arena.buffer[offset : offset + bucket.nbytes]
            load_ipc(bucket, flat, lambda items: self.loaded.update({k: v.clone() for k, v in items}))
            self.events.append(("loaded", i))
            return f"bucket {i}"

        return wait


def test_send_ipc_pipelines_requests_and_refills_a_slot_only_after_its_load() -> None:
    sd = _weights()
    buckets = _plan(sd, 600)
    assert len(buckets) >= 4
    arena = IpcArena(buckets, torch.device("cpu"), share=lambda t: None)
    assert arena.slots == 2 and arena.slot_bytes == max(b.nbytes for b in buckets)
    engine = _LazyEngine(arena)
    times: dict[str, float] = {}
    answers = send_ipc(buckets, sd, arena, engine.start, times)
    assert answers == [f"bucket {i}" for i in range(len(buckets))]
    assert set(times) == {"pack", "wait"} and times["pack"] > 0 and times["wait"] > 0  # the engine loads when waited for
    assert set(engine.loaded) == set(sd)
    for name, t in sd.items():
        assert torch.equal(engine.loaded[name], t), name
    # Bucket i+1 is requested before bucket i is waited for; bucket i+2 reuses bucket i's slot
    # only after bucket i was loaded.
    n = len(buckets)
    expected = [("request", 0), ("request", 1)]
    for i in range(2, n):
        expected += [("loaded", i - 2), ("request", i)]
    expected += [("loaded", n - 2), ("loaded", n - 1)]
    assert engine.events == expected


class _Call:
    def __init__(self, value: Any) -> None:
        self.value = value

    def future(self) -> "_Call":
        return self

    def result(self) -> Any:
        return self.value


class _ActorEngine:
    """An engine actor's ``load_ipc_bucket`` as ``push_ipc`` calls it (``.remote(...).future()``),
    answering its times at the update's last bucket, or never (``finishes=False``)."""

    def __init__(self, load_s: float, finishes: bool = True) -> None:
        self.load_s, self.finishes, self.seen = load_s, finishes, 0
        self.load_ipc_bucket = self

    def remote(self, bucket: Any, key: str, handle: Any, offset: int, count: int, version: int | None) -> _Call:
        self.seen += 1
        ends = self.finishes and self.seen == count
        return _Call({"engine_load": self.load_s, "engine_span": 2 * self.load_s} if ends else None)


def test_push_ipc_reports_where_the_time_went_and_refuses_an_update_not_finished() -> None:
    sd = _weights()
    buckets = _plan(sd, 600)
    arena = IpcArena(buckets, torch.device("cpu"), share=lambda t: None)
    engines = [_ActorEngine(0.010), _ActorEngine(0.014)]
    times = push_ipc(buckets, sd, arena, engines, 3, {"tail": 0.001, "state_dict": 0.002})
    assert set(times) == {"tail", "state_dict", "pack", "wait", "engine_load", "engine_span"}
    assert (times["tail"], times["state_dict"], times["engine_load"], times["engine_span"]) == (0.001, 0.002, 0.014, 0.028)  # the slowest engine's
    assert all(e.seen == len(buckets) for e in engines)
    with pytest.raises(RuntimeError, match="1 of 2 engines did not finish"):
        push_ipc(buckets, sd, arena, [_ActorEngine(0.01), _ActorEngine(0.01, finishes=False)], 4, {})


def test_arena_is_kept_for_the_same_plan_and_sized_by_it() -> None:
    sd = _weights()
    buckets = _plan(sd, 600)
    shared: list[torch.Tensor] = []
    arena = IpcArena(buckets, torch.device("cpu"), share=lambda t: shared.append(t) or "handle")
    assert arena.handle == "handle" and len(shared) == 1 and shared[0].numel() == 2 * arena.slot_bytes
    assert [arena.offset(i) for i in range(4)] == [0, arena.slot_bytes, 0, arena.slot_bytes]
    assert arena.fits(buckets) and arena.fits(buckets[:1])
    assert not arena.fits(_plan(sd, 10**6))  # one bucket larger than a slot
    single = IpcArena(_plan(sd, 10**6), torch.device("cpu"), share=lambda t: None)
    assert single.slots == 1 and [single.offset(i) for i in range(2)] == [0, 0]
    assert not single.fits(buckets)  # two slots needed


def test_engine_maps_an_arena_once_across_syncs() -> None:
    sd = _weights()
    buckets = _plan(sd, 600)
    arena = IpcArena(buckets, torch.device("cpu"), share=lambda t: None)
    opened: list[str] = []

    def open_handle(handle: Any) -> torch.Tensor:
        opened.append(handle)
        return arena.buffer

    view = IpcView(open_handle)
    for sync in range(3):
        sd = {k: v + sync for k, v in sd.items()}
        loaded: dict[str, torch.Tensor] = {}

        def start(i: int, bucket: Any, offset: int, sd_now: dict = sd, loaded: dict = loaded) -> Any:
            flat = view.bucket(arena.key, f"handle of {arena.key}", bucket, offset)
            load_ipc(bucket, flat, lambda items: loaded.update({k: v.clone() for k, v in items}))
            return lambda: None

        send_ipc(buckets, sd, arena, start)
        assert all(torch.equal(loaded[k], v) for k, v in sd.items()), sync
    assert opened == [f"handle of {arena.key}"] and view.opened == 1
    fresh = IpcArena(buckets, torch.device("cpu"), share=lambda t: None)
    view.bucket(fresh.key, "new handle", buckets[0], 0)
    assert opened[-1] == "new handle" and view.opened == 2 and view.key == fresh.key
    assert [n for n, _ in unpack(buckets[0], view.bucket(fresh.key, "unused", buckets[0], 0))] == [e.name for e in buckets[0].entries]


def test_engine_loads_an_update_from_the_arena_as_update_weights_does(tiny_checkpoint, tokenizer, make_engine) -> None:
    """The engine's side (``VLLMEngine.load_ipc_bucket``) on CPU, the mapping replaced by the arena itself:
    after a bucketed update its greedy output is the one ``update_weights`` gives for the same
    weights, its version is the one sent, and a second update through the same arena restores the start."""
    from align.models import load_model
    from rollout.types import GenRequest

    start = {k: v.detach().clone() for k, v in load_model(tiny_checkpoint, "float32").state_dict().items()}
    g = torch.Generator().manual_seed(3)
    changed = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in start.items()}
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("What is 12 + 30?", "echo 3 then answer 7")]
    buckets = _plan(start, 256 * 1024)
    assert len(buckets) >= 3
    arena = IpcArena(buckets, torch.device("cpu"), share=lambda t: "handle")
    engine = make_engine(tiny_checkpoint)
    engine._ipc_view = IpcView(lambda handle: arena.buffer)

    def greedy() -> list[list[int]]:
        return [o.token_ids for o in engine.generate([GenRequest(p, 16, temperature=0.0) for p in prompts])]

    def push(weights: dict[str, torch.Tensor], version: int) -> list[Any]:
        def begin(i: int, bucket: Any, offset: int) -> Any:
            answer = engine.load_ipc_bucket(bucket, arena.key, arena.handle, offset, len(buckets), version)
            return lambda: answer

        return send_ipc(buckets, weights, arena, begin)

    before = greedy()
    answers = push(changed, 7)
    end = answers[-1]  # the update's engine-side times, at its last bucket
    assert answers[:-1] == [None] * (len(buckets) - 1) and set(end) == {"engine_quiesce", "engine_load", "engine_finish", "engine_span"}
    assert end["engine_load"] > 0 and end["engine_span"] >= end["engine_quiesce"] + end["engine_load"] + end["engine_finish"]
    after = greedy()
    assert engine.weights_version() == 7 and after != before
    engine.update_weights(changed)
    assert greedy() == after
    push(start, 9)
    assert greedy() == before and engine.weights_version() == 9
    assert engine._ipc_view.opened == 1
