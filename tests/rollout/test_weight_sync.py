"""Bucketed weight sync (align.weight_sync): the bucket plan, the broadcast protocol, and a push
from DeepSpeed learners to vLLM engines through Ray after which the engines' greedy output equals
transformers' on the learners' new weights.

On CPU the "broadcast" transport runs over gloo; on GPUs the same code runs over NCCL, and
"cuda_ipc" is pushed on a GPU by tests/gpu/test_rl_gpu.py; its protocol (slots, mapping once) runs on CPU
in tests/rollout/test_weight_sync_ipc.py.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import torch
import torch.multiprocessing as mp

from align.weight_sync.transports import Bucket, WeightGroup, pack, plan_buckets, receive_broadcast, send_broadcast, unpack


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed.weight": torch.randn(64, 16, generator=g),  # 4 KiB: over a 3 KiB cap
        "model.layers.0.a.weight": torch.randn(8, 16, generator=g),
        "model.layers.0.a.norm": torch.randn(16, generator=g).to(torch.bfloat16),
        "model.layers.1.b.weight": torch.randn(4, 4, 4, generator=g),
        "model.layers.1.b.norm": torch.randn(5, generator=g).to(torch.bfloat16),  # 10 bytes: padding follows
        "model.layers.2.c.weight": torch.randn(700, generator=g),
        "model.layers.2.c.mask": torch.tensor([True, False, True]),
        "lm_head.scale": torch.tensor(3.5),
    }


def _meta(sd: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]


def test_plan_keeps_layers_whole_and_order() -> None:
    sd = _tensors()
    buckets = plan_buckets(_meta(sd), bucket_bytes=3 * 1024)
    names = [[e.name.removeprefix("model.") for e in b.entries] for b in buckets]
    # embed alone (over the cap); layers 0 and 1 together; layer 2 would overflow, so it opens the
    # third bucket, with the last tensor.
    assert names == [
        ["embed.weight"],
        ["layers.0.a.weight", "layers.0.a.norm", "layers.1.b.weight", "layers.1.b.norm"],
        ["layers.2.c.weight", "layers.2.c.mask", "lm_head.scale"],
    ]
    assert all(b.nbytes <= 3 * 1024 for b in buckets[1:])
    for b in buckets:
        assert all(e.offset % 16 == 0 for e in b.entries)
        ends = [e.offset + e.nbytes for e in b.entries]
        assert all(end <= nxt for end, nxt in zip(ends, [e.offset for e in b.entries[1:]]))  # no overlap
    # A layer larger than the cap is one bucket, never split.
    big = plan_buckets(_meta(sd), bucket_bytes=64)
    assert [e.name for e in big[3].entries] == ["model.layers.2.c.weight", "model.layers.2.c.mask"]
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(_meta(sd), 0)


def test_pack_unpack_round_trip_is_exact() -> None:
    sd = _tensors()
    for b in plan_buckets(_meta(sd), bucket_bytes=2048):
        buf = torch.full((b.nbytes + 7,), 255, dtype=torch.uint8)  # poisoned
        for name, view in unpack(b, pack(b, sd, buf)):
            assert view.dtype == sd[name].dtype and torch.equal(view, sd[name]), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receiver(rank: int, port: int, world: int, buckets: list[Bucket], out: dict) -> None:
    group = WeightGroup("127.0.0.1", port, rank, world, "gloo", timeout_s=60)
    got = {}
    for items in receive_broadcast(group, buckets):
        got.update({name: t.clone() for name, t in items})  # views die with the next bucket
    out[rank] = got


def test_gloo_broadcast_delivers_every_bucket_to_every_rank() -> None:
    sd = _tensors()
    buckets = plan_buckets(_meta(sd), bucket_bytes=1024)
    assert len(buckets) >= 4
    port, world = _free_port(), 3
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=_receiver, args=(r, port, world, buckets, out)) for r in (1, 2)]
        for p in procs:
            p.start()
        send_broadcast(WeightGroup("127.0.0.1", port, 0, world, "gloo", timeout_s=60), buckets, sd)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        results = dict(out)
    for rank in (1, 2):
        assert set(results[rank]) == set(sd)
        for name, t in sd.items():
            assert torch.equal(results[rank][name], t), (rank, name)


def test_weight_group_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="nccl' or 'gloo"):
        WeightGroup("127.0.0.1", _free_port(), 0, 1, "mpi", timeout_s=5)


# ---------------------------------------------------------------- learners -> engines through Ray


def _sft_batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (2, 32), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "loss_denominator": torch.tensor(float((labels[:, 1:] != -100).sum()))}]  # fmt: skip


@pytest.mark.parametrize("policy", ["tiny_checkpoint", "tiny_moe_checkpoint"])
def test_broadcast_push_from_zero3_learners_to_two_engines(policy, request, tokenizer) -> None:
    """2 learners (ZeRO-3, so the push gathers on both) -> 2 vLLM engines, over gloo in 1 KiB..
    1 MiB buckets; then the engines' greedy tokens equal transformers' on the learners' weights.

    Also on the MoE hybrid, whose learners name the routed experts as transformers 5 fuses them
    (``mixer.experts.up_proj``, one [experts, out, in] tensor) while its checkpoint and vLLM's
    loader know per-expert names too: the push carries the fused tensors whole."""
    pytest.importorskip("ray")
    tiny_checkpoint = request.getfixturevalue(policy)
    from align.cluster import ClusterError, LearnerGroup, RolloutGroup, init_ray
    from align.weight_sync import WeightSync
    from align.config.schema import ClusterConfig, LearnerConfig, RolloutConfig
    from align.learner.objectives import sft_objective
    from align.models import load_model
    from rollout.types import GenRequest

    import ray

    if ray.is_initialized():  # 2 learners + 2 engines need 4 CPUs of Ray's
        ray.shutdown()
    init_ray(num_cpus=4)
    cluster = ClusterConfig(num_learners=2, cpus_per_learner=1, num_rollout_engines=2)
    learners = LearnerGroup(cluster)
    rollout = None
    try:
        learners.setup(str(tiny_checkpoint), LearnerConfig(zero_stage=3, micro_batch_size_per_device=2, lr=3e-2,
                                                           lr_schedule="constant", precision="fp32"), 10, seed=0)  # fmt: skip
        moe = policy == "tiny_moe_checkpoint"
        rollout = RolloutGroup(cluster, RolloutConfig(kv_cache_memory_mb=64, max_model_len=256, return_routed_experts=moe), str(tiny_checkpoint), seed=0)
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("What is 12 + 30?", "echo 3 then answer 7")]
        if moe:  # routed experts come back from both engine actors, one row per token
            outs = asyncio.run(rollout.generate([GenRequest(p, 8, temperature=0.0) for p in prompts * 2]))
            for p, o in zip(prompts * 2, outs):
                assert o.routed_experts.shape == (len(p) + len(o.token_ids), 2, 2) and (o.routed_experts[:-1] >= 0).all()

        def greedy() -> list[list[int]]:
            outs = asyncio.run(rollout.generate([GenRequest(p, 16, temperature=0.0) for p in prompts * 2]))
            return [o.token_ids for o in outs]

        before = greedy()
        batches = _sft_batches(len(tokenizer))
        for _ in range(3):
            learners.train_step([batches, batches], sft_objective)

        sync = WeightSync(learners, rollout, "broadcast", bucket_mb=1)
        assert (sync.transport, sync.backend) == ("broadcast", "gloo")
        assert len(sync._buckets) > 1, sync.describe()
        sync.push(version=5)
        after = greedy()

        async def one_by_one() -> list:  # per request over Ray, spread over both engines (the async loop's path)
            return await asyncio.gather(*[rollout.generate_one(GenRequest(p, 16, temperature=0.0)) for p in prompts * 2])

        singles = asyncio.run(one_by_one())
        assert [o.token_ids for o in singles] == after
        assert all(o.weight_versions == [5] * len(o.token_ids) for o in singles)

        hf = load_model(tiny_checkpoint, "float32").eval()

        def reference() -> list[list[int]]:
            hf.load_state_dict(learners.state_dict(), strict=False)
            with torch.no_grad():
                return [hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False)[0, len(p) :].tolist() for p in prompts * 2]

        assert after == reference()
        assert after != before, "training did not change any greedy output: the test cannot see the push"

        # A second push (the next update) reuses the group; auto picks the object store on CPU.
        learners.train_step([batches, batches], sft_objective)
        sync.push()
        assert greedy() == reference()
        auto = WeightSync(learners, rollout, "auto")
        assert auto.transport == "object_store"
        with pytest.raises(ClusterError, match="cuda_ipc needs every engine on a learner's GPU"):
            WeightSync(learners, rollout, "cuda_ipc")
        learners.train_step([batches, batches], sft_objective)
        pushed = greedy()
        auto.push()
        assert greedy() == reference() != pushed
    finally:
        learners.shutdown()
        if rollout is not None:
            rollout.shutdown()
        ray.shutdown()
