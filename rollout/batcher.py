"""The batcher: concurrent episodes' generation requests joined into batched engine calls.

For callers that hand the episodes a batch ``GenerateFn`` (the synchronous RL driver's
``RolloutGroup.generate``, evaluation, tests that count calls). Episodes given a per-request
``RequestFn`` (``VLLMEngine.generate_one``, ``RolloutGroup.generate_one``) need no batcher:
the engine batches whatever runs at each decoding step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rollout.types import GenerateFn, GenOutput, GenRequest


class Batcher:
    """Collects the generation requests of concurrent episodes into batched engine calls.

    Requests queued in the same event-loop tick go out in one call. At most one call is in
    flight (a Ray generate function shards each call across engines itself); requests that
    arrive meanwhile wait and go out together as soon as it returns, joined by those of
    episodes that resume on its results.

    A failed call fails every request in it, and every request after it: an engine that
    raised is not trusted again (rebuild it and make a new Batcher).
    """

    def __init__(self, generate_fn: GenerateFn) -> None:
        self._generate_fn = generate_fn
        self._pending: list[tuple[GenRequest, asyncio.Future[GenOutput]]] = []
        self._scheduled = False
        self._in_flight: asyncio.Task[None] | None = None
        self.num_calls = 0
        self.num_requests = 0
        self.largest_batch = 0
        self.error: BaseException | None = None

    async def generate(self, request: GenRequest) -> GenOutput:
        if self.error is not None:
            raise RuntimeError(f"an earlier engine call failed: {self.error!r}") from self.error
        future: asyncio.Future[GenOutput] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_call)

    def _start_call(self) -> None:
        self._scheduled = False
        if self._in_flight is not None:  # it reschedules when it returns
            return
        batch = [(req, fut) for req, fut in self._pending if not fut.done()]  # drop cancelled episodes
        self._pending = []
        if not batch:
            return
        self.num_calls += 1
        self.num_requests += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        self._in_flight = asyncio.get_running_loop().create_task(self._call(batch))

    async def _call(self, batch: list[tuple[GenRequest, asyncio.Future[GenOutput]]]) -> None:
        try:
            outputs = await self._generate_fn([req for req, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the generate function returned {len(outputs)} outputs for {len(batch)} requests")
            for (_, future), output in zip(batch, outputs):
                if not future.done():
                    future.set_result(output)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting episode
            self.error = e
            waiting, self._pending = batch + self._pending, []
            for _, future in waiting:
                if not future.done():
                    future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._in_flight = None
            if self._pending:
                self._schedule()


def engine_generate_fn(engine: Any) -> GenerateFn:
    """The in-process ``GenerateFn``: ``engine.generate`` in a worker thread, so the loop stays live."""

    async def generate(requests: list[GenRequest]) -> list[GenOutput]:
        return await asyncio.to_thread(engine.generate, requests)

    return generate
