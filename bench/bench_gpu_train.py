"""Learner throughput on one GPU: the hybrid NemotronH-style policy vs a Llama-style transformer.

Usage: ``python bench/bench_gpu_train.py [--device cuda] [--tiny] [--steps 5] [--warmup 2] [--graph-only] [--out FILE]``

Both models are built from a config with random weights at about the same parameter count
(~0.89B; ``--tiny`` shrinks them for a smoke test on CPU). Each case is plain PyTorch, bf16
weights, one AdamW step per iteration (forward, backward, step), no DeepSpeed, no activation
checkpointing; the loss is next-token cross-entropy on random token ids. Cases:

- ``dense``: batches 2x1024 and 8x1024 of full rows; the hybrid runs with transformers'
  PyTorch Mamba2 (``kernels=off``) and with ``mamba_ssm``'s kernels (:mod:`align.kernels`):
  ``scan`` (Triton SSD scan), ``scan+norm`` (plus the Triton gated RMSNorm: what a
  ``MAMBA_SKIP_CUDA_BUILD`` install gives), ``fused`` (mamba_ssm's fused conv+scan+norm+out_proj,
  when ``causal_conv1d`` is built).
- ``varlen``: 8 samples of 128..1024 tokens (fixed seed), padded to 1024 vs packed into rows
  (:func:`align.models.enable_packed_forward`); tokens/s counts real tokens only.
- ``dense`` with ``graph``: the Llama and the hybrid (best kernels) at 2x1024 and 8x1024 with the
  whole step (forward, loss, backward, AdamW) captured once in a CUDA graph and replayed. Why: at
  2x1024 the eager hybrid is host-bound, each Mamba2 backward spends 5-7 ms of CPU launching
  Triton kernels (11 Mamba2 layers), 37 ms of GPU work in a 126 ms step on an H100; a replay
  launches the whole step at once. Both architectures are captured, so their ratio stays fair.
  ``--graph-only`` runs just these four cases and their four eager twins.

CUDA-graph cases follow PyTorch's whole-network capture: three steps on a side stream first
(they also fill ``mamba_ssm``'s Triton autotune caches, whose benchmarking synchronizes and so
must not run during capture), AdamW with ``capturable=True``, then one captured step; each timed
step is a replay plus reading the loss (one sync, as the eager step's ``float(loss)``). Limits:
dense rows only (static shapes); no attention mask is passed, and transformers' packed-rows check
is answered "not packed" (while a stream captures it skips its host-side check and assumes
packing, which would build a ``[B, 1, T, T]`` mask and move SDPA off flash attention, unlike
the eager step); the loss is that of three more steps than the eager twin's; peak memory
includes the warmup and the graph's private pool. A failed capture is recorded as the case's
error (the first line of the exception that caused it) and the bench goes on (a PyTorch without
the fix for abandoned captures keeps that graph's memory pool reserved until exit); graph cases
on CPU are recorded as "cuda graphs need CUDA".

Reported per case: seconds per step (median of ``--steps`` after ``--warmup``), tokens/s, peak
GPU memory (``torch.cuda.max_memory_allocated``), and MFU = 6 * N * tokens/s / peak bf16 FLOP/s,
with N every parameter (the tied embedding once, since the LM head multiplies by it). 6N leaves
out attention's T^2 term and the SSM scan, so it slightly understates the work done. The peak
is the dense bf16 datasheet figure of the GPU found (the table in ``PEAK_BF16``); it is written
to the JSON. Out-of-memory is recorded as such, not as a crash.

Writes ``bench/results/bench_gpu_train.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, LlamaConfig, NemotronHConfig, PreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.kernels import disable_mamba_kernels, enable_mamba_kernels, kernel_status  # noqa: E402
from align.models import enable_packed_forward  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_gpu_train.json"
VOCAB = 32000
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's recipe uses 3)
# Dense bf16 tensor-core peaks (no sparsity), NVIDIA datasheets.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(name: str) -> tuple[float | None, str]:
    for key in ("H100 PCIe", "H100 NVL", "H100", "H200", "A100"):
        if key in name and not (key == "H100" and "PCIe" in name):
            return PEAK_BF16[key], key
    return None, "unknown"


def llama_config(tiny: bool) -> LlamaConfig:
    if tiny:
        return LlamaConfig(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                           intermediate_size=352, tie_word_embeddings=True, use_cache=False, max_position_embeddings=4096)  # fmt: skip
    # 888M: the Llama-style reference (hidden 2048, 16 layers, MHA, SwiGLU 5632).
    return LlamaConfig(vocab_size=VOCAB, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                       intermediate_size=5632, tie_word_embeddings=True, use_cache=False, max_position_embeddings=4096)  # fmt: skip


def hybrid_config(tiny: bool) -> NemotronHConfig:
    # 24 layers: 11 Mamba2, 11 MLP (relu2), 2 attention, as Nemotron-H interleaves them.
    pattern = "M-M-M-M-*M-M-M-M-*M-M-M-"
    if tiny:
        return NemotronHConfig(vocab_size=512, hidden_size=128, hybrid_override_pattern=pattern, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=32, intermediate_size=256, mamba_num_heads=4, mamba_head_dim=64,
                               ssm_state_size=32, n_groups=2, chunk_size=64, expand=2, mlp_hidden_act="relu2",
                               tie_word_embeddings=True, use_cache=False, max_position_embeddings=4096)  # fmt: skip
    # hidden 2048, Mamba2 64 heads x 64 (expand 2), 8 groups, state 128; MLP width set to match Llama's count.
    return NemotronHConfig(vocab_size=VOCAB, hidden_size=2048, hybrid_override_pattern=pattern, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128, intermediate_size=9024, mamba_num_heads=64, mamba_head_dim=64,
                           ssm_state_size=128, n_groups=8, chunk_size=128, expand=2, mlp_hidden_act="relu2",
                           tie_word_embeddings=True, use_cache=False, max_position_embeddings=4096)  # fmt: skip


@dataclass
class Case:
    arch: str
    kernels: str  # "off" / "scan" / "scan+norm" / "fused" for the hybrid, "n/a" for Llama
    batch: str  # "dense" / "varlen-padded" / "varlen-packed"
    rows: int
    seq_len: int
    graph: bool = False  # the whole step captured in one CUDA graph (dense batches only)


@dataclass
class Result:
    arch: str
    kernels: str
    batch: str
    shape: str
    params_m: float
    tokens_per_step: int
    graph: bool = False
    s_per_step: float | None = None
    tokens_per_s: float | None = None
    peak_mem_gib: float | None = None
    mfu: float | None = None
    loss: float | None = None
    error: str = ""


def varlen_lengths(rows: int, seq_len: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(seq_len // 8, seq_len + 1, (rows,), generator=g).tolist()


def make_batch(case: Case, vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (case.rows, case.seq_len), generator=g)
    mask = torch.ones_like(ids)
    if case.batch.startswith("varlen"):
        for i, n in enumerate(varlen_lengths(case.rows, case.seq_len)):
            mask[i, n:] = 0
            ids[i, n:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return ids.to(device), mask.to(device), labels.to(device), int(mask.sum())


def build(arch: str, tiny: bool, device: str) -> PreTrainedModel:
    torch.manual_seed(0)
    config = hybrid_config(tiny) if arch == "nemotron_h" else llama_config(tiny)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.train()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def set_kernels(mode: str, device: str) -> None:
    """``off``: transformers' PyTorch Mamba2; ``scan``: Triton SSD scan only; ``scan+norm``: plus the
    Triton gated RMSNorm; ``fused``: everything incl. ``causal_conv1d`` (mamba_ssm's fused path)."""
    if mode in ("off", "n/a"):
        disable_mamba_kernels()
        return
    cuda = device.startswith("cuda")
    enable_mamba_kernels(require_cuda=cuda, gated_norm=mode != "scan", conv=mode == "fused")


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def eager_step(model: PreTrainedModel, opt: torch.optim.Optimizer, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Callable[[], float]:
    def step() -> float:
        loss = next_token_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


@contextmanager
def dense_rows() -> Iterator[None]:
    """Tell transformers' mask code that no row is packed, without its host-side check.

    With ``attention_mask=None`` it looks for packed rows in ``position_ids`` and tests
    ``(...).all()`` on the host; while a stream captures it skips that test and assumes packing,
    so the captured step would build a ``[B, 1, T, T]`` mask and run SDPA without flash attention.
    The bench's dense rows hold one sample each, so "not packed" is the true answer.
    """
    import transformers.masking_utils as masking

    found = masking.find_packed_sequence_indices
    masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = found


def graph_step(model: PreTrainedModel, opt: torch.optim.Optimizer, ids: torch.Tensor, labels: torch.Tensor) -> Callable[[], float]:
    """Capture one whole training step in a CUDA graph; return a step that replays it and reads the loss.

    ``ids`` and ``labels`` are the graph's static inputs (the bench reuses one batch). ``opt`` must
    be built with ``capturable=True``. The warmup steps on a side stream initialize AdamW's state
    and compile and autotune every Triton kernel, neither of which may happen during capture.
    """

    def train_step() -> torch.Tensor:
        loss = next_token_loss(model(input_ids=ids, attention_mask=None).logits, labels)
        loss.backward()
        opt.step()
        return loss.detach()

    caller = torch.cuda.current_stream()
    graph = torch.cuda.CUDAGraph()
    with dense_rows():
        side = torch.cuda.Stream()
        side.wait_stream(caller)
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True")  # "step() is running without CUDA graph capture"
            for _ in range(GRAPH_WARMUP_STEPS):
                opt.zero_grad(set_to_none=True)
                train_step()
        caller.wait_stream(side)
        opt.zero_grad(set_to_none=True)  # backward then allocates the grads in the graph's pool
        try:
            with torch.cuda.graph(graph):
                static_loss = train_step()
        finally:
            torch.cuda.set_stream(caller)  # a failing capture_end skips the context's own restore

    def step() -> float:
        graph.replay()
        return float(static_loss)

    return step


def cause(e: BaseException) -> str:
    """First line of the exception that started it: a failed capture surfaces as ``capture_end``'s
    "operation failed due to a previous error during capture", with the real cause as its context."""
    while e.__context__ is not None:
        e = e.__context__
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def run_case(case: Case, tiny: bool, device: str, steps: int, warmup: int, peak: float | None, profile_dir: Path | None = None) -> Result:
    cuda = device.startswith("cuda")
    set_kernels(case.kernels, device)
    model = build(case.arch, tiny, device)
    if case.batch == "varlen-packed":
        enable_packed_forward(model, force=True)
    n_params = sum(p.numel() for p in model.parameters())
    ids, mask, labels, tokens = make_batch(case, model.config.vocab_size, device)
    res = Result(case.arch, case.kernels, case.batch, f"{case.rows}x{case.seq_len}", n_params / 1e6, tokens, case.graph)
    if case.graph and not cuda:
        res.error = "cuda graphs need CUDA"
        return res
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda, capturable=case.graph)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    step: Callable[[], float] | None = None
    times: list[float] = []
    try:
        step = graph_step(model, opt, ids, labels) if case.graph else eager_step(model, opt, ids, mask, labels)
        for i in range(warmup + steps):
            sync(device)
            start = time.perf_counter()
            res.loss = step()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        res.s_per_step = statistics.median(times)
        res.tokens_per_s = tokens / res.s_per_step
        if peak:
            res.mfu = 6 * n_params * res.tokens_per_s / peak
        if profile_dir is not None:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                sync(device)
            profile_dir.mkdir(parents=True, exist_ok=True)
            with open(profile_dir / "bench_gpu_train_profile.txt", "a") as f:
                f.write(f"\n=== {case.arch} kernels={case.kernels} {case.batch}{' graph' if case.graph else ''} {case.rows}x{case.seq_len}\n")
                f.write(prof.key_averages().table(sort_by="self_device_time_total", row_limit=30))
    except torch.OutOfMemoryError:
        res.error = "OOM"
    except Exception as e:  # capture or replay of a graph case; an eager case fails loudly as before
        if not case.graph:
            raise
        res.error = cause(e)
    if cuda:
        sync(device)
        res.peak_mem_gib = torch.cuda.max_memory_allocated() / 2**30
    del model, opt, ids, mask, labels, step  # the step holds the graph, its pool and the static loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def cases(only: set[str] | None, graph_only: bool = False) -> list[Case]:
    from align.kernels import _causal_conv1d

    best = "fused" if _causal_conv1d() is not None else "scan+norm"
    out = []
    for rows in (2, 8):
        for graph in (False, True):
            out.append(Case("llama", "n/a", "dense", rows, 1024, graph))
            out.append(Case("nemotron_h", best, "dense", rows, 1024, graph))
    if graph_only:
        return [c for c in out if only is None or c.batch in only]
    if best == "fused":
        out += [Case("nemotron_h", "scan+norm", "dense", 2, 1024), Case("nemotron_h", "scan+norm", "dense", 8, 1024)]
    out.append(Case("nemotron_h", "scan", "dense", 8, 1024))
    for batch in ("varlen-padded", "varlen-packed"):
        out.append(Case("llama", "n/a", batch, 8, 1024))
        out.append(Case("nemotron_h", best, batch, 8, 1024))
    # The PyTorch Mamba2 last: slowest, and the 8x1024 case may not fit.
    out += [Case("nemotron_h", "off", "dense", 2, 1024), Case("nemotron_h", "off", "dense", 8, 1024)]
    return [c for c in out if only is None or c.batch in only]


def table(results: list[Result], title: str) -> Table:
    t = Table(title=title)
    for col in ("arch", "kernels", "batch", "graph", "shape", "params (M)", "s/step", "tokens/s", "peak GiB", "MFU", "loss"):
        t.add_column(col, justify="right" if col not in ("arch", "kernels", "batch", "graph") else "left")
    for r in results:
        def f(v: float | None, fmt: str) -> str:
            return format(v, fmt) if v is not None else r.error or "-"
        t.add_row(r.arch, r.kernels, r.batch, "yes" if r.graph else "no", r.shape, f"{r.params_m:.0f}", f(r.s_per_step, ".3f"), f(r.tokens_per_s, ",.0f"),
                  f(r.peak_mem_gib, ".1f"), f(r.mfu, ".1%"), f(r.loss, ".3f"))  # fmt: skip
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small models (a CPU smoke test of the script)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated batch kinds: dense,varlen-padded,varlen-packed")
    ap.add_argument("--graph-only", action="store_true", help="only the dense CUDA-graph cases and their eager twins")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--profile", action="store_true", help="write a kernel-time table per case next to --out")
    args = ap.parse_args()
    if args.tiny:
        for c in (llama_config(True), hybrid_config(True)):
            c.max_position_embeddings = 4096
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    peak, peak_key = peak_flops(name) if args.device.startswith("cuda") else (None, "n/a")
    env: dict[str, Any] = {"device": name, "peak_bf16_flops": peak, "peak_source": f"datasheet dense bf16 ({peak_key})", "torch": torch.__version__}
    import transformers

    env["transformers"] = transformers.__version__
    try:
        from importlib.metadata import version

        env["mamba_ssm"] = version("mamba_ssm")
    except Exception:
        env["mamba_ssm"] = None
    console = Console()
    only = set(args.only.split(",")) if args.only else None
    results: list[Result] = []
    for case in cases(only, args.graph_only):
        res = run_case(case, args.tiny, args.device, args.steps, args.warmup, peak, args.out.parent if args.profile else None)
        if case.kernels not in ("off", "n/a"):
            env["kernel_status"] = kernel_status().as_dict()
        results.append(res)
        console.print(f"{res.arch:10s} kernels={res.kernels:3s} {res.batch + (' graph' if res.graph else ''):19s} {res.shape}: "
                      f"{res.s_per_step or 0:.3f} s/step, {res.tokens_per_s or 0:,.0f} tok/s, peak {res.peak_mem_gib or 0:.1f} GiB {res.error}")  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": env, "steps": args.steps,
                   "warmup": args.warmup, "results": [asdict(r) for r in results]}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(table(results, f"learner step, bf16 AdamW, {name}"))
    dense = [r for r in results if r.batch == "dense" and r.tokens_per_s]
    for rows in (2, 8):
        shape = f"{rows}x1024"
        for graph in (False, True):
            mode = "cuda graph" if graph else "eager"
            ll = [r for r in dense if r.arch == "llama" and r.shape == shape and r.graph == graph]
            for hy in (r for r in dense if r.arch == "nemotron_h" and r.shape == shape and r.graph == graph):
                if ll:
                    console.print(f"{mode}: hybrid ({hy.kernels}) / transformer tokens/s at {shape}: {hy.tokens_per_s / ll[0].tokens_per_s:.2f}x (target >= 0.8x)")
        for g in (r for r in dense if r.shape == shape and r.graph):
            for e in (r for r in dense if (r.arch, r.kernels, r.shape) == (g.arch, g.kernels, g.shape) and not r.graph):
                console.print(f"cuda graph / eager tokens/s, {g.arch} ({g.kernels}) at {shape}: {g.tokens_per_s / e.tokens_per_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
