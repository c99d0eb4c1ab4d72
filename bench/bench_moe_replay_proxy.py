"""How much of a bf16 learner's mismatch with a float32 sampler routing replay removes, on CPU.

    .venv/bin/python bench/bench_moe_replay_proxy.py [--sequences 32] [--new-tokens 48] [--experts 8] [--out FILE]

A stand-in for ``bench_moe_mismatch.py`` that needs no vLLM: the *sampler* is transformers in
float32 (it samples the completions, and a teacher-forced float32 forward over each whole
sequence gives its log-probs and the experts its routers chose, as an engine's prefill would);
the *learner* is the same weights in bfloat16, scored with its own routing and with routing
replay of the sampler's experts (``align.learner.routing_replay``). The precision gap plays the
part of the engine/trainer numerics gap; it flips top-k choices where two experts score close.

The policy: a tiny MoE hybrid of Nano 3's shape (``ME*ME*``: Mamba2, MoE, attention; hidden 128,
``--experts`` routed experts, top-2, one shared expert), random weights (seed 0). Prompts are 8
random tokens; completions are sampled at temperature 1.

Reported, over the completion tokens: the share of (token, MoE layer) routings whose top-k set
differs from the sampler's (``flips``), mismatch_kl (k3 KL(sampler || learner)), mean
|delta log p|, and the share of sequences whose mean exp(|delta log p|) exceeds 1.05 and 2.
Writes ``bench/results/moe_replay_proxy.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, NemotronHConfig  # noqa: E402

from align.learner.moe import moe_routers  # noqa: E402
from align.learner.routing_replay import set_replay  # noqa: E402
from align.losses import kl_k3, seq_logprob_error, token_logprobs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "moe_replay_proxy.json"


def build(n_experts: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = NemotronHConfig(
        vocab_size=512, hidden_size=128, hybrid_override_pattern="ME*ME*", num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, intermediate_size=256, mamba_num_heads=8, mamba_head_dim=32, ssm_state_size=16, n_groups=1,
        chunk_size=64, expand=2, n_routed_experts=n_experts, num_experts_per_tok=2, n_shared_experts=1,
        moe_intermediate_size=128, moe_shared_expert_intermediate_size=128, mlp_hidden_act="relu2", residual_in_fp32=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.set_experts_implementation("eager")
    return model


def forward(model: torch.nn.Module, ids: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the completion ([B, C]) and each token's top-k experts ([B, T, L, K])."""
    seen: list[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda m, a, out: seen.append(out[2])) for r in moe_routers(model)]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    for h in hooks:
        h.remove()
    b, t = ids.shape
    experts = torch.stack([s.view(b, t, -1) for s in seen], dim=2)
    lp = token_logprobs(logits[:, prompt_len - 1 : -1], ids[:, prompt_len:])
    return lp, experts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sampler = build(args.experts)
    learner = copy.deepcopy(sampler).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(2, 512, (args.sequences, 8), generator=g)
    torch.manual_seed(2)
    with torch.no_grad():
        ids = sampler.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0, top_k=0,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)  # fmt: skip
    sampler_lp, sampler_experts = forward(sampler, ids, 8)
    rows = {}
    for mode in ("off", "rollout"):
        set_replay(learner, sampler_experts if mode == "rollout" else None, torch.ones_like(ids))
        lp, experts = forward(learner, ids, 8)
        mask = torch.ones_like(lp)
        own = experts[:, 8:].sort(-1).values
        flips = (own != sampler_experts[:, 8:].sort(-1).values).any(-1).float().mean()
        err = seq_logprob_error(lp, sampler_lp, mask)
        rows[mode] = {
            "flips": float(flips),
            "mismatch_kl": float(kl_k3(sampler_lp, lp).mean()),
            "mismatch_abs_logp": float((lp - sampler_lp).abs().mean()),
            "seq_error_mean": float(err.mean()),
            "share_over_1.05": float((err > 1.05).float().mean()),
            "share_over_2": float((err > 2).float().mean()),
        }
    print(f"{args.sequences} sequences x {args.new_tokens} tokens, {args.experts} experts top-2; sampler float32, learner bfloat16")
    print(f"{'replay':<8} {'flips':>7} {'mismatch_kl':>12} {'|dlogp|':>9} {'seq err':>8} {'>1.05':>6} {'>2':>6}")
    for mode, r in rows.items():
        print(f"{mode:<8} {r['flips']:>7.4f} {r['mismatch_kl']:>12.3e} {r['mismatch_abs_logp']:>9.4f} {r['seq_error_mean']:>8.4f} "
              f"{r['share_over_1.05']:>6.3f} {r['share_over_2']:>6.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(), "cores": os.cpu_count(), "loadavg": os.getloadavg(), "torch": torch.__version__,
            "seconds": round(time.perf_counter() - t0, 1), **vars(args) | {"out": str(args.out)}}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
