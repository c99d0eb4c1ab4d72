"""MoE layers in the learner: experts kernel, frozen router, LoRA on experts, routing replay (CPU, no DeepSpeed)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from align.config.schema import LearnerConfig, LoraConfig
from align.data.batching import pack_padded
from align.learner.moe import configure_moe, lora_target_parameters, moe_routers
from align.learner.routing_replay import _ReplayState, set_replay


@pytest.fixture()
def moe_model(tiny_moe_checkpoint):
    return AutoModelForCausalLM.from_pretrained(tiny_moe_checkpoint, dtype=torch.float32).eval()


def _batch(vocab: int, b: int = 3, t: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (b, t), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    attn[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": attn}


class _Record:
    """Captures each MoE layer's experts call: the indices and weights the experts actually used."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [
            m.register_forward_pre_hook(lambda mod, args: self.calls.append((args[1].clone(), args[2].clone())))
            for m in model.modules() if type(m).__name__ == "NemotronHExperts"
        ]  # fmt: skip

    def indices(self) -> list[torch.Tensor]:
        return [i for i, _ in self.calls]


def test_experts_implementation_auto_is_eager_on_cpu_and_every_kernel_agrees(moe_model) -> None:
    mb = _batch(moe_model.config.vocab_size)
    done = configure_moe(moe_model, LearnerConfig(), freeze_router=False)
    assert done["moe_layers"] == 2 and done["experts_implementation"] == "eager"
    assert moe_model.config._experts_implementation == "eager"
    ref = moe_model(**mb).logits
    for impl in ("grouped_mm", "batched_mm"):
        configure_moe(moe_model, LearnerConfig(experts_implementation=impl), freeze_router=False)
        assert moe_model.config._experts_implementation == impl
        assert torch.allclose(moe_model(**mb).logits, ref, atol=1e-5), impl


def test_freeze_router_takes_only_router_weights_out_of_training(moe_model, tiny_moe_config) -> None:
    done = configure_moe(moe_model, LearnerConfig(), freeze_router=True)
    frozen = {n for n, p in moe_model.named_parameters() if not p.requires_grad}
    assert frozen == {"model.layers.1.mixer.gate.weight", "model.layers.4.mixer.gate.weight"}
    assert done["frozen_router_params"] == 2 * tiny_moe_config.n_routed_experts * tiny_moe_config.hidden_size
    # The expert bias is a buffer: never a parameter, so no optimizer can move it.
    assert all(hasattr(r, "e_score_correction_bias") and "e_score_correction_bias" not in dict(r.named_parameters()) for r in moe_routers(moe_model))


def test_lora_targets_routed_experts_only_where_the_model_has_them(moe_model) -> None:
    wanted = LoraConfig().target_parameters
    assert lora_target_parameters(moe_model, wanted) == ["experts.up_proj", "experts.down_proj"]
    dense = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert lora_target_parameters(dense, wanted, dropout=0.1) is None
    with pytest.raises(ValueError, match="learner.lora.dropout=0.1: peft cannot"):
        lora_target_parameters(moe_model, wanted, dropout=0.1)


def test_replay_uses_the_given_experts_and_the_routers_weights_at_them(moe_model) -> None:
    mb = _batch(moe_model.config.vocab_size)
    b, t = mb["input_ids"].shape
    rec = _Record(moe_model)
    own_logits = moe_model(**mb).logits
    own = rec.indices()
    # The experts each token did *not* choose (4 experts, top-2): a routing that differs everywhere.
    given = torch.stack([_complement(i, 4).view(b, t, 2) for i in own], dim=2)
    rec.calls.clear()
    set_replay(moe_model, given, mb["attention_mask"])
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    hooks = [r.register_forward_hook(lambda m, a, out: captured.append(out)) for r in moe_routers(moe_model)]
    replayed_logits = moe_model(**mb).logits
    for layer, (used, _) in enumerate(rec.calls):
        assert torch.equal(used, given[:, :, layer].reshape(b * t, 2)), f"layer {layer} did not use the replayed experts"
    for router, (logits, weights, indices) in zip(moe_routers(moe_model), captured, strict=True):
        w = logits.sigmoid().gather(1, indices)
        assert torch.allclose(weights, w / w.sum(-1, keepdim=True) * router.routed_scaling_factor)
    assert (replayed_logits - own_logits).abs().max() > 1e-3, "replayed experts should change the output"
    for h in hooks:
        h.remove()


def test_replay_rows_of_minus_one_use_the_routers_own_choice(moe_model) -> None:
    mb = _batch(moe_model.config.vocab_size)
    b, t = mb["input_ids"].shape
    rec = _Record(moe_model)
    moe_model(**mb)
    own = rec.indices()
    given = torch.stack([_complement(i, 4).view(b, t, 2) for i in own], dim=2)
    given[0] = -1  # the engine routed nothing for the first sequence
    rec.calls.clear()
    set_replay(moe_model, given, mb["attention_mask"])
    moe_model(**mb)
    for layer, (used, _) in enumerate(rec.calls):
        used = used.view(b, t, 2)
        assert torch.equal(used[0], own[layer].view(b, t, 2)[0])
        assert torch.equal(used[1:], given[1:, :, layer])


def test_replay_off_leaves_the_logits_unchanged(moe_model) -> None:
    mb = _batch(moe_model.config.vocab_size)
    untouched = copy.deepcopy(moe_model)
    set_replay(moe_model, torch.zeros(3, 12, 2, 2, dtype=torch.long), mb["attention_mask"])
    moe_model(**mb)
    set_replay(moe_model, None)  # hooks installed, nothing to replay
    assert torch.equal(moe_model(**mb).logits, untouched(**mb).logits)


def test_replay_rejects_experts_of_another_shape(moe_model) -> None:
    with pytest.raises(ValueError, match="2 MoE layers, top_k 2"):
        set_replay(moe_model, torch.zeros(1, 4, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range for 4 experts"):
        set_replay(moe_model, torch.full((1, 4, 2, 2), 7, dtype=torch.long))


def test_replay_maps_experts_into_packed_rows() -> None:
    """On GPU the router sees packed rows (align.models.enable_packed_forward); the replayed
    experts follow each token there."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    experts = torch.arange(12).view(3, 4, 1, 1).expand(3, 4, 2, 2).clone()  # each token's own number
    state = _ReplayState(packed=True)
    state.experts, state.attention_mask = experts, mask
    packed = pack_padded(mask * torch.arange(1, 13).view(3, 4), mask)
    rows = packed.input_ids.numel()
    out = state.for_rows(rows)
    assert rows != 12 and out.shape == (rows, 2, 2)
    # The token at padded flat index s sits at packed flat index target: it carries number s.
    assert torch.equal(out[packed.target, 0, 0], packed.source)
    with pytest.raises(RuntimeError, match="router saw 12 tokens"):
        state.for_rows(12)


def test_replay_maps_packed_rows_even_when_they_hold_as_many_tokens_as_the_padded_batch() -> None:
    """Lengths [2, 4] pack into two rows of 4 (the longer sample first): as many slots as the
    padded batch, in another order. The layout follows the model's packing, never a count."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    state = _ReplayState(packed=True)
    state.experts, state.attention_mask = torch.arange(8).view(2, 4, 1, 1).expand(2, 4, 2, 2).clone(), mask
    out = state.for_rows(8)
    assert out[:, 0, 0].tolist() == [4, 5, 6, 7, 0, 1, -1, -1]


def _complement(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Per row, the experts not in ``indices`` (needs ``n_experts == 2 * top_k``)."""
    chosen = torch.zeros(indices.shape[0], n_experts, dtype=torch.bool).scatter_(1, indices, True)
    return torch.nonzero(~chosen)[:, 1].view(indices.shape[0], -1)


def test_replay_removes_the_routing_flips_of_a_lower_precision_learner(moe_model) -> None:
    """The same weights in bf16 (the learner) and float32 (the sampler) route some tokens to other
    experts; replaying the sampler's experts makes every routing agree and shrinks the worst
    per-token log-prob gap (bench/bench_moe_replay_proxy.py measures the same on a larger policy)."""
    ids = torch.randint(2, moe_model.config.vocab_size, (8, 48), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    learner = copy.deepcopy(moe_model).to(torch.bfloat16)

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        hooks = [r.register_forward_hook(lambda m, a, out: seen.append(out[2])) for r in moe_routers(model)]
        with torch.no_grad():
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])
        for h in hooks:
            h.remove()
        return logp.squeeze(-1), torch.stack([s.view(8, 48, 2).sort(-1).values for s in seen], dim=2)

    sampler_logp, sampler_experts = run(moe_model)
    own_logp, own_experts = run(learner)
    set_replay(learner, sampler_experts, mask)
    replay_logp, replay_experts = run(learner)
    flipped = (own_experts != sampler_experts).any(-1).float().mean()
    assert flipped > 0.002, "bf16 should flip some routings (else this test shows nothing)"
    assert torch.equal(replay_experts, sampler_experts)
    worst_own, worst_replay = (own_logp - sampler_logp).abs().max(), (replay_logp - sampler_logp).abs().max()
    assert worst_replay < worst_own / 3, (float(worst_own), float(worst_replay))
