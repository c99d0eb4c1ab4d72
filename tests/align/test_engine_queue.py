"""``EngineQueue.sync_seconds``: a synchronous step's weight sync is counted once.

Loads of 0.3 s: a count of twice the load (0.6 s) is still told apart with 0.25 s to spare for a
busy machine's sleeps and scheduling (loads of 0.05 s left 0.04 s).
"""

from __future__ import annotations

import time

from align.algorithms.rl.schedule import EngineQueue


def _timed_sync(queue: EngineQueue, load_s: float) -> float:
    t0 = time.perf_counter()
    queue.sync(lambda job: job(), lambda: time.sleep(load_s), 1)
    return queue.sync_seconds(time.perf_counter() - t0)


def test_inline_sync_is_counted_once() -> None:
    queue = EngineQueue(threaded=False, version=0)
    t = _timed_sync(queue, 0.3)
    assert 0.3 <= t < 0.55  # was 2x the load: the wait and the job's own timing, both added


def test_threaded_sync_reports_the_last_finished_load() -> None:
    queue = EngineQueue(threaded=True, version=0)
    try:
        first = _timed_sync(queue, 0.3)  # queued: the thread has not finished any load yet
        time.sleep(0.45)
        second = _timed_sync(queue, 0.0)  # queued again: the first load's time is the one known
        assert first < 0.15 and 0.3 <= second < 0.55
    finally:
        queue.close()
