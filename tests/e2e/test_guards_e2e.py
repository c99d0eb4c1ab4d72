"""Guards in real runs: an lr of inf and an environment that always raises both stop with exit 3.

Each run is a fresh interpreter through ``align.cli.main`` (its exit code is what a user sees).
The recipe loader refuses ``learner.lr=.inf`` (tests/align/test_recipe_fuzz.py), so the first
script swaps the loaded recipe's lr after loading: the guard behind the loader is what is tested.

Each script arms ``faulthandler`` to print every thread's stack and exit well before the
subprocess and pytest time limits: a run that hangs fails with where it hung, not with a bare
pytest timeout that loses the child's output (CI, 2026-12-03).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SFT_SMALL = [
    "data.generated.envs={math: 1.0}", "data.generated.num_train=64", "data.generated.num_eval=8",
    "tokenizer.vocab_size=320", "learner.micro_batch_size_per_device=4", "cluster.num_learners=1",
    "sft.num_eval_samples_to_generate=0", "sft.eval_every_steps=100", "sft.max_steps=6",
]  # fmt: skip

WATCHDOG_S = 240  # each run takes 15-30 s on 2 cores
WATCHDOG = f"import faulthandler; faulthandler.dump_traceback_later({WATCHDOG_S}, exit=True)\n"

INF_LR = WATCHDOG + """
import dataclasses, sys
import align.cli as cli

load = cli.load_recipe

def with_inf_lr(*args, **kwargs):
    loaded = load(*args, **kwargs)
    r = loaded.recipe
    return dataclasses.replace(loaded, recipe=r.model_copy(update={"learner": r.learner.model_copy(update={"lr": float("inf")})}))

cli.load_recipe = with_inf_lr
sys.exit(cli.main(sys.argv[1:]))
"""

ALWAYS_RAISES = WATCHDOG + """
import sys
import align.cli as cli
from envs.math.env import MathEnv
from envs.registry import register_env


class AlwaysRaises(MathEnv):
    \"\"\"The math environment with a grader that is down: every step raises.\"\"\"

    name = "always_raises"

    async def step(self, task, history, action):
        raise RuntimeError("the grader is down")


register_env(AlwaysRaises)
sys.exit(cli.main(["rl", "--in-process", "--recipe", "nano3-multienv-tiny", *sys.argv[1:]]))  # no Ray: one learner, one engine
"""


def _train_records(run_dir: Path) -> dict[int, dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines() if l] if path.exists() else []
    return {r["step"]: r for r in rows if r["split"] == "train"}


def test_inf_lr_stops_with_exit_3_and_writes_no_final(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", INF_LR, "sft", "--recipe", "tiny-sft", *SFT_SMALL, "checkpoint.every_steps=1",
                           f"output_dir={out}"], capture_output=True, text=True, timeout=2 * WATCHDOG_S, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-12000:]
    assert "run stopped: step 1: the weights are no longer finite" in proc.stderr, proc.stderr[-3000:]
    assert not (out / "final").exists() and not (out / "checkpoints" / "latest").exists()
    assert _train_records(out) == {}  # nothing logged as a trained step


def test_always_raising_environment_stops_the_run(tmp_path: Path) -> None:
    args = ["init_from=null", "tokenizer.vocab_size=512", "envs=[{name: always_raises, num_train: 64, num_eval: 2}]",
            "grpo.prompts_per_step=4", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=8",
            "rollout.sampling.max_new_tokens=16", "rollout.sampling.max_answer_tokens=8", "rollout.kv_cache_memory_mb=128",
            "reasoning.eval_budgets=[16]", "grpo.max_refill_rounds=0", "grpo.max_steps=6", "grpo.eval_every_steps=100",
            f"output_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", ALWAYS_RAISES, *args], capture_output=True, text=True, timeout=2 * WATCHDOG_S, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr[-12000:]
    assert "environment 'always_raises' failed 16/16 samples" in proc.stderr and "3 steps in a row" in proc.stderr
    assert "RuntimeError: the grader is down" in proc.stderr
    for step in (1, 2):
        assert f"step {step}: environment 'always_raises' failed 16/16 samples (100% > grpo.max_env_error_rate=0.5)" in proc.stdout
    assert "errors always_raises 100%" in proc.stdout  # the rate is on every step's line
    train = _train_records(tmp_path)
    assert sorted(train) == [1, 2]
    # Environment rewards all 0: no group was trained on the length and budget rewards alone.
    assert all(train[s]["groups_kept"] == 0 for s in (1, 2))
    assert not (tmp_path / "final").exists()
