"""When rollouts run: in line with the learner update (on-policy) or one step ahead (overlap).

The rollout engines do two kinds of work for the driver: generate a step's trajectories, and
load new weights. Both go through one :class:`EngineQueue`, which runs them strictly in the
order they were submitted. The order alone then fixes which weights generated which step:

- on-policy (``depth = 0``): rollout of step t, update t, weight sync, rollout of step t+1, ...
  all in the driver's thread (the queue runs each job as it is submitted);
- overlap (``depth = k >= 1``): the rollout of step t+k is submitted *before* the update of
  step t, after the sync of the weights of update t-1. It runs on a background thread while the
  learners update, on weights exactly k updates older than the learner that trains on it. The
  next weight sync waits its turn behind that rollout, so a trajectory never mixes weights.

A thread, not a process, is enough: the work is Ray calls (and asyncio over them) that wait on
the engine actors, so the driver's thread is free to drive the learners meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from align.config.schema import RLRecipe, RolloutConfig

T = TypeVar("T")


class EngineQueue:
    """Rollout-engine jobs in submission order: inline (``threaded=False``) or on one background thread.

    ``version`` counts the learner updates in the weights the engines hold; a rollout job reads
    it when it starts (``queue.version``), so each step knows its staleness.
    """

    def __init__(self, threaded: bool, version: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout") if threaded else None
        self.version = version
        self.last_sync_s = 0.0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever reads the future, as with the thread
            done.set_exception(e)
        return done

    def sync(self, load: Callable[[Any], None], weights: Any, version: int) -> Future[None]:
        """Load ``weights`` (after update ``version``) into the engines once earlier jobs are done."""

        def job() -> None:
            t0 = time.perf_counter()
            load(weights)
            self.version = version
            self.last_sync_s = time.perf_counter() - t0

        return self.submit(job)

    def sync_seconds(self, waited: float) -> float:
        """A step's weight-sync time, from what its caller spent in :meth:`sync` (``waited``).

        Inline, that is the load itself. On the background thread the caller only queued the load,
        so the last one the thread finished is added (an earlier bug added it inline too, which
        reported every synchronous sync twice)."""
        return waited + (self.last_sync_s if self._pool is not None else 0.0)

    def close(self) -> None:
        """Drop jobs not started yet and wait for the running one (a rollout cannot be cut short)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def engine_max_num_seqs(r: RLRecipe) -> RolloutConfig:
    """``r.rollout`` with ``max_num_seqs`` resolved for GPU engines.

    Unset on GPUs, it becomes the sequences one RL step gives an engine (``prompts_per_step x
    generations_per_prompt``, times ``1 + max_staleness`` in async mode, over the engines), at most
    vLLM's default of 256. A hybrid engine then asks for no more Mamba cache blocks than it decodes
    at once, and vLLM captures CUDA graphs only up to that batch. CPU engines keep vLLM's default.
    """
    ro, g = r.rollout, r.grpo
    if ro.max_num_seqs is not None or r.cluster.gpus_per_rollout_engine <= 0:
        return ro
    per_step = g.prompts_per_step * g.generations_per_prompt * (1 + g.max_staleness if g.mode == "async" else 1)
    return ro.model_copy(update={"max_num_seqs": min(256, -(-per_step // r.cluster.num_rollout_engines))})
