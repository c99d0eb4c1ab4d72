"""GRPO end to end on GPUs: align vs TRL on the same policy, prompts, lengths and optimizer.

Usage (on a GPU machine with the `gpu` extra installed, e.g. from ``make wheelhouse TARGET=gpu``)::

    python bench/bench_gpu_rl.py [--policies llama-1b,hybrid-1b] [--sides align,trl]
        [--steps 4 --warmup 1] [--prompts 8 --generations 8 --new-tokens 512] [--repeats 1]
    python bench/bench_gpu_rl.py --placement separate --sides align,align-async2 --lengths natural --vocab 512
        # sync vs async GRPO on 2 GPUs, long-tailed generation lengths
    python bench/bench_gpu_rl.py --quick      # CPU smoke run of the bench itself (tiny policy)
    python bench/bench_gpu_rl.py --policies llama-1b --sides align --sync-floor
        # and each align side's weight sync over the per-layer reload floor (bench_gpu_sync_floor.py)
    python bench/bench_gpu_rl.py --policies hybrid-1b --sides align --new-tokens 16384 --prompts 2 --generations 4 \
        --micro-batch 1 --steps 1 --warmup 0 --num-eval 0      # a 16K-token thinking budget's rollout and update
    python bench/bench_gpu_rl.py --policies llama-8b --gpus 8 --zero 3 --placement separate --sides align
        # one node: 4 ZeRO-3 learners + 4 engines (NCCL); --gpus 8 colocated: 8 learners, each beside an engine

What both sides get:
- the same start checkpoint, random weights built from a config (``align.models``) and saved
  as a Hugging Face folder with its tokenizer (the tiny world's BPE tokenizer: its vocabulary is
  far smaller than a real model's, so the LM head is cheap; the table gives the parameter count);
- the same math prompts, rendered to text with the checkpoint's chat template (/think);
- fixed generation lengths: every completion runs to ``--new-tokens`` past end-of-sequence
  (align ``rollout.sampling.ignore_eos``, TRL ``generation_kwargs={"ignore_eos": True}``);
- bf16, AdamW, the same lr, clip 0.2/0.28, no KL, token-level loss, one update per generation,
  micro-batch ``--micro-batch``, gradient checkpointing off, temperature 1;
- placement ``colocated``: the learner and the vLLM engine share one GPU (align: Ray GPU shares
  0.5 + 0.4 and CUDA IPC weight sync; TRL: ``vllm_mode="colocate"``). ``separate`` (align only:
  learner and engine on a GPU each, NCCL weight sync) needs two GPUs. ``--mode async
  --max-staleness N`` (align only, with ``separate``) runs align's asynchronous GRPO
  (``grpo.mode=async``); the table then adds the engine's idle share.

Reported per side and policy (medians over the steps after ``--warmup``): step time and its
split (align: rollout / scoring / learner / sync from metrics.jsonl; TRL: the step only),
generated and total (prompt + generated) tokens/s per GPU, learner MFU = 6 * N * trained tokens
/ (learner seconds * peak bf16 FLOP/s) with N the non-embedding parameter count (align's
learner time also holds its old-log-prob forward, which this count leaves out), and the peak GPU
memory that ``nvidia-smi`` saw during the run (both processes when colocated). Sides alternate
(align, TRL, align, ...) and the ratio is TRL step time / align step time per policy.

For context only (not measured here): NeMo-RL publishes 1,581 tokens/s/GPU for Llama-3.1-8B
on-policy GRPO on 16 H100s with about 1K-token generations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_vs_trl import Settings as TrlSettings  # noqa: E402
from bench_gpu_sync_floor import line as sync_floor_line  # noqa: E402
from bench_vs_trl import StepTimer, grpo_prompts, job_env, load1, run_header  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_gpu_rl.json"
RUNS = ROOT / "runs" / "bench_gpu_rl"
# Where a cuda_ipc sync goes (align.weight_sync.transports.push_ipc), per step in metrics.jsonl.
SYNC_PARTS = ("time_sync_tail_s", "time_sync_state_dict_s", "time_sync_pack_s", "time_sync_wait_s", "time_sync_engine_quiesce_s",
              "time_sync_engine_load_s", "time_sync_engine_finish_s", "time_sync_engine_span_s", "time_sync_push_s")
PY = sys.executable

# Policies built from config (model.tiny fields; tokenizer.vocab_size). The 1B shapes follow
# bench_gpu_train.py: a Llama-style decoder and a NemotronH dense hybrid of about the same size.
POLICIES: dict[str, dict[str, Any]] = {
    "llama-1b": {"arch": "llama", "tiny": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                                                 intermediate_size=5632, max_position_embeddings=4096)},
    "hybrid-1b": {"arch": "nemotron_h", "tiny": dict(hidden_size=2048, layers_block_type="M-M-M-M-*M-M-M-M-*M-M-M-", num_attention_heads=16,
                                                       num_key_value_heads=8, intermediate_size=9024, mamba_num_heads=64, mamba_head_dim=64,
                                                       ssm_state_size=128, mamba_n_groups=8, mamba_chunk_size=128, max_position_embeddings=4096)},
    "moe-nano3": {"arch": "nemotron_h", "tiny": dict(hidden_size=2048, layers_block_type="MEMEM*EMEMEM*EMEMEM*EMEM", num_attention_heads=16,
                                                       num_key_value_heads=2, intermediate_size=1856, mamba_num_heads=64, mamba_head_dim=64,
                                                       ssm_state_size=128, mamba_n_groups=8, mamba_chunk_size=128, n_routed_experts=64,
                                                       num_experts_per_tok=6, n_shared_experts=1, moe_intermediate_size=768,
                                                       moe_shared_expert_intermediate_size=1856, max_position_embeddings=4096)},
    # Llama-3.1-8B's shape (the bench's tokenizer, so a far smaller vocabulary): for --gpus 2 and up with --zero 3.
    "llama-8b": {"arch": "llama", "tiny": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                                 intermediate_size=14336, max_position_embeddings=4096)},
    "tiny": {"arch": "nemotron_h", "tiny": {}},  # the tiny world's policy: --quick on CPU
}  # fmt: skip


@dataclass
class Settings:
    steps: int = 4
    warmup: int = 1
    prompts: int = 8
    generations: int = 8
    new_tokens: int = 512
    micro_batch: int = 8
    lr: float = 1e-6
    vocab_size: int = 4096
    seed: int = 0
    gpu: bool = True
    placement: str = "colocated"
    mode: str = "sync"  # grpo.mode; async needs --placement separate (or CPU)
    max_staleness: int = 1
    lengths: str = "fixed"  # fixed: every completion runs to new_tokens (ignore_eos); natural: it stops at EOS
    compile: bool = False  # align's learner.compile (side align-compile)
    liger: str = "auto"  # align's learner.liger_kernel: auto (the default: on for llama where installed), true (-liger), false (-noliger)
    old_pass: bool = False  # side align-oldpass: old log-probs in a pass of their own, as before 7cc6de2
    gpus: int = 1  # colocated: a learner and an engine on each; separate: half learners, half engines
    profile_step: int = 0  # >0: align's learners record this train step with torch.profiler (learner.profile)
    zero: int = 0  # the learners' ZeRO stage (align learner.zero_stage; TRL through accelerate's DeepSpeed plugin)
    bucket_mb: int = 512  # align's rollout.weight_sync_bucket_mb (side align-bucketN)
    num_eval: int = 1  # align's held-out math tasks, played at step 0 and at the end (0 for long generations: each runs to new_tokens)

    @property
    def engines(self) -> int:
        """vLLM engines, and learners: one per GPU colocated, half the GPUs each separate (one each on CPU)."""
        return max(1, self.gpus if self.placement == "colocated" else self.gpus // 2)

    @property
    def prompts_per_step(self) -> int:
        """``prompts`` is per engine, so each GPU does the same work at every ``gpus`` (weak scaling)."""
        return self.prompts * self.engines


# ----------------------------------------------------------------------------- shared inputs


def start_checkpoint(policy: str, s: Settings) -> Path:
    """The policy's random-weight HF folder (built once, reused by every side and repeat)."""
    from align.config.sections import ModelConfig, TinyModelConfig, TokenizerConfig
    from align.init_checkpoint import prepare_initial_checkpoint

    spec = POLICIES[policy]
    tiny = dict(spec["tiny"])
    if "max_position_embeddings" in tiny:  # room for long generations (--new-tokens 16384)
        tiny["max_position_embeddings"] = max(tiny["max_position_embeddings"], 256 + s.new_tokens)
    cfg = ModelConfig(arch=spec["arch"], tiny=TinyModelConfig(**tiny), dtype="bfloat16" if s.gpu else "float32")
    name = f"{policy}-v{s.vocab_size}" + (f"-p{tiny['max_position_embeddings']}" if tiny.get("max_position_embeddings", 0) > 4096 else "")
    return prepare_initial_checkpoint(cfg, TokenizerConfig(vocab_size=s.vocab_size), RUNS / "init" / name, seed=s.seed)


def prompts(ckpt: Path, s: Settings) -> list[dict[str, Any]]:
    """Math prompts in align's task-stream order, rendered as align's rollout renders them."""
    return grpo_prompts(TrlSettings(prompts_per_step=s.prompts_per_step, seed=s.seed), s.steps, ckpt)


def param_counts(ckpt: Path) -> tuple[int, int]:
    """(all parameters, parameters outside the embeddings and LM head) of the checkpoint."""
    from safetensors import safe_open

    total = embed = 0
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                n = st.get_slice(k).get_shape()
                size = 1
                for d in n:
                    size *= d
                total += size
                embed += size if ("embed" in k or "lm_head" in k) else 0
    return total, total - embed


class GpuMemory:
    """Peak ``memory.used`` over all GPUs, sampled by ``nvidia-smi`` every 0.5 s while running."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max(self.peak_mib, sum(float(x) for x in out.split()))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> "GpuMemory":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


# ----------------------------------------------------------------------------- align side


def align_recipe(ckpt: Path, policy: str, s: Settings, out: Path) -> Path:
    gpu = s.gpu
    learner_gpu, engine_gpu = ((0.5, 0.4) if s.placement == "colocated" else (1, 1)) if gpu else (0, 0)
    max_len = 256 + s.new_tokens
    text = f"""\
extends: nano3-multienv-tiny
description: bench_gpu_rl {policy}, math prompts, fixed {s.new_tokens}-token generations
seed: {s.seed}
output_dir: {out}
init_from: {ckpt}
model: {{arch: {POLICIES[policy]['arch']}, dtype: {'bfloat16' if gpu else 'float32'}, tiny: {{max_position_embeddings: {max(4096, max_len)}}}}}
cluster: {{num_learners: {s.engines}, gpus_per_learner: {learner_gpu}, num_rollout_engines: {s.engines}, gpus_per_rollout_engine: {engine_gpu}}}
learner: {{zero_stage: {s.zero}, micro_batch_size_per_device: {s.micro_batch}, lr: {s.lr}, lr_schedule: constant, warmup_steps: 0, precision: {'bf16' if gpu else 'fp32'}, gradient_checkpointing: false, max_seq_len: {max_len}, compile: {str(s.compile).lower()}, liger_kernel: {s.liger}{f", profile: {{steps: [{s.profile_step}], dir: {out / 'profile'}}}" if s.profile_step else ""}}}
checkpoint: {{every_steps: {s.steps + 1}, keep_last: 1}}
rollout:
  gpu_memory_utilization: {0.35 if gpu else 0.1}
  weight_sync_bucket_mb: {s.bucket_mb}
  kv_cache_memory_mb: {'null' if gpu else 256}
  max_model_len: {max_len}
  enforce_eager: {'false' if gpu else 'true'}
  max_turns: 1
  sampling: {{temperature: 1.0, max_new_tokens: {s.new_tokens}, ignore_eos: {'true' if s.lengths == 'fixed' else 'false'}}}
envs:
  - {{name: math, weight: 1.0, num_train: 2000, num_eval: {s.num_eval}}}
rewards: []
reasoning: {{no_think_fraction: 0.0, budget_fraction: 0.0, eval_budgets: []}}
grpo:
  max_steps: {s.steps}
  prompts_per_step: {s.prompts_per_step}
  generations_per_prompt: {s.generations}
  baseline: mean_std
  clip_low: 0.2
  clip_high: 0.28
  kl_coef: 0.0
  loss_aggregation: token
  dynamic_sampling: false
  overlong_filtering: false
  max_seq_logprob_error: {'1.0e9' if s.old_pass else 'null'}
  eval_every_steps: {s.steps + 1}
  mode: {s.mode}
  max_staleness: {s.max_staleness}
"""
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def side_settings(s: Settings, side: str) -> Settings:
    """A side's settings: ``align`` as given; ``align-asyncN`` align's async GRPO at max staleness N; otherwise
    ``align`` plus modifiers joined by ``-``: ``compile`` (learner.compile), ``liger`` / ``noliger`` (learner.liger_kernel true / false; auto without either), ``oldpass`` (the separate
    old-log-prob pass), ``mbN`` (micro-batches of N sequences) and ``bucketN`` (weight-sync buckets of N MiB), e.g. ``align-compile-mb32``; ``trl`` as given."""
    if side.startswith("align-async"):
        return replace(s, mode="async", max_staleness=int(side.removeprefix("align-async") or 1))
    if not side.startswith("align"):
        return s
    for mod in side.split("-")[1:]:
        if mod == "compile":
            s = replace(s, compile=True)
        elif mod in ("liger", "noliger"):
            s = replace(s, liger="true" if mod == "liger" else "false")
        elif mod == "oldpass":  # a masking threshold no sequence reaches: the same update, plus the separate pass
            s = replace(s, old_pass=True)
        elif mod.startswith("mb") and mod[2:].isdigit():
            s = replace(s, micro_batch=int(mod[2:]))
        elif mod.startswith("bucket") and mod[6:].isdigit():
            s = replace(s, bucket_mb=int(mod[6:]))
        else:
            raise ValueError(f"side {side!r}: unknown modifier {mod!r} (compile, liger, noliger, oldpass, mbN, bucketN)")
    return s


def run_align(ckpt: Path, policy: str, s: Settings, out: Path, timeout_s: float) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    recipe = align_recipe(ckpt, policy, s, out)
    log = out.with_suffix(".log")
    t0 = time.time()
    with GpuMemory() as mem, open(log, "w") as f:
        proc = subprocess.run([PY, "-m", "align.cli", "rl", "--recipe", str(recipe)], cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"align rl failed (exit {proc.returncode}); see {log}: {' | '.join(log.read_text().strip().splitlines()[-3:])}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    res: dict[str, Any] = {"side": "align", "wall_s": time.time() - t0, "first_step_end_s": train[0]["time"] - t0, "peak_gpu_mib": mem.peak_mib, "log": str(log)}
    for key in ("time_step_s", "time_rollout_s", "time_score_s", "time_learner_s", "time_sync_s", *SYNC_PARTS, "engine_idle_share", "learner_idle_share"):
        res[key] = [float(r[key]) for r in train if key in r]
    res["step_times_s"] = res["time_step_s"]
    res["completion_tokens"] = [float(r.get("math/length", float("nan"))) for r in train]
    res["profile"] = sorted(str(p) for p in (out / "profile").glob("*.txt"))  # --profile-step: one table per learner
    return res


# ----------------------------------------------------------------------------- TRL side


def trl_worker(ckpt: Path, s: Settings, out: Path) -> dict[str, Any]:
    """TRL's GRPOTrainer with vLLM colocate on this process's GPU (runs in its own process)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    timer = StepTimer()
    tok = AutoTokenizer.from_pretrained(ckpt)
    dtype = torch.bfloat16 if s.gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype)
    per_step = s.prompts_per_step * s.generations // trl_processes(s)  # sequences per TRL process and step
    vllm_kw: dict[str, Any] = {}
    if s.gpu:
        vllm_kw = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.35, vllm_max_model_length=256 + s.new_tokens,
                       vllm_importance_sampling_correction=True, generation_kwargs={"ignore_eos": True})  # fmt: skip
    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=s.micro_batch, gradient_accumulation_steps=per_step // s.micro_batch,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=s.steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=not s.gpu,
        bf16=s.gpu, seed=s.seed, dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False,
        num_generations=s.generations, max_completion_length=s.new_tokens, temperature=1.0, top_p=1.0, beta=0.0, epsilon=0.2,
        epsilon_high=0.28, loss_type="dapo", scale_rewards="group", num_iterations=1, mask_truncated_completions=False,
        shuffle_dataset=False, log_completions=False, **vllm_kw,
    )  # fmt: skip
    rows = json.loads((out / "prompts.json").read_text())

    def reward(completions: list[str], **_: Any) -> list[float]:  # cheap and varied: the work is generation and training
        return [float(len(set(c.split())) % 5) for c in completions]

    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer.callback])
    trainer.train()
    lengths = [float(l["completions/mean_length"]) for l in timer.logs if "completions/mean_length" in l]
    return {"side": "trl", "step_times_s": timer.steps, "first_step_end_s": (timer.first_end or 0.0), "completion_tokens": lengths}


def trl_processes(s: Settings) -> int:
    return s.gpus if s.gpu else 1


def run_worker(cmd: list[str], s: Settings, out: Path, rows: list[dict[str, str]], timeout_s: float, what: str,
               env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run a worker side (TRL, bare vLLM) in its own process: its settings and prompts go into the fresh run
    folder ``out``, which ``cmd`` names, and the worker writes ``out/result.json``; its log is ``out``.log.
    Returns the result and the launch time (``time.time()``)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "settings.json").write_text(json.dumps(asdict(s)))
    (out / "prompts.json").write_text(json.dumps(rows))
    log, t0 = out.with_suffix(".log"), time.time()
    with GpuMemory() as mem, open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env or job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
    result = out / "result.json"
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); see {log}: {' | '.join(log.read_text().strip().splitlines()[-3:])}")
    res = json.loads(result.read_text())
    res.update(wall_s=time.time() - t0, peak_gpu_mib=mem.peak_mib, log=str(log))
    return res, t0


def run_trl(ckpt: Path, s: Settings, out: Path, rows: list[dict[str, str]], timeout_s: float) -> dict[str, Any]:
    cmd = [PY, str(Path(__file__).resolve()), "--worker", str(ckpt), "--out", str(out)]
    if trl_processes(s) > 1:  # one TRL process per GPU, each with its own colocated vLLM (tensor parallel 1)
        launch = ["--num_processes", str(s.gpus), "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no"]
        launch += ["--use_deepspeed", "--zero_stage", str(s.zero)] if s.zero else ["--multi_gpu"]
        cmd = [PY, "-m", "accelerate.commands.launch", *launch, *cmd[1:]]
    res, t0 = run_worker(cmd, s, out, rows, timeout_s, "TRL")
    res["first_step_end_s"] -= t0  # the worker's clock time -> seconds from launch
    return res


# ----------------------------------------------------------------------------- bare vLLM side


def vllm_worker(ckpt: Path, s: Settings, out: Path) -> dict[str, Any]:
    """Bare vLLM on one GPU: each step's requests as align's engine sends them (one seeded request per sample,
    the sampled token's log-prob, token ids out), with align's engine memory share, length cap and sequence cap."""
    from vllm import LLM, SamplingParams

    rows = json.loads((out / "prompts.json").read_text())
    seqs = s.prompts * s.generations  # one engine's share of a step
    llm = LLM(model=str(ckpt), dtype="bfloat16" if s.gpu else "float32", gpu_memory_utilization=0.35, max_model_len=256 + s.new_tokens,
              seed=s.seed, enforce_eager=not s.gpu, max_num_seqs=min(256, seqs), logprobs_mode="processed_logprobs",
              **({} if s.gpu else {"kv_cache_memory_bytes": 256 << 20}))  # fmt: skip
    tok = llm.get_tokenizer()
    times, lengths = [], []
    for step in range(s.steps):
        chunk = rows[step * s.prompts_per_step :][: s.prompts]
        ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in chunk]
        params = [SamplingParams(max_tokens=s.new_tokens, temperature=1.0, seed=s.seed + i, ignore_eos=s.lengths == "fixed", logprobs=0, detokenize=False)
                  for i in range(seqs)]  # fmt: skip
        t = time.perf_counter()
        done = llm.generate([{"prompt_token_ids": ids[i // s.generations]} for i in range(seqs)], params, use_tqdm=False)
        times.append(time.perf_counter() - t)
        lengths.append(statistics.mean(len(o.outputs[0].token_ids) for o in done))
    return {"side": "vllm", "step_times_s": times, "completion_tokens": lengths, "first_step_end_s": 0.0}


def run_vllm(ckpt: Path, s: Settings, out: Path, rows: list[dict[str, str]], timeout_s: float) -> dict[str, Any]:
    """The bare-vLLM side in its own process (``--vllm-worker``), on the first GPU only."""
    env = job_env()
    if s.gpu:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    cmd = [PY, str(Path(__file__).resolve()), "--vllm-worker", str(ckpt), "--out", str(out)]
    return run_worker(cmd, s, out, rows, timeout_s, "bare vLLM", env)[0]


def run_sync_floor(ckpt: Path, s: Settings, out: Path, timeout_s: float) -> dict[str, Any]:
    """``bench_gpu_sync_floor.py`` on the policy, in its own process on the first GPU (the runs before it have ended)."""
    env = job_env()
    if s.gpu:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    cmd = [PY, str(ROOT / "bench" / "bench_gpu_sync_floor.py"), str(ckpt), "--out", str(out), "--max-model-len", str(256 + s.new_tokens)] + ([] if s.gpu else ["--cpu"])
    return run_worker(cmd, s, out, [], timeout_s, "sync floor", env)[0]


def sync_parts_line(runs: list[dict[str, Any]]) -> str:
    """Where a side's sync went, medians over its runs in ms: the learners' parts (``cuda_ipc``; the
    engines' parts are inside ``wait``), and the rest of ``sync`` (the driver's Ray round trip)."""
    med = {k: statistics.median(v) * 1e3 for k in ("sync_s", *(p.removeprefix("time_") for p in SYNC_PARTS))
           if (v := [r["summary"][k] for r in runs if r["summary"].get(k) is not None])}  # fmt: skip
    if "sync_push_s" not in med:
        return "no parts of the sync recorded (not cuda_ipc)"
    parts = ", ".join(f"{k.removeprefix('sync_').removesuffix('_s')} {v:.1f}" for k, v in med.items() if k not in ("sync_s", "sync_push_s"))
    line = f"sync parts (ms): {parts}; learners' push {med['sync_push_s']:.1f}, outside it {med['sync_s'] - med['sync_push_s']:.1f}"
    if "sync_engine_span_s" in med:  # the engines' span: their own parts, and idle while the next bucket comes (packing, Ray)
        idle = med["sync_engine_span_s"] - sum(med.get(f"sync_engine_{k}_s", 0.0) for k in ("quiesce", "load", "finish"))
        line += f"; engine idle between buckets {idle:.1f}, push outside the engines' span {med['sync_push_s'] - med['sync_engine_span_s']:.1f}"
    return line


def sync_over_floor(entry: dict[str, Any]) -> dict[str, float]:
    """Per align side: its median ``sync`` over the floor (issue 15: at most 2)."""
    floor = entry.get("sync_floor", {}).get("floor_s")
    out = {}
    for side, runs in entry["runs"].items():
        syncs = [r["summary"].get("sync_s") for r in runs if r["summary"].get("sync_s") is not None]
        if floor and syncs:
            out[side] = statistics.median(syncs) / floor
    return out


# ----------------------------------------------------------------------------- summary


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "cpu"


def summarize(res: dict[str, Any], s: Settings, prompt_tokens: float, n_body: int, peak: float | None) -> dict[str, Any]:
    """Medians after warm-up, and the per-GPU throughputs and MFU they imply."""
    w = s.warmup
    skip = s.profile_step - 1 if s.profile_step and res.get("side") == "align" else -1  # the profiled step runs slower

    def med(key: str) -> float | None:
        xs = [x for i, x in enumerate(res.get(key, [])) if i >= w and i != skip] or res.get(key, [])
        return statistics.median(xs) if xs else None

    gpus = s.gpus if s.gpu else 1
    step = med("step_times_s")
    seqs = s.prompts_per_step * s.generations
    length = s.new_tokens if s.lengths == "fixed" else (med("completion_tokens") or 0.0)  # natural: the measured mean
    gen, total = seqs * length, seqs * (length + prompt_tokens)
    out = {"step_s": step, "gen_tokens_per_s_per_gpu": gen / step / gpus if step else None, "tokens_per_s_per_gpu": total / step / gpus if step else None,
           "completion_tokens": med("completion_tokens"), "peak_gpu_gib": res.get("peak_gpu_mib", 0) / 1024, "first_step_end_s": res.get("first_step_end_s")}  # fmt: skip
    for key in ("time_rollout_s", "time_score_s", "time_learner_s", "time_sync_s", *SYNC_PARTS, "engine_idle_share", "learner_idle_share"):
        if res.get(key):
            out[key.removeprefix("time_")] = med(key)
    learner = out.get("learner_s")
    if learner and peak:
        out["learner_mfu"] = 6 * n_body * total / learner / (peak * s.engines)  # per learner GPU
    return out


def scaling(entries: dict[str, Any], gpu_counts: list[int]) -> list[dict[str, Any]]:
    """Per policy and side: tokens/s/GPU at the most GPUs over that at the fewest (1.0 = linear scaling)."""
    if len(gpu_counts) < 2:
        return []
    lo, hi, lines = min(gpu_counts), max(gpu_counts), []
    for policy in dict.fromkeys(k.rsplit("@", 1)[0] for k in entries):
        a, b = entries.get(f"{policy}@{lo}", {}).get("runs", {}), entries.get(f"{policy}@{hi}", {}).get("runs", {})
        for side in a.keys() & b.keys():
            rate = [statistics.median(r["summary"]["tokens_per_s_per_gpu"] or 0.0 for r in runs[side]) for runs in (a, b)]
            if rate[0]:
                lines.append({"policy": policy, "side": side, "gpus": [lo, hi], "tokens_per_s_per_gpu": rate, "efficiency": rate[1] / rate[0]})
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default="llama-1b,hybrid-1b")
    ap.add_argument("--sides", default="align,trl", help="align, trl, vllm (bare vLLM generating one engine's requests), align with modifiers (align-compile: learner.compile; align-liger / align-noliger: learner.liger_kernel true / false, auto otherwise; "
                    "align-oldpass: old log-probs in a pass of their own; align-mbN: micro-batches of N; align-bucketN: weight-sync buckets of N MiB; e.g. align-compile-mb32), "
                    "and align-asyncN: align's async GRPO at max staleness N (separate placement)")
    ap.add_argument("--placement", choices=["colocated", "separate"], default="colocated")
    ap.add_argument("--gpus", default="", help="GPUs of this node to use, or a list run in turn for scaling (2,4,8); default 1 colocated, "
                    "2 separate; --prompts is per engine")
    ap.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=0, help="the learners' ZeRO stage (both sides; 3 for the 8B policy)")
    ap.add_argument("--mode", choices=["sync", "async"], default="sync", help="align's grpo.mode (async: with --placement separate)")
    ap.add_argument("--max-staleness", type=int, default=1, help="align's grpo.max_staleness (async)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--lengths", choices=["fixed", "natural"], default="fixed",
                    help="fixed: every completion runs to --new-tokens past EOS; natural: completions stop at EOS (a random policy "
                         "with --vocab V stops with probability about 1/V per token: geometric, long-tailed lengths up to --new-tokens)")
    ap.add_argument("--vocab", type=int, default=4096, help="the tokenizer's vocabulary size (natural lengths: mean about this many tokens)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--profile-step", type=int, default=0, help="align sides: torch.profiler on this train step of each learner "
                    "(learner.profile); tables in each run's profile/ folder, summed up in the log")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sync-floor", action="store_true", help="after the sides of each policy, measure the per-layer reload floor "
                    "(bench_gpu_sync_floor.py: the engine's load_weights from tensors on its GPU) and print each align side's sync over it")
    ap.add_argument("--num-eval", type=int, default=1, help="align's held-out tasks played at step 0 and at the end (0: none, for long generations)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run before it is killed and recorded as an error")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: the tiny policy, 2 steps, TRL with transformers generate")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # TRL side: the start checkpoint; --out is its run folder
    ap.add_argument("--vllm-worker", type=Path, help=argparse.SUPPRESS)  # bare-vLLM side: the same
    args = ap.parse_args()
    if args.vllm_worker:
        s = Settings(**json.loads((args.out / "settings.json").read_text()))
        (args.out / "result.json").write_text(json.dumps(vllm_worker(args.vllm_worker, s, args.out)))
        return 0
    if args.worker:
        s = Settings(**json.loads((args.out / "settings.json").read_text()))
        result = trl_worker(args.worker, s, args.out)
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch, one result file
            (args.out / "result.json").write_text(json.dumps(result))
        return 0
    if (args.mode == "async" or "align-async" in args.sides) and args.placement == "colocated" and not args.quick:
        ap.error("--mode async needs --placement separate: colocated engines sleep while the learner trains")
    gpu_counts = [int(g) for g in args.gpus.split(",") if g] or [2 if args.placement == "separate" else 1]
    if args.placement == "separate" and any(g < 2 or g % 2 for g in gpu_counts):
        ap.error("--placement separate needs an even --gpus of 2 or more: half learners, half engines")
    if args.placement == "separate" and "trl" in args.sides.split(","):
        ap.error("TRL runs colocated here (vllm_mode=colocate); drop trl from --sides with --placement separate")
    if args.quick:
        args.policies, args.steps, args.warmup, args.prompts, args.generations, args.new_tokens, args.micro_batch = "tiny", 2, 1, 2, 4, 32, 8
    s = Settings(steps=args.steps, warmup=args.warmup, prompts=args.prompts, generations=args.generations, new_tokens=args.new_tokens,
                 micro_batch=args.micro_batch, gpu=not args.quick, placement=args.placement, gpus=gpu_counts[0], zero=args.zero, vocab_size=1024 if args.quick else args.vocab,
                 mode=args.mode, max_staleness=args.max_staleness, lengths=args.lengths, profile_step=args.profile_step, num_eval=args.num_eval)  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    name = gpu_name()
    from bench_gpu_train import peak_flops  # the datasheet peaks the training bench uses

    peak, _ = peak_flops(name)
    report: dict[str, Any] = {**run_header(), "gpu": name, "settings": asdict(s), "load_1m_start": load1(), "policies": {}, "errors": []}
    table = Table(title=f"GRPO on {name}, {s.placement}, ZeRO-{s.zero}, {s.mode}{f' N={s.max_staleness}' if s.mode == 'async' else ''}: {s.prompts} prompts per engine x {s.generations}, {s.new_tokens} new tokens, medians of steps {s.warmup + 1}-{s.steps}")
    for col in ("policy", "GPUs", "params", "side", "step s", "rollout", "learner", "sync", "engine idle", "gen tok/s/GPU", "tok/s/GPU", "MFU", "peak GiB", "1st step end s"):
        table.add_column(col)
    for policy, s in [(p, replace(s, gpus=g)) for p in args.policies.split(",") for g in gpu_counts]:
        key = policy if len(gpu_counts) == 1 else f"{policy}@{s.gpus}"
        ckpt = start_checkpoint(policy, s)
        rows = prompts(ckpt, s)
        from align.models import load_tokenizer

        tok = load_tokenizer(ckpt)
        prompt_tokens = statistics.mean(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows)
        n_all, n_body = param_counts(ckpt)
        entry: dict[str, Any] = {"gpus": s.gpus, "params": n_all, "params_non_embedding": n_body, "prompt_tokens_mean": prompt_tokens, "runs": {}}
        for rep in range(args.repeats):
            order = args.sides.split(",")
            order = order if rep % 2 == 0 else order[::-1]
            for side in order:
                out = RUNS / f"{key}-{side}-{rep}"
                console.print(f"[bold]{policy}[/] {side} repeat {rep + 1} (load {load1():.1f}) ...")
                try:
                    side_s = side_settings(s, side)
                    if side.startswith("align"):
                        res = run_align(ckpt, policy, side_s, out, args.timeout)
                    elif side == "vllm":  # one engine's share of each step, on one GPU
                        res, side_s = run_vllm(ckpt, s, out, rows, args.timeout), replace(s, gpus=1, placement="colocated")
                    else:
                        res = run_trl(ckpt, s, out, rows, args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    report["errors"].append({"policy": policy, "side": side, "repeat": rep, "error": str(e)[-2000:]})
                    console.print(f"[red]{policy} {side}: {str(e)[-400:]}")
                    continue
                res["summary"] = summarize(res, side_s, prompt_tokens, n_body, peak)
                entry["runs"].setdefault(side, []).append(res)
        if args.sync_floor:
            try:
                entry["sync_floor"] = run_sync_floor(ckpt, s, RUNS / f"{key}-sync-floor", args.timeout)
                entry["sync_over_floor"] = sync_over_floor(entry)
                console.print(f"{key} sync floor: {sync_floor_line(entry['sync_floor'])}")
                for side, ratio in entry["sync_over_floor"].items():  # medians over the side's runs, as the ratio
                    sync_ms = ratio * entry["sync_floor"]["floor_s"] * 1e3
                    console.print(f"{key} {side}: sync {sync_ms:.1f} ms; sync / floor = {ratio:.1f} (target <= 2); {sync_parts_line(entry['runs'][side])}")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                report["errors"].append({"policy": policy, "side": "sync-floor", "error": str(e)[-2000:]})
                console.print(f"[red]{policy} sync floor: {str(e)[-400:]}")
        sides = {side: statistics.median(r["summary"]["step_s"] for r in runs) for side, runs in entry["runs"].items()}
        if "align" in sides and "trl" in sides:
            entry["trl_over_align_step"] = sides["trl"] / sides["align"]
        gen_rate = {side: statistics.median(r["summary"]["gen_tokens_per_s_per_gpu"] or 0.0 for r in runs) for side, runs in entry["runs"].items()}
        for side in gen_rate:
            if side.startswith("align-") and gen_rate.get("align"):
                entry[f"{side}_over_align_gen_tokens_per_s"] = gen_rate[side] / gen_rate["align"]
                entry[f"{side}_step_over_align_step"] = sides[side] / sides["align"]
        if "vllm" in entry["runs"] and "align" in entry["runs"]:  # align's rollout rate per engine over bare vLLM's (target >= 0.95)
            bare = statistics.median(r["summary"]["step_s"] for r in entry["runs"]["vllm"])
            rollout = statistics.median(r["summary"].get("rollout_s") or float("nan") for r in entry["runs"]["align"])
            entry["align_rollout_over_bare_vllm"] = bare / rollout
            console.print(f"{key}: align rollout / bare vLLM, generated tokens/s per engine = {entry['align_rollout_over_bare_vllm']:.2f}")
        report["policies"][key] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)  # each policy as it ends: a killed run keeps what it measured
        args.out.write_text(json.dumps(report, indent=1, default=str))
        for side, runs in entry["runs"].items():
            m = runs[0]["summary"]

            def f(key: str, fmt: str = "{:.2f}") -> str:
                v = m.get(key)
                return fmt.format(v) if v is not None else "-"

            table.add_row(policy, str(s.gpus), f"{n_all / 1e9:.3f}B", side, f("step_s"), f("rollout_s"), f("learner_s"), f("sync_s"), f("engine_idle_share"), f("gen_tokens_per_s_per_gpu", "{:,.0f}"),
                          f("tokens_per_s_per_gpu", "{:,.0f}"), f("learner_mfu", "{:.1%}"), f("peak_gpu_gib", "{:.1f}"), f("first_step_end_s", "{:.0f}"))  # fmt: skip
        if "trl_over_align_step" in entry:
            console.print(f"{key}: TRL step / align step = {entry['trl_over_align_step']:.2f}")
        for key_, ratio in entry.items():
            if key_.endswith("_over_align_gen_tokens_per_s"):
                console.print(f"{policy}: {key_.removesuffix('_over_align_gen_tokens_per_s')} / align, generated tokens/s/GPU = {ratio:.2f}")
            if key_.endswith("_step_over_align_step"):
                console.print(f"{policy}: {key_.removesuffix('_step_over_align_step')} step / align step = {ratio:.2f}")
    report["scaling"] = scaling(report["policies"], gpu_counts)
    for line in report["scaling"]:
        console.print(f"{line['policy']} {line['side']}: tokens/s/GPU at {line['gpus'][-1]} GPUs over {line['gpus'][0]} = {line['efficiency']:.2f}")
    report["load_1m_end"] = load1()
    console.print(table)
    console.print("context: NeMo-RL publishes 1,581 tokens/s/GPU for Llama-3.1-8B GRPO on 16 H100 (~1K generations); not measured here")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    console.print(f"wrote {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
