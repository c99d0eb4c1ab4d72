"""`align sft` as a user runs it: a two-node Ray cluster, kill -9 and resume, a malformed row."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALIGN = [sys.executable, "-m", "align.cli"]
# A short run: math demonstrations only, a small tokenizer, few steps.
SMALL = [
    "data.generated.envs={math: 1.0}", "data.generated.num_train=256", "data.generated.num_eval=32",
    "tokenizer.vocab_size=320", "learner.micro_batch_size_per_device=4", "learner.warmup_steps=2",
    "sft.num_eval_samples_to_generate=0", "sft.eval_every_steps=100",
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled", **extra)
    return env


def _run(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(ALIGN + args, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=ROOT)


def _train_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_malformed_row_fails_with_row_index_and_reason(tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    data.write_text("\n".join(json.dumps(r) for r in [good, good, bad, good]) + "\n")
    out = tmp_path / "run"
    proc = _run(["sft", "--recipe", "tiny-sft", f"data.path={data}", f"output_dir={out}", "cluster.num_learners=1"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "row 2" in proc.stderr and "chat.jsonl" in proc.stderr and "robot" in proc.stderr


def test_resume_after_kill_9_reproduces_uninterrupted_losses(tmp_path: Path) -> None:
    common = ["sft", "--recipe", "tiny-sft", *SMALL, "cluster.num_learners=1", "sft.max_steps=14", "checkpoint.every_steps=5"]
    full = _run([*common, f"output_dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-3000:]
    expected = _train_losses(tmp_path / "full")
    assert sorted(expected) == list(range(1, 15))

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(ALIGN + [*common, f"output_dir={run_dir}"], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and max(_train_losses(run_dir) if (run_dir / "metrics.jsonl").exists() else {}, default=0) < 7:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-step, between checkpoints
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # and whatever Ray processes it had started
        except ProcessLookupError:
            pass
    # The kill lands once step 7 is logged: usually before step 10's checkpoint, but a busy machine
    # can let the run reach it first (a fresh-clone `make test`, 2026-12-04). Either is a kill
    # between checkpoints.
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert latest in ("step_000005", "step_000010"), latest
    assert not (run_dir / "final").exists()
    at = int(latest.removeprefix("step_"))

    resumed = _run([*common, f"output_dir={run_dir}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"at step {at}" in resumed.stdout
    got = _train_losses(run_dir)
    assert sorted(got) == list(range(1, 15))
    for step in range(at + 1, 15):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


@pytest.fixture()
def two_node_cluster():
    """A head and a worker node on loopback addresses (127.0.0.2, 127.0.0.3), one CPU each.

    Each node runs as ``ray start --block`` in its own process group, and teardown kills only
    those groups: ``ray stop`` would also kill every other Ray on the machine, including the one
    this pytest process may have started, and Ray then ends this process.
    """
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1", "--disable-usage-stats"]
    env = _env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")  # allow a second node; addresses stay loopback
    address = "127.0.0.2:6399"
    nodes = [subprocess.Popen(ray + ["--head", "--port=6399", "--include-dashboard=false", "--node-ip-address=127.0.0.2"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        check = [sys.executable, "-c", f"import ray; ray.init(address='{address}'); assert len(ray.nodes()) >= {{n}}"]
        _wait_for(lambda: subprocess.run([c.replace("{n}", "1") for c in check], env=env, capture_output=True).returncode == 0)
        nodes.append(subprocess.Popen(ray + [f"--address={address}", "--node-ip-address=127.0.0.3"],
                                      env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        _wait_for(lambda: subprocess.run([c.replace("{n}", "2") for c in check], env=env, capture_output=True).returncode == 0)
        yield address
    finally:
        for node in reversed(nodes):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(node.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    node.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:
                os.killpg(node.pid, signal.SIGKILL)  # whatever the node left in its group
            except ProcessLookupError:
                pass


def _wait_for(ready, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        assert time.time() < deadline, "the Ray test cluster did not come up"
        time.sleep(1)


def test_sft_on_a_two_node_cluster_places_one_learner_per_node(tmp_path: Path, two_node_cluster: str) -> None:
    out = tmp_path / "run"
    proc = _run(["sft", "--recipe", "tiny-sft", *SMALL, "sft.max_steps=4", "cluster.num_learners=2",
                 "cluster.cpus_per_learner=1", f"output_dir={out}", "--ray-address", two_node_cluster],
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(set(summary["learner_nodes"])) == 2
    assert (out / "final" / "config.json").is_file() and (out / "loss.png").is_file()
