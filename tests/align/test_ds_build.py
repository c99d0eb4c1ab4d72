"""DeepSpeed's CPU comm op: the per-user cache folder, and a stale build lock refused in seconds."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.cli import main
from align.learner import ds_build


def test_cache_defaults_to_align_per_user_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = ds_build.use_align_cache()
    assert folder.parent == tmp_path / "align" / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(folder)
    assert ds_build.build_dir() == folder / "deepspeed_shm_comm"


def test_each_python_environment_builds_in_its_own_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second venv's DeepSpeed has its sources elsewhere: sharing one build folder made each rebuild it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = ds_build.default_extensions_dir()
    assert ds_build.default_extensions_dir() == here  # stable: the same environment finds its build
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "other-venv"))
    assert ds_build.default_extensions_dir() != here
    assert ds_build.default_extensions_dir().parent == here.parent


def test_a_users_folder_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert ds_build.use_align_cache() == tmp_path / "mine"


@pytest.fixture
def extensions_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return ds_build.build_dir()


def test_stale_lock_is_reported_with_the_command_that_clears_it(extensions_dir: Path) -> None:
    lock = extensions_dir / "lock"
    lock.touch()  # what a killed build leaves: the file, no process holding it
    with pytest.raises(ds_build.StaleBuildLock, match=f"rm {lock}"):
        ds_build.check_lock(recheck_s=0.0)


def test_a_lock_held_by_a_live_builder_is_not_stale(extensions_dir: Path) -> None:
    lock = extensions_dir / "lock"
    # torch's FileBaton: O_CREAT | O_EXCL, the fd kept open until the build ends.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os, time; fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL); print(flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        holder.stdout.readline()
        assert ds_build.check_lock(recheck_s=0.0) == [holder.pid]
        said: list[str] = []
        ds_build.build(said.append)  # must not wait on the baton: it names the builder and returns
        assert str(holder.pid) in said[0]
    finally:
        holder.kill()
        holder.wait()


def test_cli_refuses_a_stale_lock_in_seconds(extensions_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = extensions_dir / "lock"
    lock.touch()
    t0 = time.monotonic()
    assert main(["sft", "--recipe", "tiny-sft"]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "stale build lock" in err and f"rm {lock}" in err.replace("\n", "")


@pytest.mark.slow
def test_a_first_build_says_what_it_is_doing_and_a_second_run_is_silent(tmp_path: Path) -> None:
    """`make install`'s step in an empty cache: a line before the 1-3 minute compile and one after;
    then nothing to do. (The minutes of silence at the first learner start, item 1 of issue 21.)"""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.run([sys.executable, "-m", "align.learner.ds_build"], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stderr.splitlines()
    before = next(i for i, l in enumerate(lines) if l.startswith("building DeepSpeed's CPU comm op (first run only"))
    after = next(i for i, l in enumerate(lines) if l.startswith("built DeepSpeed's CPU comm op in"))
    assert before < after and (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "align.learner.ds_build"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "building" not in second.stderr and time.monotonic() - t0 < 60, second.stderr[-2000:]


def test_deepspeed_imports_without_mlflow_and_mlflow_still_imports_after() -> None:
    """DeepSpeed's autotuner imports mlflow when DeepSpeed is imported (1.1-1.2 s of CPU in every
    learner process); import_deepspeed skips that import only. A fresh process: nothing imported yet."""
    pytest.importorskip("mlflow")
    code = (
        "import sys\n"
        "from align.learner.ds_build import import_deepspeed\n"
        "ds = import_deepspeed()\n"
        "from deepspeed.autotuning import autotuner\n"
        "assert ds is sys.modules['deepspeed'] and not autotuner.has_mlflow, 'DeepSpeed imported mlflow'\n"
        "assert 'mlflow' not in sys.modules and 'pandas' not in sys.modules, sorted(m for m in sys.modules if 'mlflow' in m)[:5]\n"
        "import mlflow\n"  # align's MLflow logger can still import it
        "print('ok', mlflow.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok mlflow"), proc.stderr[-2000:]
