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

        self.in_process = in_process
        kwargs = dict(
            model_path=str(model_path),
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            max_model_len=rollout.max_model_len,
            enforce_eager=rollout.enforce_eager,
            dtype=dtype,
            kv_cache_memory_bytes=rollout.kv_cache_memory_mb * 2**20 if rollout.kv_cache_memory_mb else None,
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

    def shutdown(self) -> None:
        if self.in_process:
            return
        import ray

        for e in self.engines:
            ray.kill(e)
        ray.util.remove_placement_group(self._pg)


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
