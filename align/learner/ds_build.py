"""DeepSpeed's CPU comm op: one per-user build, made up front, and a stale build lock caught.

On CPU, DeepSpeed JIT-compiles its shared-memory collectives (``deepspeed_shm_comm``) the first
time a process joins its process group: 1-3 minutes of silence. torch builds it under a plain
lock file (``torch.utils.file_baton.FileBaton``): the builder creates ``<build dir>/lock``, keeps it
open while it builds and deletes it after; every other process polls until the file is gone,
with no timeout. A builder killed midway (kill -9, the OOM killer, a CI timeout) leaves the file,
and from then on every learner start waits on it forever. torch takes that lock on every start,
not only on the first build, so a finished build does not help.

What align does about it:

- the build lives in one per-user cache, ``$TORCH_EXTENSIONS_DIR`` if set, else a folder per
  Python environment under ``~/.cache/align/torch_extensions`` (``$XDG_CACHE_HOME``), whichever
  way align is started (:func:`use_align_cache`, called by the CLI and by ``init_ray`` so Ray
  actors get the same folder);
- ``make install`` builds it (``python -m align.learner.ds_build``), and the driver builds it
  before starting CPU learners when it is missing, saying so (:func:`prepare_cpu_learners`);
- a lock that no live process holds open is reported with the command that removes it
  (:class:`StaleBuildLock`, exit 2), before any learner starts.

Limits: a lock's holder is looked up in ``/proc`` (Linux; elsewhere the check is skipped), so a
builder on another machine that shares the cache folder (an NFS home) is not seen and its lock
is reported as stale. The driver builds for its own machine only: learners on other nodes still
build there, bounded by ``cluster.setup_timeout_s``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from align.errors import AlignError

OP_NAME = "deepspeed_shm_comm"


class StaleBuildLock(AlignError, RuntimeError):
    """A torch extension build lock that nothing holds: every learner start would wait on it forever."""


def default_extensions_dir() -> Path:
    """``<cache>/align/torch_extensions/<python>-<environment>``: one build per Python environment.

    torch rebuilds an op whose build file changed, and the build file names the sources by their
    path inside the environment's DeepSpeed. Two environments that shared one folder (a second
    clone's ``.venv``, a conda env beside a venv) therefore each rebuilt it, for about 90 s, in
    their next job's learner set-up, after ``make install`` had seen a built op and skipped it.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    environment = hashlib.sha1(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    return Path(cache) / "align" / "torch_extensions" / f"{sys.implementation.cache_tag}-{environment}"


def use_align_cache() -> Path:
    """Point ``TORCH_EXTENSIONS_DIR`` at align's per-user cache unless the user set it; returns it."""
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(default_extensions_dir())
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def build_dir() -> Path:
    """Where torch builds the op: ``<TORCH_EXTENSIONS_DIR>/deepspeed_shm_comm``, torch's rule
    (``torch.utils.cpp_extension._get_build_directory``) when that variable is set, as
    :func:`use_align_cache` makes sure. Computed here, not asked of torch: every job checks the
    build lock before it starts Ray (``align.cli``), and importing torch would delay Ray by 1-2 s.
    Created if missing, as torch does."""
    directory = use_align_cache() / OP_NAME
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def lock_holders(lock: Path) -> list[int] | None:
    """Pids of this machine's processes that hold ``lock`` open (a FileBaton's builder does);
    None where that cannot be known (no ``/proc``)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    target = str(lock.resolve())
    pids = []
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:  # another user's process, or one that just ended
            continue
    return pids


def check_lock(directory: Path | None = None, recheck_s: float = 1.0) -> list[int]:
    """Pids building the op now (empty: no build under way, or holders unknown); raise
    :class:`StaleBuildLock` if the op's build lock exists and no process holds it.

    A builder closes the lock a moment before deleting it, so an unheld lock is looked at again
    after ``recheck_s`` before it is called stale.
    """
    lock = (directory or build_dir()) / "lock"
    for attempt in range(2):
        if not lock.exists():
            return []
        holders = lock_holders(lock)
        if holders is None or holders:
            return holders or []
        if attempt == 0:
            time.sleep(recheck_s)
    age_min = (time.time() - lock.stat().st_mtime) / 60
    raise StaleBuildLock(
        f"a stale build lock blocks DeepSpeed's CPU comm op: {lock} exists (since {age_min:.0f} min ago) but no "
        "process holds it: a build was killed midway, and every learner would wait on it forever. "
        f"Remove it, then rerun: rm {lock}"
    )


def import_deepspeed() -> ModuleType:
    """``import deepspeed``, without the MLflow import DeepSpeed makes for its autotuner.

    ``deepspeed.autotuning.autotuner`` tries ``import mlflow`` when DeepSpeed is imported, to log
    autotuning runs, which align never starts. Where mlflow is installed (align's optional MLflow
    logger, ``pip install align[loggers]``), that import (mlflow, pandas, fastapi) took 1.1-1.2 s
    of CPU of the 1.4-1.5 s DeepSpeed's import costs after torch, in every learner process on the
    way to its first step (2 cores, load 6). A ``None`` entry in ``sys.modules`` makes that one
    import fail (Python's documented way to block an import; DeepSpeed catches it), and it is
    removed after, so align's own MLflow logger still imports mlflow.
    """
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # type: ignore[assignment]
    try:
        import deepspeed
    finally:
        if hide and "mlflow" in sys.modules and sys.modules["mlflow"] is None:
            del sys.modules["mlflow"]
    return deepspeed


def is_built(directory: Path | None = None) -> bool:
    return ((directory or build_dir()) / f"{OP_NAME}.so").is_file()


def build(say: Callable[[str], None]) -> None:
    """Compile the op into :func:`build_dir` in this process (no-op when built); needs a CPU-only torch
    view of DeepSpeed (its accelerator must be the CPU one)."""
    directory = build_dir()
    builders = check_lock(directory)
    if builders:
        # Waiting here would have no deadline; the learners wait for it under cluster.setup_timeout_s.
        say(f"another process (pid {', '.join(map(str, builders))}) is building DeepSpeed's CPU comm op in {directory}; "
            "the learners will wait for it")  # fmt: skip
        return
    if is_built(directory):
        return
    import_deepspeed()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        return
    say(f"building DeepSpeed's CPU comm op (first run only, about 2 min) in {directory} ...")
    t0 = time.perf_counter()
    builder.load(verbose=False)
    say(f"built DeepSpeed's CPU comm op in {time.perf_counter() - t0:.0f} s")


def prepare_cpu_learners(say: Callable[[str], None]) -> None:
    """Before CPU learners start: refuse a stale lock, and build the op here if it is missing.

    Skipped where this process sees a GPU: DeepSpeed would pick its CUDA accelerator here while the
    learners (given no GPU) pick the CPU one; they then build it themselves.
    """
    import torch

    if torch.cuda.is_available():
        return
    build(say)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":  # `make install`: build it now, not in the first job
    try:
        prepare_cpu_learners(_say)
    except StaleBuildLock as e:
        _say(f"error: {e}")
        sys.exit(2)
    _say(f"DeepSpeed's CPU comm op: {build_dir()}")
