"""Ray actor groups: the one place workers become Ray actors.

Ray starts embedded on this machine (loopback only, no token file, no dashboard) unless an
address is given (``--ray-address`` / ``RAY_ADDRESS``), in which case the same code places
actors across that cluster with placement groups. Groups expose typed methods
(``learners.train_step(...)``); the ``in_process`` mode runs the same worker classes without
Ray, for unit tests and debuggers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from align.config.schema import ClusterConfig, LearnerConfig
from align.errors import AlignError
from align.learner.engine import Learner, MicroBatch, Objective
from align.weights import from_wire, to_wire

# Before Ray is imported anywhere: listen on loopback only, and write no auth-token file.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Environment the actors need to find the same caches as the driver.
_PROPAGATED_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HOME", "PIP_CACHE_DIR", "VLLM_LOGGING_LEVEL", "PYTHONPATH")


class ClusterError(AlignError, RuntimeError):
    """The cluster cannot provide what the recipe asks for."""


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start Ray embedded on this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    env_vars = {k: os.environ[k] for k in _PROPAGATED_ENV if k in os.environ}
    env_vars["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    runtime_env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # "local": a new embedded instance even when a `ray start` cluster runs on this machine
        # (plain ray.init() would join it, and then refuses num_cpus).
        ray.init(
            address="local",
            num_cpus=max(num_cpus or 0, os.cpu_count() or 1),
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )


def _placement_group(bundles: list[dict[str, float]], strategy: str, timeout_s: float, what: str) -> Any:
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise ClusterError(
            f"could not place {what}: asked for {len(bundles)} x {bundles[0]} within {timeout_s:.0f} s, "
            f"the cluster has {ray.cluster_resources()} (available now: {ray.available_resources()}). "
            "Lower cluster.num_learners / cpus_per_learner / gpus_per_learner, or add nodes."
        )
    return pg


class _Local:
    """An in-process stand-in for an actor handle: ``h.method.remote(...)`` calls directly.

    Only for ``in_process=True`` (unit tests, debuggers); the product path uses Ray actors.
    """

    class _Method:
        def __init__(self, fn: Callable[..., Any]) -> None:
            self.remote = fn

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> "_Local._Method":
        return _Local._Method(getattr(self._obj, name))


def _get(refs: Sequence[Any], in_process: bool) -> list[Any]:
    if in_process:
        return list(refs)
    import ray

    return ray.get(list(refs))


class LearnerGroup:
    """N data-parallel DeepSpeed learners (one per placement-group bundle)."""

    def __init__(self, cluster: ClusterConfig, in_process: bool = False) -> None:
        self.in_process = in_process
        n = 1 if in_process else cluster.num_learners
        self.size = n
        self._pending: list[Any] | None = None  # setup() calls not yet waited for
        if in_process:
            self.actors: list[Any] = [_Local(Learner(0, 1))]
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": cluster.cpus_per_learner}
        if cluster.gpus_per_learner:
            bundle["GPU"] = cluster.gpus_per_learner
        self._pg = _placement_group([bundle] * n, "PACK", cluster.placement_timeout_s, f"{n} learners")
        remote_cls = ray.remote(Learner)
        self.actors = [
            remote_cls.options(
                num_cpus=cluster.cpus_per_learner,
                num_gpus=cluster.gpus_per_learner,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote(i, n, cluster.cpus_per_learner)
            for i in range(n)
        ]

    def setup(
        self, model_path: str, cfg: LearnerConfig, total_steps: int, seed: int, model_kind: str = "causal_lm", num_labels: int = 1,
        wait: bool = True,
    ) -> None:  # fmt: skip
        """Build the DeepSpeed engines. ``wait=False`` returns at once (another group can build
        meanwhile); :meth:`wait_ready` then blocks until they are built."""
        master = _get([self.actors[0].address.remote()], self.in_process)[0]
        self._pending = [a.setup.remote(model_path, cfg, total_steps, seed, master, model_kind, num_labels) for a in self.actors]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        pending, self._pending = self._pending, None
        if pending:
            _get(pending, self.in_process)

    def node_ids(self) -> list[str]:
        return _get([a.node_id.remote() for a in self.actors], self.in_process)

    def gpu_uuids(self) -> list[str | None]:
        return _get([a.gpu_uuid.remote() for a in self.actors], self.in_process)

    def train_step(self, per_rank: list[list[MicroBatch]], objective: Objective) -> dict[str, float]:
        """One optimizer step; ``per_rank[r]`` are rank r's micro-batches. Metrics summed over ranks."""
        results = _get([a.train_step.remote(mbs, objective) for a, mbs in zip(self.actors, per_rank, strict=True)], self.in_process)
        return _sum_metrics(results, keep_rank0=("grad_norm", "lr"))

    def eval_step(self, per_rank: list[list[MicroBatch]], objective: Objective) -> dict[str, float]:
        results = _get([a.eval_step.remote(mbs, objective) for a, mbs in zip(self.actors, per_rank, strict=True)], self.in_process)
        return _sum_metrics(results)

    def compute(self, per_rank: list[list[MicroBatch]], fn: Callable[[Any, MicroBatch], torch.Tensor]) -> list[list[torch.Tensor]]:
        return _get([a.compute.remote(mbs, fn) for a, mbs in zip(self.actors, per_rank, strict=True)], self.in_process)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights for rollout sync (every rank takes part in the ZeRO-3 gather)."""
        # As arrays over Ray (align.weights): no tensor pickling; the tensors returned map the
        # object store's buffers without a copy.
        return from_wire(_get([a.state_dict_wire.remote() for a in self.actors], self.in_process)[0])

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        _get([a.save_hf.remote(path, tokenizer_path) for a in self.actors], self.in_process)

    def save_state(self, path: str) -> None:
        _get([a.save_state.remote(path) for a in self.actors], self.in_process)

    def load_state(self, path: str) -> None:
        _get([a.load_state.remote(path) for a in self.actors], self.in_process)

    def shutdown(self) -> None:
        if self.in_process:
            return
        import ray

        for a in self.actors:
            ray.kill(a)
        ray.util.remove_placement_group(self._pg)


def _sum_metrics(results: list[dict[str, float]], keep_rank0: tuple[str, ...] = ()) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        for k, v in r.items():
            out[k] = out.get(k, 0.0) + v
    for k in keep_rank0:
        if k in results[0]:
            out[k] = results[0][k]
    return out


class RolloutGroup:
    """M vLLM engines serving the policy; ``generate`` spreads a batch over them, in order."""

    def __init__(self, cluster: ClusterConfig, rollout: Any, model_path: str, seed: int, in_process: bool = False, dtype: str = "float32") -> None:
        from rollout.engine import VLLMEngine
        from rollout.routing import has_moe_layers

        if rollout.return_routed_experts and not has_moe_layers(model_path):
            raise ClusterError(f"rollout.return_routed_experts is on, but the policy ({model_path}) has no MoE layers; turn it off")
        self.in_process = in_process
        kwargs = dict(
            model_path=str(model_path),
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            max_model_len=rollout.max_model_len,
            enforce_eager=rollout.enforce_eager,
            dtype=dtype,
            kv_cache_memory_bytes=rollout.kv_cache_memory_mb * 2**20 if rollout.kv_cache_memory_mb else None,
            return_routed_experts=rollout.return_routed_experts,
        )
        if in_process:
            self.engines: list[Any] = [_Local(VLLMEngine(seed=seed, **kwargs))]
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n = cluster.num_rollout_engines
        bundle = {"CPU": 1.0}
        if cluster.gpus_per_rollout_engine:
            bundle["GPU"] = cluster.gpus_per_rollout_engine
        self._pg = _placement_group([bundle] * n, "PACK", cluster.placement_timeout_s, f"{n} rollout engines")
        remote_cls = ray.remote(VLLMEngine)
        self.engines = [
            remote_cls.options(
                num_cpus=1,
                num_gpus=cluster.gpus_per_rollout_engine,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote(seed=seed + i, **kwargs)
            for i in range(n)
        ]

    async def generate(self, requests: list[Any]) -> list[Any]:
        """One contiguous slice of ``requests`` per engine, run concurrently; outputs in request order."""
        import asyncio

        n = len(self.engines)
        size = -(-len(requests) // n)
        slices = [requests[i * size : (i + 1) * size] for i in range(n)]
        if self.in_process:
            parts = [await asyncio.to_thread(self.engines[0].generate.remote, requests)]
        else:
            parts = await asyncio.gather(*[e.generate.remote(s) for e, s in zip(self.engines, slices) if s])
        return [out for part in parts for out in part]

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load new weights into every engine in place (no checkpoint on disk)."""
        if self.in_process:
            self.engines[0].update_weights.remote(state_dict)
            return
        import ray

        ref = ray.put(to_wire(state_dict))  # arrays: the engines map them without a copy
        ray.get([e.update_weights.remote(ref) for e in self.engines])

    def gpu_uuids(self) -> list[str | None]:
        return _get([e.gpu_uuid.remote() for e in self.engines], self.in_process)

    def shutdown(self) -> None:
        if self.in_process:
            return
        import ray

        for e in self.engines:
            ray.kill(e)
        ray.util.remove_placement_group(self._pg)


class WeightSync:
    """New weights learner -> rollout engines, by the transport ``rollout.weight_sync`` names.

    See :mod:`align.weight_sync` for the transports. ``auto`` picks, from where the actors landed:
    ``cuda_ipc`` when every engine shares a GPU with a learner rank, ``broadcast`` over NCCL when
    learner rank 0 and every engine hold GPUs and none shares rank 0's, and ``object_store``
    otherwise (CPU machines, mixed placements) and whenever a snapshot is needed (``snapshot``: the
    off-policy overlap loads the weights of update t after the rollout in flight, while the
    learners already train on). In-process groups hand tensors over directly.
    """

    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup, transport: str = "auto", bucket_mb: int = 512, snapshot: bool = False) -> None:
        self.learners, self.rollout = learners, rollout
        self._buckets: list[Any] = []
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
            from align.weight_sync import plan_buckets

            meta = _get([a.weight_meta.remote() for a in learners.actors], False)[0]  # all ranks: ZeRO-3 gathers
            self._buckets = plan_buckets(meta, bucket_mb * 2**20)
        if transport == "cuda_ipc":
            self._engines_of_rank = [[e for e, o in zip(rollout.engines, owner, strict=True) if o == r] for r in range(learners.size)]
        if transport == "broadcast":
            host, port = _get([learners.actors[0].address.remote()], False)[0]
            world = 1 + len(rollout.engines)
            _wait_all([learners.actors[0].init_weight_group.remote(host, port, world, self.backend)]
                      + [e.init_weight_group.remote(host, port, 1 + i, world, self.backend) for i, e in enumerate(rollout.engines)])  # fmt: skip

    def describe(self) -> str:
        if self.transport == "object_store":
            return "object_store (state dict through Ray)" if not self.learners.in_process else "in-process"
        mb = sum(b.nbytes for b in self._buckets) / 2**20
        how = f"{self.transport} ({self.backend})" if self.backend else self.transport
        return f"{how}: {len(self._buckets)} buckets, {mb:,.1f} MiB"

    def push(self) -> None:
        """Load the learners' current weights into every engine; returns when all hold them."""
        if self.transport == "object_store":
            self.rollout.update_weights(self.learners.state_dict())
        elif self.transport == "broadcast":
            _wait_all([a.push_broadcast.remote(self._buckets) for a in self.learners.actors]
                      + [e.receive_broadcast.remote(self._buckets) for e in self.rollout.engines])  # fmt: skip
        else:
            _wait_all([a.push_ipc.remote(self._buckets, es) for a, es in zip(self.learners.actors, self._engines_of_rank, strict=True)])
            _wait_all([e.finish_weight_update.remote() for e in self.rollout.engines])

    def snapshot(self) -> Callable[[], None]:
        """A job that loads the weights as they are *now* into the engines, to run later."""
        if self.transport != "object_store":
            return self.push  # streaming transports read the live weights (never with the overlap)
        state = self.learners.state_dict()
        return lambda: self.rollout.update_weights(state)


def _wait_all(refs: list[Any]) -> None:
    """``ray.get`` that raises the first failure as soon as it happens: the two sides of a
    collective would otherwise wait for a peer that is gone until the group's timeout."""
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)


class RewardModelGroup:
    """Reward-model scorer actors (``rewards.reward_model.RewardModelScorer``), one model copy each.

    ``score`` cuts a batch of conversations into one contiguous slice per actor, scores the slices
    concurrently and returns the rewards in input order. The model is frozen: nothing is ever
    synced to these actors after they load it.
    """

    def __init__(
        self,
        path: str,
        num_actors: int = 1,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        batch_size_per_actor: int = 32,
        max_seq_len: int = 1024,
        placement_timeout_s: float = 120.0,
        in_process: bool = False,
    ) -> None:
        from rewards.reward_model import RewardModelScorer

        self.in_process = in_process
        kwargs = dict(path=str(path), batch_size=batch_size_per_actor, max_seq_len=max_seq_len, cpus=cpus_per_actor)
        if in_process:
            # No thread cap: it would change torch's thread count for the whole calling process
            # (a vLLM engine there checks that count against the one it was built with).
            self.actors: list[Any] = [_Local(RewardModelScorer(**{**kwargs, "cpus": None}))]
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        init_ray()
        bundle = {"CPU": cpus_per_actor}
        if gpus_per_actor:
            bundle["GPU"] = gpus_per_actor
        self._pg = _placement_group([bundle] * num_actors, "PACK", placement_timeout_s, f"{num_actors} reward-model actors")
        remote_cls = ray.remote(RewardModelScorer)
        self.actors = [
            remote_cls.options(
                num_cpus=cpus_per_actor,
                num_gpus=gpus_per_actor,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote(**kwargs)
            for i in range(num_actors)
        ]

    @property
    def size(self) -> int:
        return len(self.actors)

    def attributes(self) -> dict[str, float]:
        """Attribute names (output order) and the weights saved with the model."""
        return _get([self.actors[0].attributes.remote()], self.in_process)[0]

    def score(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        template_kwargs: Sequence[dict[str, Any]] | None = None,
        weights: dict[str, float] | None = None,
    ) -> list[float]:
        """One combined reward per conversation, in input order."""
        n = len(self.actors)
        kwargs = list(template_kwargs) if template_kwargs is not None else [{} for _ in conversations]
        size = -(-len(conversations) // n) if conversations else 0
        slices = [(list(conversations[i * size : (i + 1) * size]), kwargs[i * size : (i + 1) * size]) for i in range(n)]
        refs = [a.score.remote(c, k, weights) for a, (c, k) in zip(self.actors, slices, strict=True) if c]
        return [s for part in _get(refs, self.in_process) for s in part]

    def shutdown(self) -> None:
        if self.in_process:
            return
        import ray

        for a in self.actors:
            ray.kill(a)
        ray.util.remove_placement_group(self._pg)
