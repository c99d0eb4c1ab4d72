"""``WeightSync``: new weights learner -> rollout engines after every update, by the transport
``rollout.weight_sync`` names or ``auto`` picks from where the actors landed.

The driver side of :mod:`align.weight_sync.transports` (the worker side: buckets, process
groups, CUDA IPC). It talks to the groups of :mod:`align.cluster` and to their actors' methods;
the workers never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from align.cluster import ClusterError, LearnerGroup, RolloutGroup
from align.weight_sync.transports import plan_buckets


class WeightSync:
    """New weights learner -> rollout engines, by the transport ``rollout.weight_sync`` names.

    See :mod:`align.weight_sync.transports` for the transports. ``auto`` picks, from where the actors landed:
    ``cuda_ipc`` when every engine shares a GPU with a learner rank, ``broadcast`` over NCCL when
    learner rank 0 and every engine hold GPUs and none shares rank 0's, and ``object_store``
    otherwise (CPU machines, mixed placements) and whenever a snapshot is needed (``snapshot``: the
    off-policy overlap loads the weights of update t after the rollout in flight, while the
    learners already train on). In-process groups hand tensors over directly.
    """

    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup, transport: str = "auto", bucket_mb: int = 512, snapshot: bool = False) -> None:
        self.learners, self.rollout = learners, rollout
        self._buckets: list[Any] = []
        # cuda_ipc: the last push's seconds by part (transports.push_ipc), the slowest learner rank's each
        self.last_push_times: dict[str, float] = {}
        self._engines_of_rank: list[list[Any]] = []
        in_process = learners.in_process or rollout.in_process
        if in_process:
            if transport in ("broadcast", "cuda_ipc"):
                raise ClusterError(f"rollout.weight_sync={transport} needs learners and engines as Ray actors (separate processes), not in-process")
            self.transport, self.backend = "object_store", ""
            return
        learner_gpus, engine_gpus = learners.gpu_uuids(), rollout.gpu_uuids()
        owner = [learner_gpus.index(u) if u is not None and u in learner_gpus else None for u in engine_gpus]
        all_colocated = all(o is not None for o in owner)
        shares_rank0 = [i for i, u in enumerate(engine_gpus) if u is not None and u == learner_gpus[0]]
        all_gpus = learner_gpus[0] is not None and all(u is not None for u in engine_gpus)
        if transport == "auto":
            if snapshot:
                transport = "object_store"
            elif all_colocated:
                transport = "cuda_ipc"
            elif all_gpus and not shares_rank0:
                transport = "broadcast"
            else:
                transport = "object_store"
        elif transport == "cuda_ipc" and not all_colocated:
            lone = [i for i, o in enumerate(owner) if o is None]
            raise ClusterError(f"rollout.weight_sync=cuda_ipc needs every engine on a learner's GPU; engines {lone} are not "
                               "(give engines a fraction of the learners' GPUs, or use broadcast / auto)")  # fmt: skip
        elif transport == "broadcast" and shares_rank0:
            raise ClusterError(f"rollout.weight_sync=broadcast: engines {shares_rank0} share learner rank 0's GPU, and NCCL refuses "
                               "two ranks on one GPU; use cuda_ipc (or auto)")  # fmt: skip
        self.transport = transport
        self.backend = ("nccl" if all_gpus else "gloo") if transport == "broadcast" else ""
        if transport in ("broadcast", "cuda_ipc"):
            self._buckets = plan_buckets(learners.weight_meta(), bucket_mb * 2**20)
        if transport == "cuda_ipc":
            self._engines_of_rank = [[e for e, o in zip(rollout.engines, owner, strict=True) if o == r] for r in range(learners.size)]
        if transport == "broadcast":
            host, port = learners.master_address()
            world = 1 + len(rollout.engines)
            _wait_all([learners.actors[0].init_weight_group.remote(host, port, world, self.backend)]
                      + [e.init_weight_group.remote(host, port, 1 + i, world, self.backend) for i, e in enumerate(rollout.engines)])  # fmt: skip

    def describe(self) -> str:
        if self.transport == "object_store":
            return "object_store (state dict through Ray)" if not self.learners.in_process else "in-process"
        mb = sum(b.nbytes for b in self._buckets) / 2**20
        how = f"{self.transport} ({self.backend})" if self.backend else self.transport
        return f"{how}: {len(self._buckets)} buckets, {mb:,.1f} MiB"

    def push(self, version: int | None = None) -> None:
        """Load the learners' current weights into every engine; returns when all hold them.

        ``version`` becomes the engines' weights version (``VLLMEngine.update_weights``)."""
        if self.transport == "object_store":
            self.rollout.update_weights(self.learners.state_dict(), version)
        elif self.transport == "broadcast":
            _wait_all([a.push_broadcast.remote(self._buckets) for a in self.learners.actors]
                      + [e.receive_broadcast.remote(self._buckets, version) for e in self.rollout.engines])  # fmt: skip
        else:
            # One call per learner rank; it calls its engines once per bucket, and each engine finishes the update at its last.
            ranks = [t for t in _wait_all([a.push_ipc.remote(self._buckets, es, version) for a, es in zip(self.learners.actors, self._engines_of_rank, strict=True)]) if t]
            self.last_push_times = {k: max(t[k] for t in ranks) for k in ranks[0]} if ranks else {}

    def snapshot(self, version: int | None = None) -> Callable[[], None]:
        """A job that loads the weights as they are *now* into the engines, to run later."""
        if self.transport != "object_store":
            return lambda: self.push(version)  # streaming transports read the live weights (never with the overlap)
        state = self.learners.state_dict()
        return lambda: self.rollout.update_weights(state, version)


def _wait_all(refs: list[Any]) -> list[Any]:
    """``ray.get`` of ``refs`` (their results, in order) that raises the first failure as soon as it
    happens: the two sides of a collective would otherwise wait for a peer that is gone until the
    group's timeout."""
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return ray.get(list(refs))
