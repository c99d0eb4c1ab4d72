"""Weight sync learner -> rollout engines in buckets, without the driver in the data path.

Three transports, one contract (after a push every engine generates with the learner's weights):

- ``object_store``: the learner's state dict as NumPy arrays through Ray's object store and the
  driver (:mod:`align.weights`). Works everywhere; a snapshot, so it also serves the off-policy
  overlap, where the engines load the weights only after the rollout in flight ends.
- ``broadcast``: learner rank 0 and the engines form a process group of their own (a TCPStore on
  rank 0's node; NCCL when both sides hold GPUs, gloo otherwise) and the weights go as flat
  buckets of ``bucket_mb``, broadcast from learner rank 0. Each engine loads bucket ``i`` while
  bucket ``i + 1`` is in flight. For learners and engines on *different* GPUs (NCCL refuses two
  ranks on one GPU); on CPU it is the gloo form of the same code, which the tests run.
- ``cuda_ipc``: learner and engine share a GPU. The learner packs a bucket into a slot of a GPU
  buffer it keeps across syncs (:class:`IpcArena`) and tells the engine its offset; the engine
  maps the buffer once (by a CUDA IPC handle of a few hundred bytes through Ray), loads from it,
  and answers; only then is the slot refilled. Two slots alternate, and the request for bucket
  ``i + 1`` is sent while the engines still load bucket ``i``.

A bucket is a byte buffer holding whole layers in state-dict order (vLLM fuses tensors within a
layer and processes a layer once all of it has arrived, so a layer never straddles two buckets);
a layer larger than ``bucket_mb`` gets a bucket of its own. The plan (names, shapes, offsets) is computed once from the learner's weights
and sent to the engines with every push (it is small), so both sides always agree on it.
"""

from __future__ import annotations

import datetime
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

ALIGN = 16  # bytes: every tensor starts at a multiple, so a byte slice views as any dtype


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix
    offset: int  # in bytes, inside the bucket's flat uint8 buffer
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    nbytes: int
    entries: tuple[Entry, ...]


def layer_of(name: str) -> str:
    """The unit a bucket never splits: ``model.layers.3.`` for any tensor of decoder layer 3 (vLLM
    fuses q/k/v, gate/up, Mamba's in_proj parts within a layer, and a reload processes a layer
    once all of it has arrived), or the tensor itself outside the layer stack."""
    m = _LAYER.match(name)
    return m.group(1) if m else name


_LAYER = re.compile(r"(.*?\.(?:layers|h|blocks)\.\d+\.)")


def plan_buckets(meta: Iterable[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[Bucket]:
    """Cut ``(name, shape, dtype)`` (in state-dict order) into buckets of at most ``bucket_bytes``.

    A layer (:func:`layer_of`) is never split; a layer larger than ``bucket_bytes`` gets a bucket
    of its own. Tensors of any dtype share a bucket: it is a byte buffer.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    layers: dict[str, list[tuple[str, tuple[int, ...], torch.dtype, int]]] = {}
    for name, shape, dtype in meta:
        numel = 1
        for d in shape:
            numel *= int(d)
        layers.setdefault(layer_of(name), []).append((name, tuple(int(d) for d in shape), dtype, numel * dtype.itemsize))
    buckets: list[Bucket] = []
    entries: list[Entry] = []
    size = 0
    for tensors in layers.values():
        layer_bytes = sum(_aligned(n) for *_, n in tensors)
        if entries and size + layer_bytes > bucket_bytes:
            buckets.append(Bucket(size, tuple(entries)))
            entries, size = [], 0
        for name, shape, dtype, nbytes in tensors:
            entries.append(Entry(name, shape, str(dtype).removeprefix("torch."), size, nbytes))
            size += _aligned(nbytes)
    if entries:
        buckets.append(Bucket(size, tuple(entries)))
    return buckets


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def pack(bucket: Bucket, tensors: Mapping[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Copy the bucket's tensors into ``out`` (a flat uint8 buffer of at least ``bucket.nbytes``);
    returns the used part."""
    flat = out[: bucket.nbytes]
    for e in bucket.entries:
        t = tensors[e.name]
        flat[e.offset : e.offset + e.nbytes].view(t.dtype).copy_(t.reshape(-1), non_blocking=True)
    return flat


def unpack(bucket: Bucket, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Views into ``flat`` (uint8), one per tensor of the bucket, in its dtype and shape (no copy)."""
    return [(e.name, flat[e.offset : e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape)) for e in bucket.entries]


# ------------------------------------------------------------------ process group for "broadcast"


class WeightGroup:
    """A process group of its own (learner rank 0 = rank 0, engine i = rank i + 1), apart from
    DeepSpeed's default group, so that it can be built and used without touching it.

    Built from torch's backend classes directly over a TCPStore: ``init_process_group`` allows one
    default group per process, and the learner's is DeepSpeed's.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 600.0) -> None:
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        prefix = dist.PrefixStore("align-weights", store)
        self._store = store  # kept alive: rank 0 serves it
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self._pg: Any = dist.ProcessGroupNCCL(prefix, rank, world_size, opts)
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif backend == "gloo":
            self._pg = dist.ProcessGroupGloo(prefix, rank, world_size, timeout)
            self.device = torch.device("cpu")
        else:
            raise ValueError(f"weight sync backend must be 'nccl' or 'gloo', got {backend!r}")

    def broadcast(self, tensor: torch.Tensor) -> Any:
        """Start broadcasting ``tensor`` from rank 0; returns the work handle to ``wait()`` on."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self._pg.broadcast([tensor], opts)


def send_broadcast(group: WeightGroup, buckets: list[Bucket], tensors: Mapping[str, torch.Tensor]) -> None:
    """Rank 0's side: pack and broadcast every bucket, two buffers in flight."""
    buffers = _buffers(buckets, group.device, 2)
    pending: Any = None
    for i, bucket in enumerate(buckets):
        buf = buffers[i % 2]
        flat = pack(bucket, tensors, buf)  # this slot's last broadcast was waited for a round ago
        if pending is not None:
            pending.wait()
        # NCCL orders its stream after the current one, so the packing copies land first.
        pending = group.broadcast(flat)
    if pending is not None:
        pending.wait()


def receive_broadcast(group: WeightGroup, buckets: list[Bucket]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """An engine's side: yield each bucket's tensors as it arrives; bucket ``i + 1`` is already
    being received while the caller loads bucket ``i``. The yielded views are valid until the
    next iteration."""
    buffers = _buffers(buckets, group.device, 2)
    flats = [buffers[i % 2][: b.nbytes] for i, b in enumerate(buckets)]
    work = group.broadcast(flats[0]) if buckets else None
    for i, bucket in enumerate(buckets):
        work.wait()  # NCCL: the current stream (the loader's) now waits for the transfer
        work = group.broadcast(flats[i + 1]) if i + 1 < len(buckets) else None
        # Bucket i+1 lands in the other buffer; this one is read by the loader now.
        yield unpack(bucket, flats[i])


def _buffers(buckets: list[Bucket], device: torch.device, copies: int) -> list[torch.Tensor]:
    """``copies`` flat uint8 buffers, each sized for the largest bucket."""
    size = max((b.nbytes for b in buckets), default=0)
    return [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(copies)]


# ------------------------------------------------------------------ CUDA IPC for "cuda_ipc"


def share_cuda(tensor: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
    """A picklable handle to a CUDA tensor another process on the same GPU can map."""
    from torch.multiprocessing.reductions import reduce_tensor

    return reduce_tensor(tensor)


def open_cuda(handle: tuple[Any, tuple[Any, ...]]) -> torch.Tensor:
    """The tensor behind :func:`share_cuda`'s handle, mapped into this process (no copy).

    The handle names the sender's device index; both processes see the GPU they share as the same
    index when Ray gives both the same ``CUDA_VISIBLE_DEVICES`` (fractional GPUs of one bundle)."""
    rebuild, args = handle
    return rebuild(*args)


class IpcArena:
    """The learner's GPU buffer for ``cuda_ipc``, kept from one sync to the next, and the handle the
    engines map it by, made once (``key`` names it, so an engine maps a new arena only when the
    learner made one).

    ``slots`` slots (two, or one for a single-bucket plan), each sized for the largest bucket.
    Allocating the buffers afresh at every sync made every engine map and unmap them bucket by
    bucket (``cudaIpcOpenMemHandle`` and torch's IPC reference counting each time); kept, the
    engines map the arena once. Its cost: the slots stay allocated on the learner's GPU between
    syncs (at most twice the largest bucket: ``rollout.weight_sync_bucket_mb``, or the largest layer).
    """

    def __init__(self, buckets: list[Bucket], device: torch.device, share: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.slot_bytes = max((b.nbytes for b in buckets), default=0)
        self.slots = min(2, len(buckets))
        self.buffer = torch.empty(self.slot_bytes * self.slots, dtype=torch.uint8, device=device)
        self.key = uuid.uuid4().hex
        self.handle = (share or share_cuda)(self.buffer)

    def fits(self, buckets: list[Bucket]) -> bool:
        """Whether ``buckets`` can go through this arena as well as through a new one."""
        return self.slots >= min(2, len(buckets)) and all(b.nbytes <= self.slot_bytes for b in buckets)

    def offset(self, i: int) -> int:
        """Where bucket ``i`` goes: the slots alternate."""
        return (i % self.slots) * self.slot_bytes


def send_ipc(
    buckets: list[Bucket],
    tensors: Mapping[str, torch.Tensor],
    arena: IpcArena,
    start_load: Callable[[int, Bucket, int], Callable[[], Any]],
    times: dict[str, float] | None = None,
) -> list[Any]:
    """The learner's side of ``cuda_ipc``: for bucket ``i``, wait until the engines are done with the
    slot it goes to (bucket ``i - slots`` was loaded from it), pack it there, finish the copies
    (another process reads them), and call ``start_load(i, bucket, offset)``, which starts the
    engines loading and returns a function that waits for them and returns what they answered.

    The requests are not waited for one by one: the one for bucket ``i + 1`` is on its way while
    the engines load bucket ``i`` (an actor runs its calls in the order they were made), so the
    round trips overlap the loads. Returns the answers, in bucket order. ``times`` gets the seconds
    spent packing (copies finished included) as ``pack``, and waiting for the engines as ``wait``."""
    answers: list[Any] = [None] * len(buckets)
    waits: list[Callable[[], Any]] = []
    spent = {"pack": 0.0, "wait": 0.0}

    def wait(j: int) -> None:
        t = time.perf_counter()
        answers[j] = waits[j]()
        spent["wait"] += time.perf_counter() - t

    for i, bucket in enumerate(buckets):
        if i >= arena.slots:
            wait(i - arena.slots)
        t = time.perf_counter()
        offset = arena.offset(i)
        pack(bucket, tensors, arena.buffer[offset : offset + arena.slot_bytes])
        if arena.buffer.is_cuda:
            torch.cuda.current_stream().synchronize()
        spent["pack"] += time.perf_counter() - t
        waits.append(start_load(i, bucket, offset))
    for j in range(max(0, len(buckets) - arena.slots), len(buckets)):
        wait(j)
    if times is not None:
        times.update(spent)
    return answers


def push_ipc(buckets: list[Bucket], tensors: Mapping[str, torch.Tensor], arena: IpcArena, engines: list[Any], version: int | None, times: dict[str, float]) -> dict[str, float]:
    """A learner rank's ``cuda_ipc`` push to ``engines`` (Ray actors of :class:`rollout.engine.VLLMEngine`
    on its GPU): :func:`send_ipc` through ``arena``, each engine ending the update (setting
    ``version``) at its last bucket. Returns ``times`` (what the caller measured before: ``tail``,
    the learner's queued GPU work, and ``state_dict``) with ``pack`` and ``wait`` (:func:`send_ipc`)
    and the engines' side of the update, within ``wait`` (:meth:`rollout.engine.VLLMEngine.load_ipc_bucket`:
    ``engine_quiesce``, ``engine_load``, ``engine_finish``, ``engine_span``; each the slowest
    engine's); all in seconds."""

    def start(i: int, bucket: Bucket, offset: int) -> Callable[[], list[Any]]:
        futures = [e.load_ipc_bucket.remote(bucket, arena.key, arena.handle, offset, len(buckets), version).future() for e in engines]
        return lambda: [f.result() for f in futures]

    answers = send_ipc(buckets, tensors, arena, start, times)  # per bucket, per engine: None, or the update's engine-side times
    ends = [a for per_engine in answers for a in per_engine if a is not None]
    if len(ends) != len(engines):  # a sync that loads nothing would otherwise pass unseen
        raise RuntimeError(f"cuda_ipc weight sync: {len(engines) - len(ends)} of {len(engines)} engines did not finish the update")
    return {**times, **{k: max(e[k] for e in ends) for k in ends[0]}}


class IpcView:
    """An engine's mapping of the learner's :class:`IpcArena`: opened at the first bucket from an
    arena, kept while the learner sends from the same one (``key``), replaced when it sends from
    a new one."""

    def __init__(self, open_handle: Callable[[Any], torch.Tensor] | None = None) -> None:
        self._open = open_handle or open_cuda
        self.key: str | None = None
        self._buffer: torch.Tensor | None = None
        self.opened = 0  # arenas mapped so far

    def bucket(self, key: str, handle: Any, bucket: Bucket, offset: int) -> torch.Tensor:
        """The bytes of ``bucket`` at ``offset`` in the arena ``key`` (mapped at its first bucket, by ``handle``)."""
        if key != self.key or self._buffer is None:
            self._buffer = None  # the old mapping goes before the new one is opened
            self._buffer, self.key = self._open(handle), key
            self.opened += 1
        return self._buffer[offset : offset + bucket.nbytes]


def load_ipc(bucket: Bucket, flat: torch.Tensor, load: Callable[[list[tuple[str, torch.Tensor]]], None]) -> None:
    """An engine's side of ``cuda_ipc``: ``load`` the bucket from ``flat`` (its bytes in the learner's
    arena, :meth:`IpcView.bucket`) and finish every copy out of it before returning (the learner
    refills the slot afterwards)."""
    load(unpack(bucket, flat))
    if flat.is_cuda:
        torch.cuda.current_stream().synchronize()


def gpu_uuid() -> str | None:
    """The UUID of this process's current GPU (``None`` without one): tells colocated placements apart."""
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
