"""Per-request generation and in-flight weight updates on the real in-process vLLM engine.

- ``generate`` (all requests added to one step) gives the same tokens as vLLM's batch
  ``LLM.generate`` on the same engine, greedy and seeded;
- requests sent one by one (``generate_one``) finish on their own, and many at once give the
  same greedy tokens as the batch;
- a weight update while long generations run loads between two steps: no request is aborted
  or shortened, each output's versions are ``v0 ... v0 v1 ... v1``, the tokens before the
  switch are the old weights' greedy ones, and the tokens after it come from the new weights
  (with ``recompute_kv_on_update``, exactly the new weights' greedy continuation).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from align.models import load_model
from rollout.engine_loop import token_versions
from rollout.types import GenOutput, GenRequest

LONG = 160  # tokens per request in the in-flight tests: long enough to update mid-way


@pytest.fixture(scope="module")
def weights(tiny_checkpoint) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's weights ("old") and a perturbed copy whose greedy outputs differ ("new")."""
    model = load_model(tiny_checkpoint, "float32")
    old = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    new = {k: v + 0.3 * v.float().std().nan_to_num() * torch.randn(v.shape, generator=generator) for k, v in old.items()}
    return {"old": old, "new": new}


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    texts = ["What is 12 + 30?", "echo 3 then answer 7", "What is 5 + 5? The answer is"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def greedy(n: int, prompt: list[int]) -> GenRequest:
    return GenRequest(prompt, n, temperature=0.0, ignore_eos=True)


def test_generate_equals_the_batch_llm_generate(tiny_checkpoint, make_engine, prompts):
    engine = make_engine(tiny_checkpoint)
    requests = [greedy(24, p) for p in prompts] + [GenRequest(p, 24, temperature=1.0, seed=40 + i) for i, p in enumerate(prompts)]

    def batch_path() -> list[list[int]]:  # what VLLMEngine.generate ran before: one LLM.generate call
        params = [
            engine._sampling_params_cls(max_tokens=r.max_tokens, temperature=r.temperature, seed=r.seed, ignore_eos=r.ignore_eos, logprobs=0, detokenize=False)
            for r in requests
        ]
        results = engine.llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in requests], params, use_tqdm=False)
        return [list(r.outputs[0].token_ids) for r in results]

    reference = engine._loop.call(batch_path)  # on the engine's thread, between steps
    outs = engine.generate(requests)
    assert [o.token_ids for o in outs] == reference
    assert all(o.weight_versions == [0] * len(o.token_ids) for o in outs)
    assert len({tuple(o.token_ids) for o in outs[len(prompts) :]}) == len(prompts)  # the seeded ones differ

    async def one_by_one() -> list[GenOutput]:
        return await asyncio.gather(*[engine.generate_one(r) for r in requests[: len(prompts)]])

    assert [o.token_ids for o in asyncio.run(one_by_one())] == reference[: len(prompts)]


def test_a_short_request_returns_while_a_long_one_runs(tiny_checkpoint, make_engine, prompts):
    engine = make_engine(tiny_checkpoint)

    async def run() -> tuple[float, float, GenOutput]:
        start = time.perf_counter()
        long = asyncio.ensure_future(engine.generate_one(greedy(LONG, prompts[0])))
        await asyncio.sleep(0.05)
        short = await engine.generate_one(greedy(4, prompts[1]))
        short_done = time.perf_counter() - start
        await long
        return short_done, time.perf_counter() - start, short

    short_done, long_done, short = asyncio.run(run())
    assert len(short.token_ids) == 4
    assert short_done < 0.5 * long_done, f"the short request waited for the long one: {short_done:.2f}s vs {long_done:.2f}s"


def test_token_versions_follow_the_update_marks():
    """The engine returns whole outputs; each token's version is rebuilt from the marks updates left."""
    assert token_versions([(0, 0)], 3) == [0, 0, 0]
    assert token_versions([(0, 0), (2, 5)], 4) == [0, 0, 5, 5]
    assert token_versions([(0, 0), (0, 1)], 2) == [1, 1]  # an update before the first token
    assert token_versions([(0, 0), (3, 1), (3, 2), (5, 3)], 6) == [0, 0, 0, 2, 2, 3]  # two between the same steps
    assert token_versions([(0, 0), (4, 1)], 4) == [0, 0, 0, 0]  # an update after the last token


def update_mid_way(engine, prompts: list[list[int]], new_weights: dict[str, torch.Tensor], at_tokens: int) -> list[GenOutput]:
    """Start one long greedy request per prompt, load ``new_weights`` as version 1 once each has
    ``at_tokens`` tokens (asked of the engine loop's running requests), return the outputs."""
    futures = engine._start([greedy(LONG, p) for p in prompts])
    deadline = time.monotonic() + 120
    while min(engine._loop.call(engine._loop.produced).values(), default=0) < at_tokens:
        assert time.monotonic() < deadline and not all(f.done() for f in futures), "the requests finished before the update"
        time.sleep(0.002)
    engine.update_weights(new_weights, version=1)
    return [f.result(timeout=120) for f in futures]


@pytest.mark.parametrize("recompute", [False, True], ids=["keep_kv", "recompute_kv"])
def test_in_flight_update_switches_versions_mid_request(tiny_checkpoint, make_engine, prompts, weights, recompute):
    engine = make_engine(tiny_checkpoint, recompute_kv_on_update=recompute)
    old_greedy = [o.token_ids for o in engine.generate([greedy(LONG, p) for p in prompts])]
    outs = update_mid_way(engine, prompts, weights["new"], at_tokens=20)
    assert engine.weights_version() == 1
    for prompt, old, out in zip(prompts, old_greedy, outs, strict=True):
        assert out.finish_reason == "length" and len(out.token_ids) == LONG  # not aborted, not cut short
        assert out.weight_versions is not None and len(out.weight_versions) == LONG
        k = out.weight_versions.index(1)
        assert 20 <= k < LONG and out.weight_versions == [0] * k + [1] * (LONG - k)
        assert out.token_ids[:k] == old[:k]  # before the switch: the old weights' greedy tokens
        assert out.token_ids[k:] != old[k:]  # after it: not the old weights' any more
        if recompute:  # the KV cache was recomputed with the new weights: their exact greedy continuation
            fresh = engine.generate([greedy(LONG - k, prompt + out.token_ids[:k])])[0]
            assert out.token_ids[k:] == fresh.token_ids
            assert fresh.weight_versions == [1] * (LONG - k)


def test_update_from_another_thread_while_episodes_stream(tiny_checkpoint, make_engine, prompts, weights):
    """The RL loop's shape: asyncio episodes per request, the weight push from another thread."""
    engine = make_engine(tiny_checkpoint)

    async def run() -> list[GenOutput]:
        tasks = [asyncio.ensure_future(engine.generate_one(greedy(LONG, p))) for p in prompts * 2]
        while min(engine._loop.call(engine._loop.produced).values(), default=0) < 10:
            await asyncio.sleep(0.002)
        pusher = threading.Thread(target=engine.update_weights, args=(weights["new"],), kwargs={"version": 7})
        pusher.start()
        outs = await asyncio.gather(*tasks)
        pusher.join()
        return outs

    outs = asyncio.run(run())
    for out in outs:
        assert len(out.token_ids) == LONG and out.weight_versions is not None
        assert out.weight_versions[0] == 0 and out.weight_versions[-1] == 7
        assert sorted(out.weight_versions) == out.weight_versions and set(out.weight_versions) == {0, 7}
