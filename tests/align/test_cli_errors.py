"""The command line turns user errors and Ctrl-C into one message and an exit code, never a traceback."""

import os
import subprocess
import sys
import time
from pathlib import Path

from align import cli
from align.quiet import QUIET_ENV, VERBOSE_ENV

ROOT = Path(__file__).resolve().parents[2]


def _interrupt(loaded, resume):
    raise KeyboardInterrupt


def _keep_env(monkeypatch) -> None:
    """cli.main sets the quiet-log switches in os.environ; restore them after the test."""
    for key in (*QUIET_ENV, VERBOSE_ENV):
        monkeypatch.delenv(key, raising=False)


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys) -> None:
    _keep_env(monkeypatch)
    monkeypatch.setitem(cli.JOBS, "sft", _interrupt)
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000004").mkdir(parents=True)
    (run / "checkpoints" / "step_000004" / "state.json").write_text('{"step": 4}')
    (run / "checkpoints" / "latest").write_text("step_000004")
    rc = cli.main(["sft", "--recipe", "tiny-sft", f"output_dir={run}", "sft.max_steps=8"])
    err = capsys.readouterr().err
    assert rc == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert str(run / "checkpoints" / "step_000004") in err.replace("\n", "")
    assert f"align sft --recipe tiny-sft output_dir={run} sft.max_steps=8 --resume" in err.replace("\n", "")


def test_a_missing_data_folder_exits_2_in_seconds_naming_it(tmp_path) -> None:
    """The whole CLI as a user runs it: exit 2, one message, well before Ray or learners would start."""
    (tmp_path / "rm").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "align.cli", "rm", "--recipe", "tiny-rm", "data.path=rm/prefs_hf_typo", "init_from=null",
                        f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    elapsed = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    assert "rm/prefs_hf_typo: no such local file or folder" in p.stderr and "Traceback" not in p.stderr
    assert "Started a local Ray instance" not in p.stdout + p.stderr
    assert elapsed < 60, elapsed
