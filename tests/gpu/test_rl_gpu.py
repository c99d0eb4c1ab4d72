"""The RL path on GPUs, through Ray: weight sync, the learner's loss, the engine's greedy output.

- CUDA IPC (learner and vLLM engine on one GPU) and NCCL broadcast (one GPU each): after training
  steps and a push, the engine's greedy tokens equal transformers' (CPU, float32) on the
  learner's new weights, and ``auto`` picks the transport the placement calls for.
- The RL learner's GRPO loss and per-token log-probs on GPU (bf16 and float32) against the CPU
  learner (float32) on the same weights and batch.
- ``learner.compile``: the compiled learner's log-probs and loss equal the eager one's.

``align rl`` itself, two steps on one GPU, is in ``test_rl_cli_gpu.py``: a file of its own, so
that each file's pytest run fits one device call.

Needs vllm (GPU build), ray, deepspeed and a CUDA GPU; the NCCL test needs two.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from align.config.schema import ModelConfig, TokenizerConfig
    from align.init_checkpoint import prepare_initial_checkpoint

    return prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=512), tmp_path_factory.mktemp("gpu") / "tiny")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from align.cluster import init_ray

    init_ray(num_cpus=8)
    yield
    ray.shutdown()


def _batches(vocab: int, rows: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, 48), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 40:] = 0
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, :8] = -100
    mb = {"input_ids": ids, "attention_mask": attn, "labels": labels, "loss_denominator": torch.tensor(float((labels[:, 1:] != -100).sum()))}
    return [mb]


def _hf_greedy(checkpoint: Path, weights: dict[str, torch.Tensor], prompts: list[list[int]], n: int) -> list[list[int]]:
    from align.models import load_model

    model = load_model(checkpoint, "float32").eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False)[0, len(p) :].tolist() for p in prompts]


def _push_and_compare(checkpoint: Path, gpus: tuple[float, float], want: tuple[str, str], bucket_mb: int) -> dict[str, object]:
    import time

    from align.cluster import LearnerGroup, RolloutGroup
    from align.weight_sync import WeightSync
    from align.config.schema import ClusterConfig, LearnerConfig, RolloutConfig
    from align.learner.objectives import sft_objective
    from align.models import load_tokenizer
    from rollout.types import GenRequest

    tok = load_tokenizer(checkpoint)
    cluster = ClusterConfig(num_learners=1, cpus_per_learner=1, gpus_per_learner=gpus[0], num_rollout_engines=1, gpus_per_rollout_engine=gpus[1])
    learners = LearnerGroup(cluster)
    rollout = None
    try:
        learners.setup(str(checkpoint), LearnerConfig(zero_stage=0, micro_batch_size_per_device=4, lr=3e-2, lr_schedule="constant",
                                                      precision="fp32"), 10, seed=0)  # fmt: skip
        rollout = RolloutGroup(cluster, RolloutConfig(gpu_memory_utilization=0.2, max_model_len=256), str(checkpoint), seed=0, dtype="float32")
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("What is 12 + 30?", "echo 3 then answer 7", "What is 5 + 5?")]

        def greedy() -> list[list[int]]:
            return [o.token_ids for o in asyncio.run(rollout.generate([GenRequest(p, 24, temperature=0.0) for p in prompts]))]

        before = greedy()
        for _ in range(3):
            learners.train_step([_batches(len(tok))], sft_objective)
        sync = WeightSync(learners, rollout, "auto", bucket_mb=bucket_mb)
        assert (sync.transport, sync.backend) == want, sync.describe()
        t0 = time.perf_counter()
        sync.push()
        push_s = time.perf_counter() - t0
        after = greedy()
        ref = _hf_greedy(checkpoint, learners.state_dict(), prompts, 24)
        parts = {k: round(v * 1e3, 2) for k, v in sync.last_push_times.items()}  # ms; empty unless cuda_ipc
        print(f"{sync.describe()}: push {push_s * 1e3:.1f} ms {parts}\n  engine {after}\n  hf cpu {ref}\n  before {before}")
        if sync.transport == "cuda_ipc":
            assert parts["push"] >= parts["engine_span"] >= parts["engine_load"] > 0, parts  # the engines load inside the push
        assert after == ref
        assert after != before, "training did not change any greedy output: the test cannot see the push"
        return {"transport": sync.describe(), "push_s": push_s}
    finally:
        learners.shutdown()
        if rollout is not None:
            rollout.shutdown()


# The first train_step of a hybrid learner compiles (and autotunes) mamba_ssm's Triton kernels:
# 100-200 s on an H200 with an empty Triton cache, far beyond the suite's default 600 s budget
# once the engine start and the other tests' share are added.
FIRST_USE_S = 900


@pytest.mark.timeout(FIRST_USE_S)
def test_cuda_ipc_push_on_one_gpu(checkpoint, ray_session) -> None:
    _push_and_compare(checkpoint, (0.5, 0.4), ("cuda_ipc", ""), bucket_mb=1)


@pytest.mark.multi_gpu
@pytest.mark.timeout(FIRST_USE_S)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_broadcast_push_between_two_gpus(checkpoint, ray_session) -> None:
    _push_and_compare(checkpoint, (1.0, 1.0), ("broadcast", "nccl"), bucket_mb=1)


@pytest.mark.timeout(FIRST_USE_S)
def test_grpo_loss_on_gpu_matches_cpu(checkpoint, ray_session) -> None:
    """The same weights and RL micro-batch on a CPU learner (fp32) and GPU learners (fp32, bf16)."""
    from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs
    from align.cluster import LearnerGroup
    from align.config.schema import ClusterConfig, LearnerConfig
    from align.models import load_tokenizer

    vocab = len(load_tokenizer(checkpoint))
    mb = _batches(vocab, rows=8, seed=1)[0]
    mask = (mb["labels"][:, 1:] != -100).float()
    g = torch.Generator().manual_seed(2)
    results: dict[str, dict[str, object]] = {}
    for name, gpu, precision in (("cpu_fp32", 0.0, "fp32"), ("gpu_fp32", 1.0, "fp32"), ("gpu_bf16", 1.0, "bf16")):
        group = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1, gpus_per_learner=gpu))
        try:
            group.setup(str(checkpoint), LearnerConfig(zero_stage=0, micro_batch_size_per_device=8, precision=precision), 10, seed=0)
            logp = group.compute([[dict(mb)]], TokenLogprobs(1.0))[0][0]
            if "batch" not in results:  # old = the CPU learner's log-probs; rollout = old + noise
                noise = 0.05 * torch.randn(logp.shape, generator=g)
                rl = dict(mb, loss_mask=mask, old_logprobs=logp * mask, rollout_logprobs=(logp + noise) * mask,
                          advantages=torch.randn(8, generator=g))  # fmt: skip
                results["batch"] = {"mb": rl}
            rl = results["batch"]["mb"]
            metrics = group.eval_step([[dict(rl)]], GRPOObjective(0.2, 0.28, "token", 2.0))
            results[name] = {"logp": logp * mask, "loss": metrics["loss"]}
        finally:
            group.shutdown()
    cpu = results["cpu_fp32"]
    for name, tol_lp, tol_loss in (("gpu_fp32", 1e-3, 1e-4), ("gpu_bf16", 0.1, 2e-2)):
        got = results[name]
        lp_diff = (got["logp"] - cpu["logp"]).abs().max().item()
        print(f"{name}: loss {got['loss']:.6f} vs cpu {cpu['loss']:.6f}; max |logp - cpu| {lp_diff:.2e}")
        assert lp_diff < tol_lp
        assert abs(got["loss"] - cpu["loss"]) < tol_loss + 1e-2 * abs(cpu["loss"])


@pytest.mark.timeout(FIRST_USE_S)
def test_compiled_learner_matches_eager(checkpoint, ray_session) -> None:
    """``learner.compile``: the same log-probs and GRPO loss as the eager learner (float32), and the log says which path ran."""
    from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs
    from align.cluster import LearnerGroup
    from align.config.schema import ClusterConfig, LearnerConfig
    from align.models import load_tokenizer

    mb = _batches(len(load_tokenizer(checkpoint)), rows=8, seed=3)[0]
    mask = (mb["labels"][:, 1:] != -100).float()
    got: dict[bool, tuple[torch.Tensor, float]] = {}
    for compiled in (False, True):
        group = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1, gpus_per_learner=1.0))
        try:
            group.setup(str(checkpoint), LearnerConfig(zero_stage=0, micro_batch_size_per_device=8, precision="fp32", compile=compiled), 10, seed=0)
            logp = group.compute([[dict(mb)]], TokenLogprobs(1.0))[0][0] * mask
            rl = dict(mb, loss_mask=mask, old_logprobs=logp, rollout_logprobs=logp, advantages=torch.linspace(-1, 1, 8))
            got[compiled] = (logp, group.train_step([[rl]], GRPOObjective(0.2, 0.28, "token", 2.0))["loss"])
        finally:
            group.shutdown()
    diff = (got[True][0] - got[False][0]).abs().max().item()
    print(f"compiled vs eager: max |logp diff| {diff:.2e}, loss {got[True][1]:.6f} vs {got[False][1]:.6f}")
    assert diff < 1e-3
    assert abs(got[True][1] - got[False][1]) < 1e-4 + 1e-3 * abs(got[False][1])
