"""``EngineQueue.sync_seconds``: a synchronous step's weight sync is counted once."""

from __future__ import annotations

import time

from align.algorithms.rl.schedule import EngineQueue


def _timed_sync(queue: EngineQueue, load_s: float) -> float:
    t0 = time.perf_counter()
    queue.sync(lambda job: job(), lambda: time.sleep(load_s), 1)
    return queue.sync_seconds(time.perf_counter() - t0)


def test_inline_sync_is_counted_once() -> None:
    queue = EngineQueue(threaded=False, version=0)
    t = _timed_sync(queue, 0.05)
    assert 0.05 <= t < 0.09  # was 2x the load: the wait and the job's own timing, both added


def test_threaded_sync_reports_the_last_finished_load() -> None:
    queue = EngineQueue(threaded=True, version=0)
    try:
        first = _timed_sync(queue, 0.05)  # queued: the thread has not finished any load yet
        time.sleep(0.1)
        second = _timed_sync(queue, 0.0)  # queued again: the first load's time is the one known
        assert first < 0.03 and 0.05 <= second < 0.09
    finally:
        queue.close()
