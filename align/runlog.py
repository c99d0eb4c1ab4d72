"""What a run writes: metrics (JSONL + TensorBoard), atomic checkpoints, plots.

Checkpoints are written into a temporary folder and renamed into place, then the ``latest``
pointer is replaced atomically: a kill at any moment leaves the last good checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from align.io_checks import disk_errors

LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoints:
    """``<run>/checkpoints/step_000123/`` folders plus a ``latest`` pointer file."""

    def __init__(self, run_dir: Path, keep_last: int) -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def save(self, step: int, write: Callable[[Path], None], state: dict[str, Any]) -> Path:
        """``write(tmp_dir)`` fills the folder (every learner writes its part); then it is published."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:06d}"
        tmp = self.root / f".tmp_{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        prev = self.latest()
        holds = f"The checkpoint before it ({prev}) is intact; --resume starts there." if prev else ""
        try:
            with disk_errors(self.root, f"checkpoint {name}", after=holds):
                tmp.mkdir()
                write(tmp)
                write_json_atomic(tmp / "state.json", {"step": step, **state})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # after disk_errors measured the free space
            raise
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        pointer_tmp = self.root / f".{LATEST}.tmp"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, self.root / LATEST)
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp_*"):
            shutil.rmtree(stale, ignore_errors=True)


def cut_jsonl(path: Path, step: int) -> None:
    """Drop the records of a per-step JSONL log past ``step`` (the checkpoint a run resumes from).

    Those steps run again after the resume and write their records again. A last line cut by a
    kill mid-write is dropped too. Written to a temporary file and renamed, like checkpoints.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
    os.replace(tmp, path)


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard,
    and to W&B / MLflow when the ``recipe``'s ``logging`` section sets them (:mod:`align.loggers`)."""

    def __init__(self, run_dir: Path, resume_from_step: int | None = None, recipe: Any = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None:
            cut_jsonl(self.path, resume_from_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides older points at steps the run writes again (all of them on a fresh start).
        purge_step = 0 if resume_from_step is None else resume_from_step + 1
        self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        self._loggers: list[Any] = []
        if recipe is not None:
            from align.loggers import open_loggers

            self._loggers = open_loggers(recipe.logging, run_dir, recipe.model_dump(mode="json"), resume_from_step is not None)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": step, "split": split, "time": time.time(), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._tb.add_scalar(f"{split}/{k}", v, step)
        for logger in self._loggers:
            logger.log(step, split, metrics)

    def close(self) -> None:
        self._file.close()
        self._tb.close()
        for logger in self._loggers:
            logger.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l] if path.exists() else []


def plot_curves(run_dir: Path, series: dict[str, tuple[str, str]], out_name: str, title: str) -> Path:
    """Plot metric curves from metrics.jsonl. ``series``: label -> (split, metric key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (split, key) in series.items():
        pts = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    out = run_dir / out_name
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
