"""Weight sync learner -> rollout engine against model size, and its floor.

    .venv/bin/python bench/bench_weight_sync.py [--sizes 1M,10M,50M,150M] [--repeats 5]

For each size a tiny NemotronH policy (the tiny world's architecture, scaled by hidden size
and layer count, built from a config with ``align.models.build_tiny_model``, random weights,
the tiny-sft tokenizer) is saved, then the RL driver's objects are started on it: a
``LearnerGroup`` (one DeepSpeed learner, ZeRO 0, fp32, a Ray actor) and a ``RolloutGroup`` (one
vLLM engine, a Ray actor, the ``nano3-multienv-tiny`` recipe's rollout settings), plus an
in-process ``RolloutGroup`` (the ``in_process=True`` path). Timed, interleaved per repeat:

- ``gather``: ``LearnerGroup.state_dict()`` (the learner copies its weights to CPU tensors,
  Ray moves them to the driver);
- ``push_ray``: ``RolloutGroup.update_weights(state_dict)`` over Ray (``ray.put``, the engine
  actor fetches and deserializes, ``reload_weights`` copies into the model);
- ``sync_ray`` = gather + push_ray: the driver's ``time_sync_s``;
- ``ray_put``: ``ray.put(state_dict)`` alone (part of push_ray);
- ``push_inproc``: ``RolloutGroup(in_process=True).update_weights(state_dict)``;
- ``gather_np`` / ``push_np``: the same two hops with the tensors sent as NumPy arrays
  (``tensor.numpy()`` on the sending side, ``torch.from_numpy`` on the receiving side), which
  Ray moves as out-of-band pickle-5 buffers instead of pickling each tensor's storage: not
  what the driver does today, measured to size the fix (same actors, interleaved);
- ``copy``: one ``torch`` copy of a buffer of the state dict's size (``dst.copy_(src)``),
  which gives the machine's measured copy bandwidth.

The floor is the state dict's bytes over that bandwidth: the time to move the weights once.
Every sync above moves them several times (learner copy, serialization, the engine's load),
so the ratio to the floor says how many copies' worth of time the path costs.

Writes ``bench/results/weight_sync.json``. Limits: a shared 2-core machine (the JSON records
the load average); on GPU the push would go through NCCL / CUDA IPC, which is not measured.
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
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
}


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


def copy_seconds(nbytes: int) -> float:
    """One ``dst.copy_(src)`` of ``nbytes`` (float32 buffers), timed once."""
    n = max(1, nbytes // 4)
    src = torch.randn(n)
    dst = torch.empty(n)
    dst.copy_(src)  # touch the pages first
    t0 = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - t0


def bench_size(name: str, tokenizer_path: str, workdir: Path, repeats: int) -> dict[str, Any]:
    import ray

    from align.cluster import LearnerGroup, RolloutGroup
    from align.config import load_recipe
    from align.config.schema import ClusterConfig, LearnerConfig

    r = load_recipe(RECIPE, job="rl").recipe
    path = build_checkpoint(name, tokenizer_path, workdir / name)
    cluster = ClusterConfig(num_learners=1, cpus_per_learner=1, num_rollout_engines=1)
    t0 = time.perf_counter()
    learners = LearnerGroup(cluster)
    learners.setup(str(path), LearnerConfig(zero_stage=0, precision="fp32", micro_batch_size_per_device=1), total_steps=1, seed=0)
    rollout = RolloutGroup(cluster, r.rollout, str(path), seed=0, dtype="float32")
    local = RolloutGroup(cluster, r.rollout, str(path), seed=0, in_process=True, dtype="float32")
    start_s = time.perf_counter() - t0
    try:
        sd = learners.state_dict()
        params = sum(t.numel() for t in sd.values())
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        rollout.update_weights(sd)  # warm-up of each path
        local.update_weights(sd)
        holder: dict[str, Any] = {"sd": sd}

        def gather() -> None:
            holder["sd"] = learners.state_dict()

        def put() -> None:
            ref = ray.put(holder["sd"])
            del ref

        learner, engine = learners.actors[0], rollout.engines[0]

        def gather_np() -> None:
            arrays = ray.get(learner.__ray_call__.remote(lambda self: {k: v.numpy() for k, v in self.state_dict().items()}))
            holder["np"] = {k: torch.from_numpy(v) for k, v in arrays.items()}

        def push_np() -> None:
            ref = ray.put({k: v.numpy() for k, v in holder.get("np", holder["sd"]).items()})
            ray.get(engine.__ray_call__.remote(lambda self, arrays: self.update_weights({k: torch.from_numpy(v) for k, v in arrays.items()}), ref))

        steps: dict[str, Callable[[], Any]] = {
            "gather": gather,
            "push_ray": lambda: rollout.update_weights(holder["sd"]),
            "ray_put": put,
            "push_inproc": lambda: local.update_weights(holder["sd"]),
            "gather_np": gather_np,
            "push_np": push_np,
        }
        times: dict[str, list[float]] = {k: [] for k in [*steps, "copy"]}
        loads = []
        for rep in range(repeats):
            names = list(steps)
            for k in names[rep % len(names) :] + names[: rep % len(names)]:
                t = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t)
            times["copy"].append(copy_seconds(nbytes))
            loads.append(round(os.getloadavg()[0], 2))
        times["sync_ray"] = [a + b for a, b in zip(times["gather"], times["push_ray"])]
        times["sync_np"] = [a + b for a, b in zip(times["gather_np"], times["push_np"])]
    finally:
        learners.shutdown()
        rollout.shutdown()
        del local
    med = {k: statistics.median(v) for k, v in times.items()}
    floor_s = med["copy"]
    return {
        "size": name,
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
    args = p.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; known: {list(SIZES)}")

    from rich.console import Console
    from rich.table import Table

    from align.cluster import init_ray

    init_ray(num_cpus=2)
    workdir = Path(tempfile.mkdtemp(prefix="bench_weight_sync_"))
    tok = workdir / "tokenizer"
    shutil.copytree(args.tokenizer, tok)
    rows = []
    try:
        for name in sizes:
            row = bench_size(name, str(tok), workdir, args.repeats)
            rows.append(row)
            print(f"{name}: {row['params'] / 1e6:.2f}M params, sync_ray {row['median_s']['sync_ray']:.3f} s, "
                  f"push_inproc {row['median_s']['push_inproc']:.3f} s, floor {row['floor_s']:.4f} s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "bench/bench_weight_sync.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "recipe": RECIPE,
        "repeats": args.repeats,
        "sizes": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"weight sync ({os.cpu_count()} cores, {args.repeats} repeats, medians)", title_justify="left")
    for col in ("size", "params", "MB", "gather s", "push_ray s", "sync_ray s", "sync GB/s", "x floor", "sync_np s", "np x floor",
                "push_inproc s", "inproc x floor", "ray_put s", "floor s (copy GB/s)", "load"):  # fmt: skip
        table.add_column(col, justify="right")
    for row in rows:
        m, ratio = row["median_s"], row["ratio_to_floor"]
        table.add_row(row["size"], f"{row['params'] / 1e6:.2f}M", f"{row['state_dict_bytes'] / 1e6:.1f}", f"{m['gather']:.3f}", f"{m['push_ray']:.3f}",
                      f"{m['sync_ray']:.3f}", f"{row['gb_per_s']['sync_ray']:.2f}", f"{ratio['sync_ray']:.0f}", f"{m['sync_np']:.3f}", f"{ratio['sync_np']:.0f}", f"{m['push_inproc']:.3f}",
                      f"{ratio['push_inproc']:.0f}", f"{m['ray_put']:.3f}", f"{row['floor_s']:.4f} ({row['copy_bandwidth_gb_per_s']:.1f})",
                      f"{statistics.median(row['load_avg_1m'])}")  # fmt: skip
    Console(width=240).print(table)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
