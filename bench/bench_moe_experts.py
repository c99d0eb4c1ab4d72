"""Training speed of transformers' MoE experts kernels (eager, grouped_mm, batched_mm) on the tiny
MoE hybrid: what ``learner.experts_implementation: auto`` chooses from.

    .venv/bin/python bench/bench_moe_experts.py [--batch 8] [--seq 128] [--repeats 6] [--threads 1] [--out FILE]

The policy of ``bench_moe_replay_proxy.py`` (``ME*ME*``, hidden 128, 8 experts, top-2, one shared
expert), float32 on CPU or bf16 on CUDA; one forward + backward per timing, the kernels
interleaved in a rotating order, the first round dropped; the median is reported. Writes
``bench/results/moe_experts.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_moe_replay_proxy import build  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "moe_experts.json"
KERNELS = ("eager", "grouped_mm", "batched_mm")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    model = build(8).train()
    if cuda:
        model = model.to("cuda", torch.bfloat16)
    ids = torch.randint(2, 512, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(model.device)
    times: dict[str, list[float]] = {k: [] for k in KERNELS}
    for rep in range(args.repeats):
        for kernel in KERNELS[rep % 3 :] + KERNELS[: rep % 3]:
            model.set_experts_implementation(kernel)
            t0 = time.perf_counter()
            model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
            if cuda:
                torch.cuda.synchronize()
            times[kernel].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    tokens = args.batch * args.seq
    rows = {k: {"step_s": statistics.median(v[1:]), "tokens_per_s": tokens / statistics.median(v[1:])} for k, v in times.items()}
    print(f"{args.batch}x{args.seq} tokens, forward + backward, {'cuda bf16' if cuda else f'cpu float32, {args.threads} thread(s)'}")
    for k, r in rows.items():
        print(f"{k:<11} {r['step_s']:.4f} s  {r['tokens_per_s']:>9.0f} tokens/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(), "cores": os.cpu_count(),
            "loadavg": os.getloadavg(), "torch": torch.__version__, **{k: v for k, v in vars(args).items() if k != "out"}}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
