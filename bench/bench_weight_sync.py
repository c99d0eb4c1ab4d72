"""Weight sync learner -> rollout engine against model size, per transport, and its floor.

    .venv/bin/python bench/bench_weight_sync.py [--sizes 1M,10M,50M,150M] [--repeats 5]
    python bench/bench_weight_sync.py --placement colocated --sizes 1B     # one GPU
    python bench/bench_weight_sync.py --placement separate --sizes 1B      # two GPUs

For each size a NemotronH policy (the tiny world's architecture scaled by hidden size and layer
count, built from a config with ``align.models.build_tiny_model``, random weights, the tiny-sft
tokenizer) is saved, then the RL driver's objects are started on it: a ``LearnerGroup`` (one
DeepSpeed learner, ZeRO 0, a Ray actor) and a ``RolloutGroup`` (one vLLM engine, a Ray actor, the
``nano3-multienv-tiny`` recipe's rollout settings). Placements:

- ``cpu``: both on CPU, fp32; transports ``object_store`` and ``broadcast`` (gloo), plus an
  in-process engine (``push_inproc``: tensors handed over in one process);
- ``colocated``: learner and engine on one GPU (0.5 + 0.4 of it), bf16; ``object_store`` and
  ``cuda_ipc``;
- ``separate``: one GPU each, bf16; ``object_store`` and ``broadcast`` (NCCL).

Timed, interleaved per repeat: each transport's ``WeightSync.push()`` (what the RL driver's
``time_sync_s`` measures), and for ``object_store`` its two hops (``gather``: learner -> driver;
``push``: driver -> engine). ``copy`` is one ``torch`` copy of a buffer of the state dict's size
on the learner's device (GPU placements: on the GPU), the floor: the time to move the weights
once. After the timed pushes the engine's greedy output is compared with what it gave after an
``object_store`` push of the same weights (a transport that loaded wrong weights shows there).

Writes ``bench/results/weight_sync[_PLACEMENT].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.learner.ds_build import use_align_cache  # noqa: E402

use_align_cache()  # where `make install` built DeepSpeed's CPU comm op

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "weight_sync.json"
RECIPE = "nano3-multienv-tiny"

# name -> (hidden_size, NemotronH layer pattern, attention heads); head_dim 64 beyond the tiny one
# (vLLM's CPU attention needs head_dim >= 32), Mamba heads of 32 with expand 2, MLP 4x hidden.
SIZES: dict[str, tuple[int, str, int]] = {
    "1M": (128, "M*-M*-", 4),
    "10M": (512, "M*-M*-", 8),
    "50M": (768, "M*-" * 5, 12),
    "150M": (1280, "M*-" * 5, 20),
    "1B": (2048, "M*-" * 8, 32),  # GPU placements
}
TRANSPORTS = {"cpu": ["object_store", "broadcast"], "colocated": ["object_store", "cuda_ipc"], "separate": ["object_store", "broadcast"]}


def build_checkpoint(name: str, tokenizer_path: str, out: Path) -> Path:
    from align.config.schema import ModelConfig, TinyModelConfig
    from align.models import build_tiny_model, load_tokenizer

    hidden, pattern, heads = SIZES[name]
    tiny = TinyModelConfig(hidden_size=hidden, layers_block_type=pattern, num_attention_heads=heads, num_key_value_heads=heads // 2,
                           intermediate_size=2 * hidden if hidden == 128 else 4 * hidden, mamba_num_heads=2 * hidden // 32,
                           mamba_head_dim=32)  # fmt: skip
    tokenizer = load_tokenizer(tokenizer_path)
    model = build_tiny_model(ModelConfig(tiny=tiny, dtype="float32"), tokenizer, seed=0)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def copy_seconds(nbytes: int, device: str) -> float:
    """One ``dst.copy_(src)`` of ``nbytes`` (float32 buffers) on ``device``, timed once."""
    n = max(1, nbytes // 4)
    src = torch.randn(n, device=device)
    dst = torch.empty(n, device=device)
    dst.copy_(src)  # touch the pages first
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    dst.copy_(src)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_size(name: str, tokenizer_path: str, workdir: Path, repeats: int, placement: str, bucket_mb: int) -> dict[str, Any]:
    import asyncio

    from align.cluster import LearnerGroup, RolloutGroup
    from align.weight_sync import WeightSync
    from align.config import load_recipe
    from align.config.schema import ClusterConfig, LearnerConfig
    from rollout.types import GenRequest

    r = load_recipe(RECIPE, job="rl").recipe
    gpu = placement != "cpu"
    path = build_checkpoint(name, tokenizer_path, workdir / name)
    gpus = {"cpu": (0.0, 0.0), "colocated": (0.5, 0.4), "separate": (1.0, 1.0)}[placement]
    cluster = ClusterConfig(num_learners=1, cpus_per_learner=1, num_rollout_engines=1, gpus_per_learner=gpus[0], gpus_per_rollout_engine=gpus[1])
    t0 = time.perf_counter()
    learners = LearnerGroup(cluster)
    learners.setup(str(path), LearnerConfig(zero_stage=0, precision="auto" if gpu else "fp32", micro_batch_size_per_device=1), total_steps=1, seed=0)
    rollout_cfg = r.rollout.model_copy(update={"gpu_memory_utilization": 0.15}) if gpu else r.rollout
    rollout = RolloutGroup(cluster, rollout_cfg, str(path), seed=0, dtype="bfloat16" if gpu else "float32")
    local = RolloutGroup(cluster, r.rollout, str(path), seed=0, in_process=True, dtype="float32") if not gpu else None
    start_s = time.perf_counter() - t0
    prompt = [GenRequest(list(range(5, 37)), 24, temperature=0.0)]
    try:
        syncs = {t: WeightSync(learners, rollout, t, bucket_mb=bucket_mb) for t in TRANSPORTS[placement]}
        described = {t: s.describe() for t, s in syncs.items()}
        sd = learners.state_dict()
        params = sum(t.numel() for t in sd.values())
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        for s_ in syncs.values():
            s_.push()  # warm-up of each path
        reference = asyncio.run(rollout.generate(prompt))[0].token_ids
        holder: dict[str, Any] = {"sd": sd}

        def gather() -> None:
            holder["sd"] = learners.state_dict()

        steps: dict[str, Callable[[], Any]] = {
            "gather": gather,
            "push": lambda: rollout.update_weights(holder["sd"]),
            **{t: s_.push for t, s_ in syncs.items()},
        }
        if local is not None:
            local.update_weights(sd)
            steps["push_inproc"] = lambda: local.update_weights(holder["sd"])
        times: dict[str, list[float]] = {k: [] for k in [*steps, "copy"]}
        loads = []
        same: dict[str, bool] = {}
        for rep in range(repeats):
            names = list(steps)
            for k in names[rep % len(names) :] + names[: rep % len(names)]:
                t = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t)
                if k in syncs and rep == 0:
                    same[k] = asyncio.run(rollout.generate(prompt))[0].token_ids == reference
            times["copy"].append(copy_seconds(nbytes, "cuda" if gpu else "cpu"))
            loads.append(round(os.getloadavg()[0], 2))
    finally:
        learners.shutdown()
        rollout.shutdown()
        del local
    med = {k: statistics.median(v) for k, v in times.items()}
    floor_s = med["copy"]
    return {
        "size": name,
        "placement": placement,
        "transports": described,
        "greedy_output_unchanged": same,
        "config": dict(zip(("hidden_size", "layers_block_type", "num_attention_heads"), SIZES[name])),
        "params": params,
        "state_dict_bytes": nbytes,
        "tensors": len(sd),
        "start_s": round(start_s, 2),
        "copy_bandwidth_gb_per_s": nbytes / floor_s / 1e9,
        "floor_s": floor_s,
        "median_s": med,
        "gb_per_s": {k: nbytes / v / 1e9 for k, v in med.items()},
        "ratio_to_floor": {k: v / floor_s for k, v in med.items()},
        "samples_s": times,
        "load_avg_1m": loads,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokenizer", default="runs/tiny-sft/final")
    p.add_argument("--placement", choices=list(TRANSPORTS), default="cpu")
    p.add_argument("--bucket-mb", type=int, default=512)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; known: {list(SIZES)}")

    from rich.console import Console
    from rich.table import Table

    from align.cluster import init_ray

    init_ray(num_cpus=max(4, os.cpu_count() or 1))
    workdir = Path(tempfile.mkdtemp(prefix="bench_weight_sync_"))
    tok = workdir / "tokenizer"
    if Path(args.tokenizer).is_dir():
        shutil.copytree(args.tokenizer, tok)
    else:  # a fresh machine (a GPU one) has no tiny-sft run: train the tiny world's tokenizer
        from align.config.schema import ModelConfig, TokenizerConfig
        from align.init_checkpoint import prepare_initial_checkpoint

        print(f"{args.tokenizer} not found: training the tiny world's tokenizer", flush=True)
        prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(), tok)
    rows = []
    try:
        for name in sizes:
            row = bench_size(name, str(tok), workdir, args.repeats, args.placement, args.bucket_mb)
            rows.append(row)
            print(f"{name}: {row['params'] / 1e6:.2f}M params, " + ", ".join(f"{t} {row['median_s'][t]:.4f} s" for t in TRANSPORTS[args.placement])
                  + f", floor {row['floor_s']:.5f} s, greedy unchanged {row['greedy_output_unchanged']}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "bench/bench_weight_sync.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "recipe": RECIPE,
        "placement": args.placement,
        "bucket_mb": args.bucket_mb,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "repeats": args.repeats,
        "sizes": rows,
    }
    out = args.out or (RESULTS if args.placement == "cpu" else RESULTS.with_name(f"weight_sync_{args.placement}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    transports = TRANSPORTS[args.placement] + (["push_inproc"] if args.placement == "cpu" else [])
    table = Table(title=f"weight sync, {args.placement} ({os.cpu_count()} cores, {args.repeats} repeats, medians)", title_justify="left")
    for col in ("size", "params", "MB", "gather s", "push s", *(f"{t} s (x floor)" for t in transports), "floor s (copy GB/s)", "load"):
        table.add_column(col, justify="right")
    for row in rows:
        m, ratio = row["median_s"], row["ratio_to_floor"]
        table.add_row(row["size"], f"{row['params'] / 1e6:.2f}M", f"{row['state_dict_bytes'] / 1e6:.1f}", f"{m['gather']:.3f}", f"{m['push']:.3f}",
                      *(f"{m[t]:.4f} ({ratio[t]:.0f})" for t in transports),
                      f"{row['floor_s']:.5f} ({row['copy_bandwidth_gb_per_s']:.1f})", f"{statistics.median(row['load_avg_1m'])}")  # fmt: skip
    Console(width=240).print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
