"""``VLLMEngine(max_num_seqs=...)``: the cap reaches vLLM's scheduler, and vLLM's Mamba-cache
refusal (GPU, CUDA graphs) comes back naming the recipe keys that fix it."""

from __future__ import annotations

import pytest

import rollout.engine
from rollout.types import GenRequest


def test_max_num_seqs_reaches_the_scheduler_and_extra_requests_wait(tiny_checkpoint, make_engine, tokenizer) -> None:
    engine = make_engine(tiny_checkpoint, max_num_seqs=2)
    assert engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == 2
    prompt = tokenizer("What is 2 + 3?", add_special_tokens=False)["input_ids"]
    outs = engine.generate([GenRequest(prompt, 6, temperature=1.0, seed=i) for i in range(5)])  # 5 requests, 2 at a time
    assert len(outs) == 5 and all(o.token_ids for o in outs)


def test_mamba_cache_refusal_names_the_recipe_keys(tiny_checkpoint, make_engine, monkeypatch) -> None:
    # vLLM raises this only on a GPU, where CUDA graphs are captured; on CPU the engine's build is
    # replaced by one that raises vLLM 0.26's message (vllm/config/compilation.py).
    vllm_message = ("max_num_seqs (256) exceeds available Mamba cache blocks (12). Each decode sequence requires one Mamba cache "
                    "block, so CUDA graph capture cannot proceed.")  # fmt: skip

    def refuse(build):
        raise ValueError(vllm_message)

    monkeypatch.setattr(rollout.engine, "StepLoop", refuse)
    with pytest.raises(ValueError, match=r"blocks \(12\).*rollout\.max_num_seqs.*rollout\.gpu_memory_utilization"):
        make_engine(tiny_checkpoint)
