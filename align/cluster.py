"""Ray actor groups: the one place workers become Ray actors.

Ray starts embedded on this machine (loopback only, no token file, no dashboard) unless an
address is given (``--ray-address`` / ``RAY_ADDRESS``), in which case the same code places
actors across that cluster with placement groups. Groups expose typed methods
(``learners.train_step(...)``); the ``in_process`` mode runs the same worker classes without
Ray, for unit tests and debuggers. Worker classes (``Learner``, ``VLLMEngine``,
``RewardModelScorer``) never import Ray: what only Ray knows (the node's address and id) is
added here, by :func:`_actor_class`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from align.actor_errors import check_max_model_len
from align.config.schema import ClusterConfig, LearnerConfig, RolloutConfig
from align.errors import AlignError
from align.learner import ds_build
from align.ray_start import init_ray  # Ray's start lives there, importable before torch (the CLI begins it early)
from align.setup_wait import Step, deadline_in, wait_setup
from align.weights import from_wire, to_wire

if TYPE_CHECKING:
    import torch  # the driver spawns the engines before it imports torch (align/algorithms/rl/prestart.py)

    from align.learner.engine import MicroBatch, Objective

LOCAL_HOST = "127.0.0.1"


class ClusterError(AlignError, RuntimeError):
    """The cluster cannot provide what the recipe asks for."""


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


def _actor_class(cls: type) -> Any:
    """``cls`` as a Ray actor class, plus ``node_ip`` and ``node_id`` (asked of Ray inside the actor)."""
    import ray

    class Placed(cls):  # type: ignore[misc, valid-type]
        def node_ip(self) -> str:
            return ray.util.get_node_ip_address()

        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

    Placed.__name__ = Placed.__qualname__ = cls.__name__
    return ray.remote(Placed)


class _Group:
    """Actors of one worker class, one placement-group bundle each; or one in-process worker.

    ``self.actors`` are Ray actor handles, or a :class:`_Local` wrapper in-process, so the groups
    below call ``actor.method.remote(...)`` either way and read results with :meth:`_get`.
    """

    def __init__(self) -> None:
        self.in_process = True
        self.actors: list[Any] = []
        self._pg: Any = None

    def _spawn_local(self, worker: Any) -> None:
        self.in_process, self.actors = True, [_Local(worker)]

    def _spawn(self, cls: type, n: int, cpus: float, gpus: float, timeout_s: float, what: str, args: Callable[[int], dict[str, Any]]) -> None:
        """``n`` actors of ``cls`` (actor ``i`` built with ``**args(i)``), packed in one placement group."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.in_process = False
        self._pg = _placement_group([bundle] * n, "PACK", timeout_s, what)
        remote_cls = _actor_class(cls)
        self.actors = [
            remote_cls.options(
                num_cpus=cpus, num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i)
            ).remote(**args(i))
            for i in range(n)
        ]

    def _get(self, refs: Sequence[Any]) -> list[Any]:
        if self.in_process:
            return list(refs)
        import ray

        return ray.get(list(refs))

    def _call_all(self, method: str, *args: Any) -> list[Any]:
        return self._get([getattr(a, method).remote(*args) for a in self.actors])

    def node_ids(self) -> list[str]:
        return ["local"] * len(self.actors) if self.in_process else self._call_all("node_id")

    def node_ip(self, index: int = 0) -> str:
        return LOCAL_HOST if self.in_process else self._get([self.actors[index].node_ip.remote()])[0]

    def gpu_uuids(self) -> list[str | None]:
        return self._call_all("gpu_uuid")

    def shutdown(self) -> None:
        if self.in_process:
            return
        import ray

        for a in self.actors:
            ray.kill(a)
        ray.util.remove_placement_group(self._pg)


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


class LearnerGroup(_Group):
    """N data-parallel DeepSpeed learners (one per placement-group bundle)."""

    def __init__(self, cluster: ClusterConfig, in_process: bool = False) -> None:
        # Imported here, as the other groups import their workers: the rollout engines can then be
        # spawned before the learner's modules (transformers' model classes) are imported
        # (align/algorithms/rl/prestart.py).
        from align.learner.engine import Learner

        super().__init__()
        self._pending: list[Any] | None = None  # setup() calls not yet waited for
        self._setup_timeout_s, self._deadline = cluster.setup_timeout_s, 0.0
        if in_process:
            self._spawn_local(Learner(0, 1))
        else:
            if not cluster.gpus_per_learner:
                ds_build.prepare_cpu_learners(lambda msg: print(msg, flush=True))
            n, c = cluster.num_learners, cluster
            self._spawn(Learner, n, c.cpus_per_learner, c.gpus_per_learner, c.placement_timeout_s, f"{n} learners",
                        lambda i: dict(rank=i, world_size=n, cpus=c.cpus_per_learner))  # fmt: skip
        self.size = len(self.actors)

    def master_address(self) -> tuple[str, int]:
        """Rank 0's node and a free port there: where a process group of the learners meets."""
        return self._get([self.actors[0].free_port.remote(self.node_ip(0))])[0]

    def setup(
        self, model_path: str, cfg: LearnerConfig, total_steps: int, seed: int, model_kind: str = "causal_lm", num_labels: int = 1,
        wait: bool = True,
    ) -> None:  # fmt: skip
        """Build the DeepSpeed engines. ``wait=False`` returns at once (another group can build
        meanwhile); :meth:`wait_ready` then blocks until they are built, or raises
        :class:`~align.setup_wait.SetupTimeout` naming each stuck learner and its step after
        ``cluster.setup_timeout_s``."""
        if self.in_process:
            master = self.master_address()
            self._pending = [a.setup.remote(model_path, cfg, total_steps, seed, master, model_kind, num_labels) for a in self.actors]
        else:
            self._deadline = deadline_in(self._setup_timeout_s)
            ip_ref = self.actors[0].node_ip.remote()
            wait_setup([Step("learner 0 (rank 0)", "starting its process", ip_ref)], self._deadline, self._setup_timeout_s)
            master = self.master_address()
            self._pending = [
                step
                for i, a in enumerate(self.actors)
                for step in (
                    Step(f"learner {i} (rank {i})", "Learner.join_group: joining the process group (CPU: loading DeepSpeed's comm op)", a.join_group.remote(master)),
                    Step(f"learner {i} (rank {i})", f"Learner.load_model: loading {model_path}", a.load_model.remote(model_path, cfg, seed, model_kind, num_labels)),
                    Step(f"learner {i} (rank {i})", "Learner.build_engine: building the DeepSpeed engine", a.build_engine.remote(total_steps)),
                )
            ]  # fmt: skip
        if wait:
            self.wait_ready()

    @property
    def pending_refs(self) -> list[Any]:
        """The set-up calls :meth:`wait_ready` will wait for (Ray refs, or in-process results)."""
        return [s.ref if isinstance(s, Step) else s for s in self._pending or []]

    def wait_ready(self) -> None:
        pending, self._pending = self._pending, None
        if pending and self.in_process:
            self._get(pending)
        elif pending:
            wait_setup(pending, self._deadline, self._setup_timeout_s)

    def train_step(self, per_rank: list[list[MicroBatch]], objective: Objective) -> dict[str, float]:
        """One optimizer step; ``per_rank[r]`` are rank r's micro-batches. Metrics summed over ranks."""
        results = self._get([a.train_step.remote(mbs, objective) for a, mbs in zip(self.actors, per_rank, strict=True)])
        return _sum_metrics(results, keep_rank0=("grad_norm", "lr"))

    def eval_step(self, per_rank: list[list[MicroBatch]], objective: Objective) -> dict[str, float]:
        results = self._get([a.eval_step.remote(mbs, objective) for a, mbs in zip(self.actors, per_rank, strict=True)])
        return _sum_metrics(results)

    def compute(self, per_rank: list[list[MicroBatch]], fn: Callable[[Any, MicroBatch], torch.Tensor]) -> list[list[torch.Tensor]]:
        return self._get([a.compute.remote(mbs, fn) for a, mbs in zip(self.actors, per_rank, strict=True)])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights for rollout sync (every rank takes part in the ZeRO-3 gather)."""
        # As arrays over Ray (align.weights): no tensor pickling; the tensors returned map the
        # object store's buffers without a copy.
        return from_wire(self._call_all("state_dict_wire")[0])

    def weight_meta(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return self._call_all("weight_meta")[0]  # all ranks: ZeRO-3 gathers

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        self._call_all("save_hf", path, tokenizer_path)

    def save_state(self, path: str) -> None:
        self._call_all("save_state", path)

    def load_state(self, path: str) -> None:
        self._call_all("load_state", path)


def _sum_metrics(results: list[dict[str, float]], keep_rank0: tuple[str, ...] = ()) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        for k, v in r.items():
            out[k] = out.get(k, 0.0) + v
    for k in keep_rank0:
        if k in results[0]:
            out[k] = results[0][k]
    return out


class RolloutGroup(_Group):
    """M vLLM engines serving the policy; ``generate`` spreads a batch over them, in order."""

    def __init__(self, cluster: ClusterConfig, rollout: RolloutConfig, model_path: str, seed: int, in_process: bool = False, dtype: str = "float32", wait: bool = True) -> None:  # fmt: skip
        """Start the engines; ``wait=False`` returns once they are spawned, and :meth:`wait_ready` waits for them."""
        from rollout.engine import VLLMEngine
        from rollout.routing import has_moe_layers

        if rollout.return_routed_experts and not has_moe_layers(model_path):
            raise ClusterError(f"rollout.return_routed_experts is on, but the policy ({model_path}) has no MoE layers; turn it off")
        check_max_model_len(str(model_path), rollout.max_model_len)  # before any engine starts
        super().__init__()
        self._ready: list[Step] = []
        self._in_flight = [0] * (1 if in_process else cluster.num_rollout_engines)  # generate_one's requests, per engine
        kwargs = dict(model_path=str(model_path), gpu_memory_utilization=rollout.gpu_memory_utilization, max_model_len=rollout.max_model_len,
                      enforce_eager=rollout.enforce_eager, dtype=dtype, return_routed_experts=rollout.return_routed_experts,
                      kv_cache_memory_bytes=rollout.kv_cache_memory_mb * 2**20 if rollout.kv_cache_memory_mb else None,
                      recompute_kv_on_update=rollout.recompute_kv_on_update, max_num_seqs=rollout.max_num_seqs)  # fmt: skip
        if in_process:
            self._spawn_local(VLLMEngine(seed=seed, **kwargs))
        else:
            n, c = cluster.num_rollout_engines, cluster
            self._spawn(VLLMEngine, n, 1.0, c.gpus_per_rollout_engine, c.placement_timeout_s, f"{n} rollout engines",
                        lambda i: dict(seed=seed + i, **kwargs))  # fmt: skip
            self._ready = [Step(f"rollout engine {i}", f"VLLMEngine.__init__: starting vLLM with {model_path}", e.__ray_ready__.remote()) for i, e in enumerate(self.actors)]
            self._setup_timeout_s, self._deadline = c.setup_timeout_s, deadline_in(c.setup_timeout_s)
            if wait:
                self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every engine is built, or raise :class:`~align.setup_wait.SetupTimeout` naming the stuck ones."""
        ready, self._ready = self._ready, []
        if ready:
            wait_setup(ready, self._deadline, self._setup_timeout_s)

    @property
    def engines(self) -> list[Any]:
        return self.actors

    async def generate(self, requests: list[Any]) -> list[Any]:
        """One contiguous slice of ``requests`` per engine, run concurrently; outputs in request order."""
        size = -(-len(requests) // len(self.engines))
        slices = [(e, requests[i * size : (i + 1) * size]) for i, e in enumerate(self.engines)]
        call = (lambda e, s: asyncio.to_thread(e.generate.remote, s)) if self.in_process else (lambda e, s: e.generate.remote(s))
        parts = await asyncio.gather(*[call(e, s) for e, s in slices if s])
        return [out for part in parts for out in part]

    async def generate_one(self, request: Any) -> Any:
        """One request on the engine with the fewest requests in flight from this group (a ``rollout.types.RequestFn``)."""
        i = min(range(len(self.engines)), key=self._in_flight.__getitem__)
        self._in_flight[i] += 1
        try:
            return await self.engines[i].generate_one.remote(request)
        finally:
            self._in_flight[i] -= 1

    def update_weights(self, state_dict: dict[str, torch.Tensor], version: int | None = None) -> None:
        """Load new weights into every engine in place (no checkpoint on disk); ``version``: ``VLLMEngine.update_weights``."""
        if self.in_process:
            self.engines[0].update_weights.remote(state_dict, version)
            return
        import ray

        ref = ray.put(to_wire(state_dict))  # arrays: the engines map them without a copy
        self._call_all("update_weights", ref, version)


class RewardModelGroup(_Group):
    """Reward-model scorer actors (``align.learner.reward_model.RewardModelScorer``), one model copy each.

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
        setup_timeout_s: float = 900.0,
    ) -> None:
        from align.learner.reward_model import RewardModelScorer

        super().__init__()
        kwargs = dict(path=str(path), batch_size=batch_size_per_actor, max_seq_len=max_seq_len, cpus=cpus_per_actor)
        if in_process:
            # No thread cap: it would change torch's thread count for the whole calling process
            # (a vLLM engine there checks that count against the one it was built with).
            self._spawn_local(RewardModelScorer(**{**kwargs, "cpus": None}))
        else:
            init_ray()  # joins the job's session; starts one only when used on its own (tests)
            self._spawn(RewardModelScorer, num_actors, cpus_per_actor, gpus_per_actor, placement_timeout_s,
                        f"{num_actors} reward-model actors", lambda i: kwargs)  # fmt: skip
            ready = [Step(f"reward-model actor {i}", f"RewardModelScorer.__init__: loading {path}", a.__ray_ready__.remote()) for i, a in enumerate(self.actors)]
            wait_setup(ready, deadline_in(setup_timeout_s), setup_timeout_s, knob="the reward_model reward's setup_timeout_s param")

    @property
    def size(self) -> int:
        return len(self.actors)

    def attributes(self) -> dict[str, float]:
        """Attribute names (output order) and the weights saved with the model."""
        return self._get([self.actors[0].attributes.remote()])[0]

    def score(self, conversations: Sequence[list[dict[str, Any]]], template_kwargs: Sequence[dict[str, Any]] | None = None,
              weights: dict[str, float] | None = None) -> list[float]:  # fmt: skip
        """One combined reward per conversation, in input order."""
        n = len(self.actors)
        kwargs = list(template_kwargs) if template_kwargs is not None else [{} for _ in conversations]
        size = -(-len(conversations) // n) if conversations else 0
        slices = [(list(conversations[i * size : (i + 1) * size]), kwargs[i * size : (i + 1) * size]) for i in range(n)]
        refs = [a.score.remote(c, k, weights) for a, (c, k) in zip(self.actors, slices, strict=True) if c]
        return [s for part in self._get(refs) for s in part]
