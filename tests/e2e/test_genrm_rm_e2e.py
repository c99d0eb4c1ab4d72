"""`align rm --recipe tiny-genrm` as a user runs it: judgement SFT, then GRPO of the judge on the
same train pairs in both orders (vLLM engine samples judgements, DeepSpeed learner updates), in one
command and one Ray session, with the held-out judge metrics of start, SFT and RL in summary.json.

A few steps from a fresh tiny model (no tiny-sft checkpoint here): this checks the two stages are
chained and measured, not that the judge learns (the recipes' measured numbers are in the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_align_rm_runs_sft_then_rl_of_the_judge(tmp_path: Path) -> None:
    out = tmp_path / "genrm"
    rl = ["grpo.max_steps=1", "grpo.eval_every_steps=1", "grpo.prompts_per_step=2", "grpo.generations_per_prompt=4",
          "grpo.max_refill_rounds=0", "grpo.dynamic_sampling=false", "envs.0.num_eval=4", "rollout.kv_cache_memory_mb=128",
          "rollout.sampling.max_new_tokens=16", "learner.micro_batch_size_per_device=8", "checkpoint.every_steps=1000"]  # fmt: skip
    args = ["rm", "--recipe", "tiny-genrm", "init_from=null", "tokenizer.vocab_size=512", f"output_dir={out}",
            "data.generated.num_train=24", "data.generated.num_eval=16", "rm.max_steps=3", "rm.eval_every_steps=3",
            "rm.genrm.num_eval_pairs=4", "rm.genrm.max_new_tokens=8", "checkpoint.every_steps=1000",
            f"rm.genrm.rl_overrides=[{', '.join(rl)}]"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled")
    proc = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "sft" / "final" / "config.json").is_file() and (out / "rl" / "final" / "config.json").is_file()
    assert (out / "final").resolve() == (out / "rl" / "final").resolve()  # the judge to serve: the RL stage's
    tasks = [json.loads(line) for line in (out / "rl" / "judge_tasks.jsonl").read_text().splitlines()]
    data = next(r for r in map(json.loads, (out / "sft" / "metrics.jsonl").read_text().splitlines()) if r["split"] == "data")
    kept = int(data["train_rows_kept"])  # tiny-genrm keeps a quarter of the padded pairs and every wrong one
    assert 12 <= kept < 24 and data["judgement_train_rows"] == 2 * kept
    assert len(tasks) == 2 * kept and {t["meta"]["order"] for t in tasks} == {"chosen_a", "chosen_b"}  # the SFT's pairs, both orders
    rows = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines() if line]
    step = next(r for r in rows if r["split"] == "train" and r["step"] == 1)
    assert "judge/reward" in step  # the judge environment scored the sampled judgements
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("start", "sft", "rl"):
        m = summary[f"judge_{stage}"]
        assert set(m) >= {"accuracy_chosen_a", "accuracy_chosen_b", "accuracy", "position_bias_rate", "parse_failure_rate"}, stage
    assert summary["rl_wall_s"] > 0 and summary["held_out_pairs"] == 4
    assert "judge (rl) on 4 held-out pairs x 2 orders" in proc.stdout
