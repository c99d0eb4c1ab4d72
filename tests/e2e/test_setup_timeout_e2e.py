"""`align sft` whose learner cannot finish set-up: it fails, naming the learner and its step.

The hang reproduced is the one users hit: DeepSpeed's CPU comm op behind torch's build lock.
Here a live process holds the lock (as a stuck builder would), so the driver's stale-lock check
passes and the learner waits on the lock inside ``Learner.join_group``; before
``cluster.setup_timeout_s`` that wait had no end.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "data.generated.envs={math: 1.0}", "data.generated.num_train=64", "data.generated.num_eval=8",
    "tokenizer.vocab_size=320", "sft.num_eval_samples_to_generate=0", "sft.max_steps=2",
]  # fmt: skip


def test_learner_stuck_in_setup_fails_naming_learner_and_step(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os, time; fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL); print(flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
    )
    try:
        holder.stdout.readline()
        env = dict(os.environ, PYTHONUNBUFFERED="1", TORCH_EXTENSIONS_DIR=str(extensions))
        args = ["sft", "--recipe", "tiny-sft", *SMALL, "cluster.num_learners=1", "cluster.setup_timeout_s=20", f"output_dir={tmp_path / 'run'}"]
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
        elapsed = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert f"pid {holder.pid}" in out  # the driver said who is building, instead of waiting itself
    assert "learner 0 (rank 0): Learner.join_group" in out and "cluster.setup_timeout_s" in out, out[-3000:]
    assert elapsed < 200
