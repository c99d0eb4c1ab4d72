"""Run folders: a full disk is named and leaves the last checkpoint resumable; resume cuts per-step logs,
and metrics.jsonl and TensorBoard agree after a resume."""

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from align.io_checks import DiskFullError, OutputDirError, check_output_dir
from align.runlog import Checkpoints, MetricsLog, cut_jsonl, read_metrics


def _write_weights(nbytes: int):
    def write(folder: Path) -> None:
        torch.save({"w": torch.zeros(nbytes // 4)}, folder / "model.pt")

    return write


def test_enospc_during_a_checkpoint_is_named_and_the_one_before_still_resumes(tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, keep_last=2)
    ckpts.save(5, _write_weights(1024), {"plan": {"seed": 0}})

    def full(folder: Path) -> None:
        (folder / "part").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.pt"))

    with pytest.raises(DiskFullError) as info:
        ckpts.save(10, full, {"plan": {"seed": 0}})
    msg = str(info.value)
    assert "No space left on device (ENOSPC)" in msg and str(ckpts.root) in msg and "free of" in msg
    assert "step_000005" in msg and "--resume" in msg
    latest = ckpts.latest()
    assert latest is not None and latest.name == "step_000005"
    assert json.loads((latest / "state.json").read_text())["step"] == 5
    assert torch.load(latest / "model.pt")["w"].numel() == 256
    assert not list(ckpts.root.glob(".tmp_*"))  # the half-written folder is gone


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs: a real full disk, where torch.save fails without an errno (C++ iostream)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC test covers the message")
    yield mnt
    subprocess.run(["umount", "--lazy", str(mnt)], check=False)


def test_a_real_full_disk_is_named_from_the_free_space(small_disk: Path) -> None:
    ckpts = Checkpoints(small_disk / "run", keep_last=2)
    ckpts.save(5, _write_weights(512 << 10), {})
    with pytest.raises(DiskFullError) as info:
        ckpts.save(10, _write_weights(4 << 20), {})
    msg = str(info.value)
    del info  # its traceback holds torch.save's open file, and with it the deleted file's blocks
    gc.collect()
    assert "ENOSPC" in msg and str(small_disk / "run" / "checkpoints") in msg and "0 B free" in msg
    assert ckpts.latest() is not None and ckpts.latest().name == "step_000005"
    assert torch.load(ckpts.latest() / "model.pt")["w"].numel() == (512 << 10) // 4
    assert shutil.disk_usage(small_disk).free > 1 << 20  # the failed checkpoint's bytes were freed


def test_other_write_errors_pass_through(tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, keep_last=2)

    def broken(folder: Path) -> None:
        raise ValueError("a bug, not a disk")

    with pytest.raises(ValueError, match="a bug"):
        ckpts.save(1, broken, {})


def test_output_dir_that_is_a_file_or_unwritable_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        check_output_dir(afile / "run")
    check_output_dir(tmp_path / "new" / "run")  # a folder that can be created is fine
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".align-write-probe-*"))


def test_resume_cuts_every_per_step_log_back_to_the_checkpoint(tmp_path: Path) -> None:
    traj = tmp_path / "trajectories.jsonl"
    traj.write_text("".join(json.dumps({"step": s, "task": f"t{s}-{k}"}) + "\n" for s in range(1, 5) for k in range(2)) + '{"step": 4, "ta')
    cut_jsonl(traj, 3)
    assert [json.loads(l)["step"] for l in traj.read_text().splitlines()] == [1, 1, 2, 2, 3, 3]

    log = MetricsLog(tmp_path)
    for s in range(1, 5):
        log.log(s, "train", {"loss": float(s)})
    log.close()
    log = MetricsLog(tmp_path, resume_from_step=2)
    log.log(3, "train", {"loss": 30.0})
    log.close()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]


@pytest.fixture
def read_only_dir(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the folder immutable instead
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root and chattr +i is not available: cannot make a folder read-only")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_read_only_output_dir_exits_2_in_seconds_before_ray_starts(read_only_dir: Path) -> None:
    """Through the CLI in a fresh interpreter; `ray` must not even be imported by then."""
    code = (
        "import sys, time; from align.cli import main; t = time.perf_counter();"
        f"rc = main(['sft', '--recipe', 'tiny-sft', 'output_dir={read_only_dir / 'run'}']);"
        "print('ray imported:', 'ray' in sys.modules, 'seconds:', round(time.perf_counter() - t, 2)); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"output_dir {read_only_dir / 'run'} is not writable" in proc.stderr
    assert "ray imported: False" in proc.stdout
    assert elapsed < 10, elapsed


def _tensorboard_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _write(run_dir: Path, steps: range, value: float, resume_from_step: int | None) -> None:
    # TensorBoard reads event files in name order: "<time s>.<host>.<pid>.<writer number>". Two
    # writers of one second in one process then sort by writer number as text, and after the
    # process's 10th writer (other tests make them) "10" sorts before "9". Separate runs are
    # separate processes, seconds apart: start each write in a new second, as they would.
    time.sleep(1 - time.time() % 1)
    log = MetricsLog(run_dir, resume_from_step=resume_from_step)
    for step in steps:
        log.log(step, "train", {"loss": value + step})
    log.close()


def test_resume_shows_each_step_once_in_tensorboard(tmp_path: Path) -> None:
    _write(tmp_path, range(1, 6), 0.0, resume_from_step=None)
    _write(tmp_path, range(4, 6), 100.0, resume_from_step=3)  # the checkpoint was at step 3
    points = _tensorboard_points(tmp_path, "train/loss")
    assert points == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0)]
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == points


def test_fresh_run_hides_an_earlier_runs_points(tmp_path: Path) -> None:
    _write(tmp_path, range(1, 6), 0.0, resume_from_step=None)
    _write(tmp_path, range(1, 4), 100.0, resume_from_step=None)
    assert _tensorboard_points(tmp_path, "train/loss") == [(1, 101.0), (2, 102.0), (3, 103.0)]
