"""The start-up breakdown line (align/startup.py)."""

from __future__ import annotations

import gc
import re
import time
from concurrent.futures import Future

from align.startup import StartupClock, imports_without_gc


class _Ref:
    """A stand-in for a Ray ObjectRef: only ``future()``, which the clock uses."""

    def __init__(self) -> None:
        self.f: Future[None] = Future()

    def future(self) -> Future[None]:
        return self.f


def _numbers(line: str) -> dict[str, float]:
    return {k.strip(): float(v) for k, v in re.findall(r"([a-z0-9 -]+?) (\d+\.\d)", line.split(": ", 1)[1])}


def test_laps_add_up_and_parts_are_timed_separately() -> None:
    clock = StartupClock()
    clock.lap("imports")
    time.sleep(0.2)
    clock.lap("data")
    ref = _Ref()
    clock.watch("learners set-up", [ref])
    with clock.part("engines"):
        time.sleep(0.3)
    time.sleep(0.2)
    ref.f.set_result(None)  # the learners finish 0.2 s after the engines
    clock.lap("actors")
    time.sleep(0.1)
    line = clock.line(first_step_s=0.05)

    total = float(re.match(r"start-up (\d+\.\d) s: ", line).group(1))  # type: ignore[union-attr]
    n = _numbers(line)
    assert 0.15 <= n["data"] <= 0.4
    assert 0.45 <= n["actors"] <= 0.7
    assert 0.25 <= n["engines"] <= 0.45 and 0.45 <= n["learners set-up"] <= 0.7
    assert n["first step"] == 0.1 or n["first step"] == 0.0  # printed with one decimal
    assert "other" in n and 0.0 <= n["other"] <= 0.2  # the time before the step in the last lap
    laps = sum(v for k, v in n.items() if k not in ("engines", "learners set-up"))
    assert abs(laps - total) <= 0.1 * len(n)  # each number is rounded to 0.1
    assert re.search(r"actors \d+\.\d \(learners set-up \d+\.\d \| engines \d+\.\d\)", line)


def test_watch_of_in_process_results_is_done_at_once() -> None:
    clock = StartupClock()
    clock.watch("learners set-up", [None, None])
    time.sleep(0.2)
    clock.lap("actors")
    n = _numbers(clock.line(0.0))
    assert n["learners set-up"] == 0.0 and n["actors"] >= 0.2


def test_a_later_clock_in_the_process_starts_when_it_is_made() -> None:
    StartupClock()  # the process's first (or a later) clock
    time.sleep(0.3)
    clock = StartupClock()
    assert time.time() - clock.launch < 0.2


def test_imports_without_gc_pauses_the_collector_and_freezes_what_the_block_made() -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with imports_without_gc():
            assert not gc.isenabled()
            with imports_without_gc():  # nested: the outer block still owns the collector
                made = [[i] for i in range(1000)]
            assert not gc.isenabled()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)  # kept out of later collections
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
