"""Where a job's start-up goes: one line, printed when its first step ends.

    start-up 31.2 s: imports 4.1, data 0.6, ray 3.0, actors 14.5 (learners 12.5 | engines 14.0), eval 0.2, first step 3.2

Start-up runs from the process's launch (its OS start time, so interpreter start and imports
count) to the end of the first step; for a later job in the same process (a pipeline's next
stage), from when that job's clock was made. Each :meth:`StartupClock.lap` is a serial phase, from the
previous lap's end (the launch for the first) to now, so the laps add up to the total. Inside a
lap, parts that ran at the same time (the learners and the rollout engines build as Ray actors
in parallel) are shown in parentheses, joined with ``|``, each from its own start to its end; a
part that began before its lap (an RL job's actors spawn during its imports) also says when,
counted from the launch ("engines 14.0 from 3.1 s").
Actor parts are timed from the driver: a learner group is done when its last set-up call's
result is ready (:meth:`StartupClock.watch`).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psutil


_launched = False  # a clock has been made in this process (which then owns the launch)


class StartupClock:
    """Serial laps, and parallel parts within them, of one job's start-up."""

    def __init__(self) -> None:
        global _launched
        self.launch = time.time() if _launched else psutil.Process().create_time()  # the OS's start time of this process
        _launched = True
        self._last = self.launch
        self._laps: list[tuple[str, float, str]] = []  # name, seconds, the parallel parts in it
        self._parts: dict[str, list[float | None]] = {}  # name -> [start, end or None]
        self._lock = threading.Lock()

    def lap(self, name: str) -> None:
        """End the serial phase ``name`` now; it began where the previous lap ended."""
        now = time.time()
        parts = " | ".join(f"{k} {(e if e is not None else now) - s:.1f}" + (f" from {s - self.launch:.1f} s" if s < self._last else "")  # type: ignore[operator]
                           for k, (s, e) in self._parts.items())  # fmt: skip
        self._laps.append((name, now - self._last, parts))
        self._last, self._parts = now, {}

    @contextmanager
    def part(self, name: str, since: float | None = None) -> Iterator[None]:
        """Time the block as a part of the current lap; ``since``: the part began then (before the block, even before the lap)."""
        self._parts[name] = [time.time() if since is None else since, None]
        try:
            yield
        finally:
            self._parts[name][1] = time.time()

    def watch(self, name: str, refs: Sequence[Any]) -> None:
        """A part of the current lap that starts now and ends when every Ray ``ObjectRef`` in ``refs`` is ready.

        Other values (results of in-process stand-ins) are already done.
        """
        span: list[float | None] = [time.time(), None]
        self._parts[name] = span
        futures = [r.future() for r in refs if hasattr(r, "future")]
        left = [len(futures)]
        if not futures:
            span[1] = span[0]

        def done(_: Any) -> None:
            with self._lock:
                left[0] -= 1
                if left[0] == 0:
                    span[1] = time.time()

        for f in futures:
            f.add_done_callback(done)

    def line(self, first_step_s: float) -> str:
        """The breakdown; call it when the first step has just ended (it is the last lap's end)."""
        self.lap("first step")
        laps = self._laps[:-1] + [("first step", first_step_s, "")]
        other = time.time() - self.launch - sum(s for _, s, _ in laps)  # the last lap minus the step itself
        if other >= 0.05:
            laps.insert(-1, ("other", other, ""))
        text = ", ".join(f"{name} {s:.1f}" + (f" ({parts})" if parts else "") for name, s, parts in laps)
        return f"start-up {time.time() - self.launch:.1f} s: {text}"


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Run a block of heavy imports (torch, transformers, vLLM) with the cyclic collector paused, then freeze what they made.

    Those imports allocate millions of long-lived objects, and the collector's automatic full
    passes over them took 15-20% of the import time (the GRPO driver's imports: 3.9 s of CPU
    with it, 3.2-3.35 s without). Modules live as long as the process, so what the block made
    is frozen (kept out of every later collection, as vLLM does after building an engine)
    rather than collected; the few cycles the imports left as garbage are kept too. Nested
    blocks leave the collector to the outermost one.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
