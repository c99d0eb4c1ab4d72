"""The thread that drives one in-process vLLM engine: requests in at any time, steps while any run.

vLLM's ``AsyncLLM`` always runs its engine core in a separate process (it refuses an
in-process core: "Running EngineCore in asyncio without multiprocessing is not currently
supported"). This engine's weights are loaded from the caller's process (``collective_rpc``
closures, the routing recorder, the broadcast group and CUDA IPC handles all live there), so
the same continuous batching is had from the in-process ``LLMEngine`` instead: one thread owns
it, adds requests whenever they arrive and calls ``step()`` while any run (each step schedules
every running request; a request finishes on its own and comes back then, without waiting for
the rest of a batch). Everything else the engine is
asked to do (load weights, sleep, reset caches) runs on that thread *between* two steps, so a
weight update never drains or aborts the running requests: they continue with the new
weights, and each token is stamped with the weights version that produced it.

With async scheduling (vLLM's default on GPU), one step may still be in flight when ``step()``
returns; :meth:`StepLoop.quiesce` pauses the scheduler (``EngineCore.pause_scheduler(mode="keep")``)
and collects it first, so its tokens keep the old version and the new weights start with the
next step that is scheduled.

Outputs come back whole, when a request finishes (vLLM's ``FINAL_ONLY``), not as a delta at every
step: building and collecting 64 requests' deltas per step cost a llama-1b rollout of 64 x 512
tokens 0.75 s of 3.2 s on an H200 (issue 15). Each token's weights version is rebuilt at the end
from the marks an update leaves on the running requests: how many tokens each had then, read from
vLLM's output processor (:meth:`StepLoop.produced`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Running:
    """One request inside the engine: what it has produced so far, and who waits for it."""

    future: Future[Any]
    on_finish: Callable[[Running, Any], Any]  # (this, vLLM's last CompletionOutput) -> the result
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # filled when it finishes, from ``marks``
    request_id: str = ""  # the engine's id for it (StepLoop.add sets it)
    marks: list[tuple[int, int]] = field(default_factory=list)  # (tokens produced, the version from then on)


def token_versions(marks: list[tuple[int, int]], n: int) -> list[int]:
    """Each of ``n`` tokens' version from ``marks``: token ``i`` has the version of the last mark at or
    before ``i`` (two marks at one count: the later wins, as two updates between the same steps).

    >>> token_versions([(0, 0), (3, 1), (3, 2), (5, 3)], 6)
    [0, 0, 0, 2, 2, 3]
    """
    out: list[int] = []
    for j, (start, version) in enumerate(marks):
        end = marks[j + 1][0] if j + 1 < len(marks) else n
        out.extend([version] * max(0, min(end, n) - len(out)))
    return out


class StepLoop:
    """One thread that builds a vLLM ``LLM``, then steps its engine and runs commands between steps.

    All vLLM calls happen on this thread (the engine is not thread-safe). A step that raises
    fails every running request, and every later call: the engine is not trusted again.
    """

    def __init__(self, build: Callable[[], Any], name: str = "vllm-engine") -> None:
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._running: dict[str, Running] = {}
        self.version = 0  # the weights' version: on every token sampled from now on (set it with set_version)
        self.paused = False  # True: commands only, no steps (a bucketed weight update is half loaded)
        self.failure: BaseException | None = None
        ready: Future[Any] = Future()
        self._thread = threading.Thread(target=self._run, args=(build, ready), name=name, daemon=True)
        self._thread.start()
        self.llm = ready.result()  # re-raises a failed build here

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread between two steps; its result or exception comes back here."""
        return self.submit(fn).result()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self.failure is not None:
            raise RuntimeError(f"this engine failed earlier and must be rebuilt: {self.failure!r}") from self.failure
        future: Future[T] = Future()
        self._commands.put((fn, future))
        return future

    def close(self) -> None:
        """Stop the thread once the commands queued before this one have run; the engine is freed."""
        self._commands.put(None)

    def add(self, request_id: str, prompt: dict[str, Any], params: Any, running: Running) -> None:
        """On the engine thread (inside a command): start one request; ``running.future`` gets its result."""
        running.request_id = request_id
        running.marks = [(0, self.version)]
        self._running[request_id] = running
        try:
            self.llm.llm_engine.add_request(request_id, prompt, params)
        except BaseException:
            del self._running[request_id]
            raise

    def set_version(self, version: int) -> None:
        """On the engine thread, between two steps (after :meth:`quiesce`): the weights are now ``version``;
        the running requests' tokens from here on carry it."""
        produced = self.produced()
        for rid, running in self._running.items():
            running.marks.append((produced.get(rid, 0), version))
        self.version = version

    def produced(self) -> dict[str, int]:
        """On the engine thread: the tokens each running request has produced so far, by request id
        (vLLM's output processor keeps them until the request finishes)."""
        states = self.llm.llm_engine.output_processor.request_states.values()
        return {s.external_req_id: s.detokenizer.num_output_tokens() for s in states if s.detokenizer is not None}

    def quiesce(self) -> None:
        """On the engine thread: collect the step still in flight under async scheduling (module docstring).

        Leaves the scheduler paused; :meth:`resume` after loading. Without async scheduling
        (vLLM's CPU backend) no step outlives ``step()`` and this does nothing.
        """
        core = getattr(self.llm.llm_engine.engine_core, "engine_core", None)  # the in-process EngineCore
        if core is None or not getattr(core, "batch_queue", None):
            return
        core.pause_scheduler(mode="keep", clear_cache=False)
        for _ in range(core.batch_queue_size):  # each step collects one batch; nothing new is scheduled
            if not core.batch_queue:
                break
            self._step()

    def resume(self) -> None:
        core = getattr(self.llm.llm_engine.engine_core, "engine_core", None)
        if core is not None and core.is_scheduler_paused():
            core.resume_scheduler()

    def _run(self, build: Callable[[], Any], ready: Future[Any]) -> None:
        try:
            self.llm = build()
        except BaseException as e:  # noqa: BLE001 - handed to the constructor's caller
            ready.set_exception(e)
            return
        ready.set_result(self.llm)
        engine = self.llm.llm_engine
        while True:
            busy = self.failure is None and not self.paused and engine.has_unfinished_requests()
            try:
                item: Any = self._commands.get(block=not busy)
            except queue.Empty:
                item = ()
            while item != ():
                if item is None:  # close()
                    self._fail(RuntimeError("this engine was closed"))
                    self.llm = engine = None
                    return
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - the caller's to handle
                        future.set_exception(e)
                # A command's closure holds its caller (a VLLMEngine): kept in this frame while the
                # thread waits, it kept a dropped engine, and so this thread, alive for good.
                fn = future = None
                try:
                    item = self._commands.get_nowait()
                except queue.Empty:
                    item = ()
            if self.failure is None and not self.paused and engine.has_unfinished_requests():
                self._step()

    def _step(self) -> None:
        try:
            outputs = self.llm.llm_engine.step()
            for out in outputs:
                self._collect(out)
        except BaseException as e:  # noqa: BLE001 - fails every request; the engine must be rebuilt
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self.failure = e
        running, self._running = self._running, {}
        for r in running.values():
            if not r.future.done():
                r.future.set_exception(e)

    def _collect(self, out: Any) -> None:
        running = self._running.get(out.request_id)
        if running is None or not out.finished:  # FINAL_ONLY: nothing comes before the end
            return
        del self._running[out.request_id]
        completion = out.outputs[0]
        try:
            running.token_ids = list(completion.token_ids)
            running.logprobs = [float(entry[tok].logprob) for tok, entry in zip(running.token_ids, completion.logprobs or [], strict=True)]
            running.versions = token_versions(running.marks, len(running.token_ids))
            running.future.set_result(running.on_finish(running, completion))
        except BaseException as e:  # noqa: BLE001 - a malformed output fails its own request
            running.future.set_exception(e)
