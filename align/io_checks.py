"""Filesystem errors in words: an output folder that cannot be written, a disk that is full.

A read-only ``output_dir`` used to surface as an ``OSError`` 47 s into a job, after Ray, the
learners and vLLM had started; a full disk as DeepSpeed's ``RuntimeError: basic_ios::clear:
iostream error``, which says nothing about space. :func:`check_output_dir` runs before anything
starts; :func:`disk_errors` turns a failed write into :class:`DiskFullError` when the disk is
(nearly) full, with the path and the free space.

Limit: a C++ writer (``torch.save``) loses the errno, so "full" is judged from the free space
left after the failure (under :data:`NEARLY_FULL_BYTES`); a write that fails for another
reason on a nearly full disk is reported as a full disk too.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from align.errors import AlignError

NEARLY_FULL_BYTES = 64 << 20


class OutputDirError(AlignError, OSError):
    """``output_dir`` cannot hold the run."""


class DiskFullError(AlignError, OSError):
    """A write failed because the disk is full; the message names the path and the free space."""


def check_output_dir(path: Path) -> None:
    """Fail now, naming the folder, if ``path`` cannot be created or written.

    Writes (and removes) a probe file in ``path`` or its nearest existing parent: permission
    bits alone say nothing for root, read-only mounts or immutable folders. Creates nothing
    that stays.
    """
    path = Path(path)
    probe_in = nearest_existing(path)
    if not probe_in.is_dir():
        raise OutputDirError(f"output_dir {path}: {probe_in} is a file, not a folder; set output_dir=PATH to a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".align-write-probe-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(
            f"output_dir {path} is not writable ({probe_in}: {e.strerror or e}); "
            "set output_dir=PATH to a folder you can write, or fix its permissions"
        ) from None
    free = shutil.disk_usage(probe_in).free
    if free < NEARLY_FULL_BYTES:
        raise DiskFullError(f"output_dir {path}: only {_size(free)} free on its disk; free some space or choose another output_dir")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def is_disk_full(error: BaseException, path: Path) -> bool:
    """ENOSPC anywhere in the error's chain, or a failed write with the disk (nearly) full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(nearest_existing(path)).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (a folder a job or an install has yet to create)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@contextmanager
def disk_errors(path: Path, what: str, after: str = "") -> Iterator[None]:
    """Turn a failed write of ``what`` under ``path`` into :class:`DiskFullError` when the disk is full.

    ``after`` tells the user what still holds (e.g. which checkpoint a resume will start from).
    Other errors pass through unchanged.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, DiskFullError) or not is_disk_full(e, path):
            raise
        usage = shutil.disk_usage(nearest_existing(path))
        raise DiskFullError(
            f"No space left on device (ENOSPC) while writing {what} to {path}: {_size(usage.free)} free of "
            f"{_size(usage.total)}. Free some space (or set output_dir elsewhere) and rerun with --resume."
            + (f" {after}" if after else "")
            + f" (the write failed with: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
        ) from e
