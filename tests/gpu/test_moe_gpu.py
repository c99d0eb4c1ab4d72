"""MoE layers on a GPU: the learner's experts kernel choice, grouped_mm against eager in bf16, and
routing replay under grouped_mm (the kernel the learner uses there).

Needs a CUDA GPU of compute capability 8.0 or more; no DeepSpeed, Ray or vLLM.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, NemotronHConfig

from align.config.schema import LearnerConfig
from align.learner.moe import configure_moe, moe_routers
from align.learner.routing_replay import set_replay

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0), reason="needs a CUDA GPU, sm80+"),
]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = NemotronHConfig(
        vocab_size=1024, hidden_size=256, hybrid_override_pattern="ME*ME*", num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, intermediate_size=512, mamba_num_heads=8, mamba_head_dim=64, ssm_state_size=32, n_groups=1,
        chunk_size=64, expand=2, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, moe_intermediate_size=256,
        moe_shared_expert_intermediate_size=256, mlp_hidden_act="relu2", residual_in_fp32=False, pad_token_id=0,
        eos_token_id=1, bos_token_id=None, tie_word_embeddings=True, use_cache=False,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).cuda()


def test_auto_picks_grouped_mm_and_it_matches_eager_in_bf16() -> None:
    model = _model()
    ids = torch.randint(2, 1024, (4, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    done = configure_moe(model, LearnerConfig(), freeze_router=True)
    assert done["experts_implementation"] == "grouped_mm" and model.config._experts_implementation == "grouped_mm"
    routed: list[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda m, a, out: routed.append(out[2])) for r in moe_routers(model)]
    grouped = model(input_ids=ids).logits.float()
    for h in hooks:
        h.remove()
    grouped.logsumexp(-1).mean().backward()
    assert all(r.weight.grad is None for r in moe_routers(model)), "a frozen router gets no gradient"
    expert_grad = model.model.layers[1].mixer.experts.up_proj.grad
    assert expert_grad is not None and expert_grad.abs().sum() > 0
    configure_moe(model, LearnerConfig(experts_implementation="eager"), freeze_router=True)
    # bf16 rounding differs between the kernels, so a few near-tied routings flip (on CPU: max
    # |logit diff| 0.15 from those, 0.008 without them). With grouped_mm's routing replayed, the
    # kernels compute the same function.
    set_replay(model, torch.stack([r.view(4, 256, -1) for r in routed], dim=2), torch.ones_like(ids))
    with torch.no_grad():
        eager = model(input_ids=ids).logits.float()
    diff = (grouped.detach() - eager).abs()
    assert diff.max() < 0.1 and diff.mean() < 0.01, (float(diff.max()), float(diff.mean()))


def test_replay_under_grouped_mm_uses_the_given_experts() -> None:
    model = _model().eval()
    configure_moe(model, LearnerConfig(), freeze_router=True)
    ids = torch.randint(2, 1024, (2, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    used: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: used.append(args[1].clone())) for m in model.modules() if type(m).__name__ == "NemotronHExperts"]
    with torch.no_grad():
        own = model(input_ids=ids).logits
    # Experts 12..15 for every token, except the second sequence's first 8 tokens (-1: own routing).
    given = torch.arange(12, 16, device="cuda").expand(2, 64, 2, 4).clone()
    given[1, :8] = -1
    own_indices = [u.view(2, 64, 4) for u in used]
    used.clear()
    set_replay(model, given, torch.ones_like(ids))
    with torch.no_grad():
        replayed = model(input_ids=ids).logits
    for layer, u in enumerate(used):
        u = u.view(2, 64, 4)
        assert torch.equal(u[0], given[0, :, layer]) and torch.equal(u[1, 8:], given[1, 8:, layer])
    # Unreplayed tokens route themselves: in the first MoE layer their inputs are untouched by the
    # replay (later layers could differ in bf16 rounding through other tokens' expert GEMMs).
    assert torch.equal(used[0].view(2, 64, 4)[1, :8], own_indices[0][1, :8])
    assert (replayed.float() - own.float()).abs().max() > 1e-2
    for h in hooks:
        h.remove()
