"""align.disk_check: `make install` stops at once, naming the folder, when the disk is too full."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from align import disk_check

Usage = namedtuple("Usage", "total used free")
ROOT = Path(__file__).resolve().parents[2]


def test_a_full_disk_exits_2_naming_the_folder_and_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * 2**30, 99.7 * 2**30, 0.3 * 2**30))
    venv = tmp_path / "not-yet" / ".venv"  # the venv does not exist before the install: its parent is measured
    assert disk_check.main([str(venv)]) == 2
    err = capsys.readouterr().err
    assert f"{venv}: 0.3 GiB free, the install needs about 5.5 GiB" in err
    assert "TMPDIR" in err


def test_enough_room_passes_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * 2**30, 90 * 2**30, 10 * 2**30))
    assert disk_check.main([str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_one_line_per_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 9 * 2**30, 1 * 2**30))
    assert disk_check.short_paths([str(tmp_path), str(tmp_path / "a" / "b")], 6) == [f"{tmp_path}: 1.0 GiB free, the install needs about 6 GiB"]


def test_runs_on_the_bare_interpreter_before_the_venv_exists() -> None:
    # -S: no site-packages, as when the Makefile calls the system python3 on a fresh machine.
    done = subprocess.run([sys.executable, "-S", "-m", "align.disk_check", ".venv", "--need-gib", "1e9"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert ".venv:" in done.stderr and "GiB free" in done.stderr
