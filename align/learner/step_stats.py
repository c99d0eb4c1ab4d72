"""What one learner step adds up, kept on the device until the step ends; and a profile of a chosen step.

On a GPU every ``.item()`` or ``float(tensor)`` waits until the GPU has finished all queued work,
so the host cannot queue the next micro-batch's kernels while the GPU runs this one. The learner
therefore sums its per-micro-batch loss and metrics as tensors (:class:`DeviceTotals`) and reads
them back once, at the end of the step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from align.config.sections import ProfileConfig


class DeviceTotals:
    """Per-key sums of floats and 0-d tensors; tensors are summed on their device, in float64."""

    def __init__(self) -> None:
        self._sums: dict[str, float | torch.Tensor] = {}

    def add(self, key: str, value: float | torch.Tensor) -> None:
        v = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
        self._sums[key] = self._sums[key] + v if key in self._sums else v

    def result(self) -> dict[str, float]:
        """Every sum as a float: all tensor sums come back in one device-to-host copy."""
        out = {k: v for k, v in self._sums.items() if isinstance(v, float)}
        keys = [k for k, v in self._sums.items() if isinstance(v, torch.Tensor)]
        if keys:
            first = self._sums[keys[0]]
            assert isinstance(first, torch.Tensor)
            stacked = torch.stack([self._sums[k].reshape(()).to(first.device) for k in keys])  # type: ignore[union-attr]
            out.update(zip(keys, stacked.tolist()))
        return out


@contextmanager
def step_profile(cfg: ProfileConfig | None, rank: int, step: int) -> Iterator[None]:
    """Record train step ``step`` (1-based) with torch.profiler when ``learner.profile`` names it.

    Writes ``learner{rank}_step{step}.txt`` (operators by self device time, or CPU time on CPU)
    and ``.json.gz`` (a Chrome/Perfetto trace) into ``learner.profile.dir``, and logs the step's
    wall time against the device's kernel time: the gap is time the GPU sat idle.
    """
    if cfg is None or step not in cfg.steps:
        yield
        return
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out = Path(cfg.dir)
    out.mkdir(parents=True, exist_ok=True)
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    stem = out / f"learner{rank}_step{step}"
    stem.with_suffix(".txt").write_text(events.table(sort_by=sort, row_limit=50))
    prof.export_chrome_trace(str(stem) + ".json.gz")
    # The device's kernels and copies, each counted once (the operator rows above also carry them).
    busy = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6 if cuda else float("nan")
    print(f"learner {rank}: profiled step {step}: wall {wall:.3f} s, device kernels {busy:.3f} s"
          f" ({busy / wall:.0%} busy); {stem}.txt", flush=True)  # fmt: skip
