"""GPU rollout and weight-sync bench: bare ``vllm.LLM.generate`` vs ``rollout.engine.VLLMEngine``.

    python bench/bench_gpu_rollout.py [--tiny --device cpu] [--repeats 5] [--prompts 64]
                                      [--prompt-len 128] [--max-tokens 256] [--sync-repeats 5]
                                      [--out bench/results/bench_gpu_rollout.json]

(a) Rollout tokens/s. One ~1B Llama-style model (random weights, HF folder, the tiny world's
    tokenizer saved beside it) is served by two engines in this process: a bare ``vllm.LLM``
    built with exactly the keyword arguments ``VLLMEngine`` passes to ``vllm.LLM`` on GPU
    (seed, dtype, eager, ``logprobs_mode="processed_logprobs"``, max_model_len, KV-cache
    bytes), and ``VLLMEngine`` itself. Both get the same prompts (random token ids), the same
    sampling parameters (temperature 1, no top-k/top-p, eos as stop, one seed per request,
    ``logprobs=0``, ``detokenize=False``). Each is warmed up once, then timed ``--repeats``
    times, interleaved, the order alternating. Reported: generated tokens / wall second,
    medians, and engine/bare.

(b) Weight sync, colocated. A learner copy of the model (HF ``LlamaForCausalLM``, bf16, same
    GPU, different random weights) is pushed into the engine with ``VLLMEngine.update_weights``
    (its ``state_dict``, GPU tensors). Timed with a device sync on both sides, ``--sync-repeats``
    times, median. Checked: after the update, the engine's embedding equals the learner's.
    Floor: the same number of bytes copied device-to-device by one ``torch`` copy (median of
    10 after warm-up); bandwidth is reported both as bytes/s and read+write bytes/s.

Writes the JSON to ``--out`` (and to ``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model_dir(path: Path, tiny: bool, device: str, dtype, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.tiny.tokenizer import save_tokenizer, train_tokenizer

    texts = [f"the {i} cat sat on {i * 7 % 13} mats; 1+{i}={i + 1}. <think>hmm</think>" for i in range(2000)]
    tok = train_tokenizer(texts, vocab_size=1024)
    if tiny:
        cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=2048, max_position_embeddings=2048,
                          tie_word_embeddings=True)
    else:  # Llama-3.2-1B shape with a 32k vocabulary: ~1.0B parameters
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=32768, max_position_embeddings=4096,
                          tie_word_embeddings=True, rope_theta=500000.0)
    cfg.bos_token_id = None
    cfg.eos_token_id = tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(str(path))
    save_tokenizer(tok, path)
    n = sum(p.numel() for p in model.parameters())
    del model
    return tok, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--sync-repeats", type=int, default=5)
    ap.add_argument("--kv-gib", type=float, default=8.0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/bench_gpu_rollout.json"))
    args = ap.parse_args()

    import torch

    cpu = args.device == "cpu"
    dtype = torch.float32 if cpu else torch.bfloat16
    dtype_name = "float32" if cpu else "bfloat16"
    kv_bytes = int((0.25 if cpu else args.kv_gib) * (1 << 30))
    max_model_len = args.prompt_len + args.max_tokens + 16
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_rollout_"))
    model_dir = tmp / "model"
    tok, n_params = build_model_dir(model_dir, args.tiny, args.device, dtype, seed=0)
    print(f"model: {n_params / 1e9:.3f}B params at {model_dir} ({time.perf_counter() - t0:.1f}s)", flush=True)

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm

    from rollout.engine import VLLMEngine
    from rollout.types import GenRequest

    info: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "n_params": n_params, "dtype": dtype_name,
                  "device": torch.cuda.get_device_name(0) if not cpu else "cpu"}
    # (a) the two engines, same vllm.LLM keyword arguments
    common = dict(seed=0, dtype=dtype_name, max_model_len=max_model_len, enforce_eager=True,
                  kv_cache_memory_bytes=kv_bytes)
    t = time.perf_counter()
    engine = VLLMEngine(str(model_dir), gpu_memory_utilization=0.3, **common)
    info["engine_start_s"] = time.perf_counter() - t
    bare_kwargs = dict(model=str(model_dir), gpu_memory_utilization=0.3, logprobs_mode="processed_logprobs",
                       **common)
    if cpu:  # what VLLMEngine adds on CPU
        bare_kwargs.update(enable_prefix_caching=False, enable_chunked_prefill=False,
                           max_num_batched_tokens=max(4096, max_model_len))
    t = time.perf_counter()
    bare = vllm.LLM(**bare_kwargs)
    info["bare_start_s"] = time.perf_counter() - t
    print(f"engines up: engine {info['engine_start_s']:.1f}s, bare {info['bare_start_s']:.1f}s", flush=True)

    g = torch.Generator().manual_seed(1)
    eos = tok.eos_token_id
    prompts = [torch.randint(10, 1000, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    reqs = [GenRequest(p, args.max_tokens, temperature=1.0, top_p=1.0, top_k=-1, stop_token_ids=[eos], seed=1000 + i,
                       request_id=str(i)) for i, p in enumerate(prompts)]
    SP = vllm.SamplingParams
    bare_prompts = [{"prompt_token_ids": list(p)} for p in prompts]

    def run_bare():
        params = [SP(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p, top_k=-1, seed=r.seed,
                     stop_token_ids=list(r.stop_token_ids), logprobs=0, detokenize=False) for r in reqs]
        out = bare.generate(bare_prompts, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in out)

    def run_engine():
        return sum(len(o.token_ids) for o in engine.generate(reqs))

    def sync():
        if not cpu:
            torch.cuda.synchronize()

    variants = {"bare": run_bare, "engine": run_engine}
    for name, fn in variants.items():  # warm-up
        fn()
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            sync()
            t = time.perf_counter()
            ntok = variants[name]()
            sync()
            dt = time.perf_counter() - t
            rows[name].append({"tokens": ntok, "s": dt, "tok_s": ntok / dt})
            print(f"repeat {r} {name:7s} {ntok} tok {dt:.3f}s {ntok / dt:,.0f} tok/s", flush=True)
    med = {k: statistics.median(x["tok_s"] for x in v) for k, v in rows.items()}
    rollout = {"settings": {"prompts": args.prompts, "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
                            "temperature": 1.0, "enforce_eager": True, "kv_cache_bytes": kv_bytes,
                            "repeats": args.repeats},
               "runs": rows, "median_tok_s": med, "engine_over_bare": med["engine"] / med["bare"]}
    # keep ``bare`` alive: deleting one in-process vllm.LLM tears down the parallel groups the other uses

    # (b) weight sync through VLLMEngine.update_weights, learner colocated on the same device
    from transformers import LlamaForCausalLM

    torch.manual_seed(123)
    learner = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(args.device)
    with torch.no_grad():
        for p in learner.parameters():  # new weights, so the check below can tell
            p.add_(torch.randn_like(p) * 0.01)
    sd = learner.state_dict()
    seen, nbytes = set(), 0
    for v in sd.values():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            nbytes += v.numel() * v.element_size()

    def _embed_sum(worker):
        m = worker.model_runner.model
        return [float(m.model.embed_tokens.weight.float().sum()), float(m.model.layers[0].mlp.down_proj.weight.float().sum())]

    want = [float(learner.model.embed_tokens.weight.detach().float().sum()),
            float(learner.model.layers[0].mlp.down_proj.weight.detach().float().sum())]
    before = engine.llm.collective_rpc(_embed_sum)[0]
    times = []
    for r in range(args.sync_repeats + 1):
        sync()
        t = time.perf_counter()
        engine.update_weights(sd)
        sync()
        dt = time.perf_counter() - t
        if r:  # first is warm-up
            times.append(dt)
        print(f"update_weights {r}: {dt:.4f}s", flush=True)
    after = engine.llm.collective_rpc(_embed_sum)[0]
    ok = all(abs(a - w) <= 1e-3 * max(1.0, abs(w)) for a, w in zip(after, want, strict=True))
    # floor: one device copy of the same bytes
    src = torch.empty(nbytes, dtype=torch.uint8, device=args.device)
    dst = torch.empty_like(src)
    ctimes = []
    for i in range(13):
        sync()
        t = time.perf_counter()
        dst.copy_(src)
        sync()
        if i >= 3:
            ctimes.append(time.perf_counter() - t)
    copy_s = statistics.median(ctimes)
    sync_s = statistics.median(times)
    weight_sync = {"bytes": nbytes, "n_tensors": len(sd), "update_weights_s": times, "median_s": sync_s,
                   "effective_GBps": nbytes / sync_s / 1e9, "copy_floor_s": copy_s,
                   "copy_GBps": nbytes / copy_s / 1e9, "copy_rw_GBps": 2 * nbytes / copy_s / 1e9,
                   "over_floor": sync_s / copy_s, "embed_sum_before": before, "embed_sum_after": after,
                   "embed_sum_learner": want, "weights_applied": ok}
    # a generation after the update still works
    post = engine.generate(reqs[:4])
    weight_sync["post_update_tokens"] = sum(len(o.token_ids) for o in post)

    res = {"info": info, "rollout": rollout, "weight_sync": weight_sync}
    print("\n| what | value |\n| --- | --- |")
    print(f"| model | {n_params / 1e9:.3f}B params, {dtype_name}, {info['device']}, vllm {info['vllm']} |")
    for k in ("bare", "engine"):
        print(f"| {k} tokens/s (median of {args.repeats}) | {med[k]:,.0f} |")
    print(f"| engine / bare | {rollout['engine_over_bare']:.3f} |")
    print(f"| update_weights (median of {args.sync_repeats}) | {sync_s * 1e3:.1f} ms for {nbytes / 1e9:.3f} GB "
          f"({weight_sync['effective_GBps']:.1f} GB/s), applied={ok} |")
    print(f"| torch copy floor, same bytes | {copy_s * 1e3:.2f} ms ({weight_sync['copy_GBps']:.0f} GB/s, "
          f"{weight_sync['copy_rw_GBps']:.0f} GB/s read+write) |")
    print(f"| update_weights / floor | {weight_sync['over_floor']:.1f}x |")
    text = json.dumps(res, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu_rollout.json").write_text(text)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
