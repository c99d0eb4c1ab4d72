"""DeepSpeed learners on the tiny MoE hybrid: a frozen router stays put through RL steps, ZeRO-3
gathers the experts (two ranks equal one), LoRA on the routed experts trains and merges.

Routing replay is on in these steps (random expert choices in the micro-batches), so it is also
exercised through the DeepSpeed engine, Ray and ZeRO-3's partitioned routers.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs
from align.cluster import LearnerGroup, init_ray
from align.config.schema import ClusterConfig, LearnerConfig, LoraConfig
from align.losses import IGNORE

STEPS = 2
ROUTERS = ("model.layers.1.mixer.gate.weight", "model.layers.4.mixer.gate.weight")
BASE = dict(micro_batch_size_per_device=2, lr=1e-2, lr_schedule="constant", max_grad_norm=1.0, freeze_router=True)


def _micro_batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    """2 micro-batches of 2 sequences: a 6-token prompt, a completion, right padding, routed experts."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(4, vocab, (2, 20), generator=g)
        attn = torch.ones_like(ids)
        attn[1, 15:] = 0
        labels = ids.clone()
        labels[:, :6] = IGNORE
        labels[attn == 0] = IGNORE
        experts = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(2 * 20 * 2)]).view(2, 20, 2, 2)
        experts[:, -3:] = -1  # tokens the engine did not route
        out.append({"input_ids": ids, "attention_mask": attn, "labels": labels, "loss_mask": (labels[:, 1:] != IGNORE).float(),
                    "advantages": torch.tensor([1.0, -1.0]), "routed_experts": experts.to(torch.int16)})  # fmt: skip
    total = sum(float(mb["loss_mask"].sum()) for mb in out)
    for mb in out:
        mb["loss_denominator"] = torch.tensor(total)
    return out


def _rl_steps(group: LearnerGroup, layout: list[list[int]], mbs: list[dict[str, torch.Tensor]]) -> list[float]:
    """STEPS GRPO steps; old log-probs from the learners first (the rollout's are set equal to them)."""
    per_rank = [[dict(mbs[i]) for i in rank] for rank in layout]
    for rank_mbs, lps in zip(per_rank, group.compute(per_rank, TokenLogprobs()), strict=True):
        for mb, lp in zip(rank_mbs, lps, strict=True):
            mb["old_logprobs"] = mb["rollout_logprobs"] = lp
    objective = GRPOObjective(clip_low=0.2, clip_high=0.28, aggregation="token", tis_cap=2.0)
    return [group.train_step(per_rank, objective)["loss"] for _ in range(STEPS)]


@pytest.fixture(scope="module")
def ray_session():
    init_ray()


def _initial(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under transformers' in-memory names (the file keeps per-expert names)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def _moved(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def test_frozen_router_stays_and_zero3_pair_equals_one_learner(tiny_moe_checkpoint, tiny_moe_config, ray_session) -> None:
    init = _initial(tiny_moe_checkpoint)
    mbs = _micro_batches(tiny_moe_config.vocab_size)

    single = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1))
    try:
        single.setup(tiny_moe_checkpoint, LearnerConfig(zero_stage=0, gradient_accumulation_steps=2, **BASE), STEPS, seed=0)
        expected = _rl_steps(single, [[0, 1]], mbs)
        ref = single.state_dict()
    finally:
        single.shutdown()

    for name in ROUTERS:
        assert torch.equal(ref[name], init[name]), f"{name} moved though the router is frozen"
    for name in ("model.layers.1.mixer.experts.up_proj", "model.layers.4.mixer.experts.down_proj",
                 "model.layers.1.mixer.shared_experts.up_proj.weight", "model.layers.2.mixer.q_proj.weight"):  # fmt: skip
        assert _moved(ref[name], init[name]) > 1e-4, f"{name} should have trained"

    pair = LearnerGroup(ClusterConfig(num_learners=2, cpus_per_learner=1))
    try:
        pair.setup(tiny_moe_checkpoint, LearnerConfig(zero_stage=3, gradient_accumulation_steps=1, **BASE), STEPS, seed=0)
        got = _rl_steps(pair, [[0], [1]], mbs)
        gathered = pair.state_dict()
    finally:
        pair.shutdown()

    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert set(gathered) == set(ref)
    assert all(gathered[k].shape == ref[k].shape for k in ref), "ZeRO-3 must gather whole expert tensors"
    assert max(_moved(gathered[k], ref[k]) for k in ref) < 1e-4
    for name in ROUTERS:
        assert torch.equal(gathered[name], init[name])


def test_lora_on_routed_experts_trains_and_merges(tiny_moe_checkpoint, tiny_moe_config, ray_session) -> None:
    init = _initial(tiny_moe_checkpoint)
    mbs = _micro_batches(tiny_moe_config.vocab_size)
    cfg = LearnerConfig(zero_stage=0, gradient_accumulation_steps=2, lora=LoraConfig(r=4, alpha=8), **BASE)
    group = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1))
    try:
        group.setup(tiny_moe_checkpoint, cfg, STEPS, seed=0)
        losses = _rl_steps(group, [[0, 1]], mbs)
        merged = group.state_dict()
        plain = [{k: v for k, v in mb.items() if k != "routed_experts"} for mb in mbs]
        learner_logps = group.compute([plain], TokenLogprobs())[0]
    finally:
        group.shutdown()

    assert set(merged) == set(init), "merged LoRA weights must carry the checkpoint's names"
    assert all(l == l for l in losses)
    # LoRA on the routed experts (peft target_parameters) and the shared expert's Linear layers.
    for name in ("model.layers.1.mixer.experts.up_proj", "model.layers.1.mixer.experts.down_proj", "model.layers.1.mixer.shared_experts.up_proj.weight"):
        assert _moved(merged[name], init[name]) > 1e-6, f"{name}: LoRA should have moved it"
    for name in ROUTERS:
        assert torch.equal(merged[name], init[name])
    # What weight sync and checkpoints get (the merged weights) computes what the learner computes.
    model = AutoModelForCausalLM.from_pretrained(tiny_moe_checkpoint, dtype=torch.float32).eval()
    model.load_state_dict(merged)
    with torch.no_grad():
        for mb, lp in zip(plain, learner_logps, strict=True):
            assert torch.allclose(TokenLogprobs()(model, mb), lp, atol=1e-4)
