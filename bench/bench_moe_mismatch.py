"""Train/inference mismatch of the MoE hybrid policy, with and without routing replay.

    .venv/bin/python bench/bench_moe_mismatch.py [--steps 4] [--threshold 2] [--replay off,rollout] [--dense]
        [--init-from DIR] [--override KEY=VALUE ...] [--out FILE]

Each replay mode is one short ``align rl --recipe nano3-multienv-tiny`` run on the same fresh
tiny MoE hybrid (random weights, seed 0: no SFT stage, so the policy samples freely; overlong
filtering off, since nearly every random completion runs out of tokens and would leave no policy
token to measure on), in-process
(the learner and the vLLM engine in one fresh interpreter, as ``tests/e2e/test_rl_e2e.py``), with
``grpo.routing_replay`` set to the mode and ``rollout.return_routed_experts=true``. The policy:
Nano 3's shape in small, ``ME*ME*`` (Mamba2, MoE, attention), 4 routed experts, top-2, one
shared expert. Same seed, same prompts: the two runs differ only in the replay.

Read back from each run's ``metrics.jsonl``, per step, before any update of that step:
- ``mismatch_kl``: mean per-token k3 KL(rollout || learner) over policy tokens (the learner's
  old log-probs, with replay when on, against what vLLM sampled with);
- ``mismatch_abs_logp``: mean per-token |log p_rollout - log p_learner|;
- ``seq_masked_share``: the share of sequences whose mean exp(|delta log p|) over policy tokens
  exceeds ``--threshold`` (the outlier share; the run masks them with
  ``grpo.max_seq_logprob_error=THRESHOLD``, so both modes train on the same rule).

On CPU the engine and the learner both run float32: the dense check measured mismatch_abs_logp
1.9e-7 there (2 steps, a random policy), so few routings can flip; on GPU (bf16 on both sides) the
gap, and what replay removes, is the real one. ``--init-from`` starts from a trained checkpoint
(e.g. the MoE pipeline's SFT stage) instead of a random policy.

``--dense`` checks the bench itself on the dense tiny policy (replay off only: a dense model has
no experts to replay). ``--override`` passes more recipe overrides (e.g. GPU placement:
``cluster.gpus_per_learner=0.5 cluster.gpus_per_rollout_engine=0.4 learner.precision=bf16``).
Needs a vLLM that serves NemotronH MoE (CUDA, or the CPU plugin of issue 14) and returns routed
experts. Writes ``bench/results/moe_mismatch.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "moe_mismatch.json"

# The in-process RL driver in a fresh interpreter (vLLM and torch.distributed leave process state).
DRIVER = """
import sys
from align.algorithms.rl.driver import run
from align.config import load_recipe
sys.exit(run(load_recipe("nano3-multienv-tiny", sys.argv[1:]), in_process=True))
"""

QUICK = [
    "tokenizer.vocab_size=512", "envs=[{name: math, num_train: 256, num_eval: 4}]",
    "grpo.prompts_per_step=8", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=8",
    "grpo.dynamic_sampling=false", "grpo.overlong_filtering=false", "grpo.eval_every_steps=1000", "rollout.sampling.max_new_tokens=48",
    "rollout.sampling.max_answer_tokens=8", "rollout.kv_cache_memory_mb=128", "reasoning.eval_budgets=[16]",
    "checkpoint.every_steps=1000",
]  # fmt: skip
MOE = [
    "model.tiny.layers_block_type=ME*ME*", "model.tiny.n_routed_experts=4", "model.tiny.num_experts_per_tok=2",
    "model.tiny.n_shared_experts=1", "model.tiny.moe_intermediate_size=128", "model.tiny.moe_shared_expert_intermediate_size=128",
]  # fmt: skip
KEYS = ("mismatch_kl", "mismatch_abs_logp", "seq_masked_share")


def run_mode(replay: str, args: argparse.Namespace, out_dir: Path) -> dict[str, object]:
    start = [f"init_from={args.init_from}"] if args.init_from else ["init_from=null"]
    moe = [] if args.dense else [*([] if args.init_from else MOE), "rollout.return_routed_experts=true"]
    overrides = [*start, *QUICK, *moe, f"grpo.routing_replay={replay}", f"grpo.max_seq_logprob_error={args.threshold}",
                 f"grpo.max_steps={args.steps}", f"output_dir={out_dir}", *args.override]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", DRIVER, *overrides], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}", "overrides": overrides}
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = [{k: r[k] for k in ("step", *KEYS) if k in r} for r in rows if r["split"] == "train"]
    mean = {k: statistics.fmean(s[k] for s in steps) for k in KEYS if all(k in s for s in steps)}
    return {"steps": steps, "mean": mean, "overrides": overrides}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=2.0)
    ap.add_argument("--replay", default="off,rollout", help="comma-separated routing replay modes")
    ap.add_argument("--dense", action="store_true", help="the dense tiny policy, replay off: checks the bench")
    ap.add_argument("--init-from", default=None, help="a trained checkpoint folder to start from (its own MoE config)")
    ap.add_argument("--override", nargs="*", default=[], help="more recipe overrides, KEY=VALUE")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    modes = ["off"] if args.dense else args.replay.split(",")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            results[mode] = run_mode(mode, args, Path(tmp) / mode)
    print(f"{'replay':<8} {'mismatch_kl':>12} {'|dlogp|':>10} {'outliers':>9}   (mean over {args.steps} steps; outliers: seq error > {args.threshold:g})")
    for mode, res in results.items():
        if "error" in res:
            print(f"{mode:<8} failed: {res['error']}")
            continue
        m = res["mean"]  # type: ignore[index]
        print(f"{mode:<8} {m['mismatch_kl']:>12.3e} {m['mismatch_abs_logp']:>10.3e} {m['seq_masked_share']:>9.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(), "cores": os.cpu_count(), "loadavg": os.getloadavg(), "policy": "dense tiny" if args.dense else "tiny MoE ME*ME*"}
    args.out.write_text(json.dumps({"meta": meta, "threshold": args.threshold, "results": results}, indent=2))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
