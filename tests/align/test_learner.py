"""The learner: DeepSpeed data parallelism gives the global-batch gradient whatever the layout."""

from pathlib import Path

import pytest
import torch

from align.cluster import LearnerGroup, init_ray
from align.config.schema import ClusterConfig, LearnerConfig, ModelConfig, TokenizerConfig
from align.learner.objectives import sft_objective
from align.init_checkpoint import prepare_initial_checkpoint

TEXTS = [f"What is {a} + {b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(30) for b in range(0, 30, 3)]
STEPS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("m") / "init", texts=TEXTS))


def _micro_batches(n: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """``n`` micro-batches of 2 right-padded sequences with different lengths and loss masks."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(4, vocab, (2, 24), generator=g)
        attn = torch.ones_like(ids)
        attn[1, 17:] = 0
        labels = ids.clone()
        labels[:, :6] = -100  # the prompt
        labels[attn == 0] = -100
        out.append({"input_ids": ids, "attention_mask": attn, "labels": labels})
    total = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in out)
    for mb in out:
        mb["loss_denominator"] = torch.tensor(float(total))
    return out


def _losses(group: LearnerGroup, layout: list[list[int]], mbs: list[dict[str, torch.Tensor]]) -> list[float]:
    return [group.train_step([[mbs[i] for i in rank] for rank in layout], sft_objective)["loss"] for _ in range(STEPS)]


def test_two_learners_zero2_equal_one_learner_with_accumulation(checkpoint: str) -> None:
    import json

    vocab = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]
    mbs = _micro_batches(2, vocab)
    cfg = dict(micro_batch_size_per_device=2, lr=1e-2, lr_schedule="constant", max_grad_norm=1.0)

    # Both groups are Ray actors: a learner in the pytest process would leave torch.distributed
    # initialised there, and later in-process vLLM engines abort on it.
    init_ray()
    single = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1))
    try:
        single.setup(checkpoint, LearnerConfig(zero_stage=0, gradient_accumulation_steps=2, **cfg), STEPS, seed=0)
        expected = _losses(single, [[0, 1]], mbs)
        ref = single.state_dict()
    finally:
        single.shutdown()

    pair = LearnerGroup(ClusterConfig(num_learners=2, cpus_per_learner=1))
    try:
        pair.setup(checkpoint, LearnerConfig(zero_stage=2, gradient_accumulation_steps=1, **cfg), STEPS, seed=0)
        got = _losses(pair, [[0], [1]], mbs)
        weights = pair.state_dict()
    finally:
        pair.shutdown()

    assert expected[-1] < expected[0] - 0.05, f"the loss should fall: {expected}"
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert set(weights) == set(ref)
    assert max((weights[k] - ref[k]).abs().max().item() for k in ref) < 1e-4


def nan_objective(model, mb):
    """The SFT loss times NaN: what a bad batch or an overflow gives the learner."""
    loss, metrics = sft_objective(model, mb)
    return loss * float("nan"), metrics


def test_a_nonfinite_step_leaves_the_weights_as_they_were(checkpoint: str) -> None:
    import json
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # nan_objective travels to the Ray actor by value
    vocab = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]
    mbs = _micro_batches(2, vocab)
    init_ray()
    group = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1))
    try:
        group.setup(checkpoint, LearnerConfig(micro_batch_size_per_device=2, gradient_accumulation_steps=2, lr=1e-2, lr_schedule="constant"), 4, seed=0)
        group.train_step([mbs], sft_objective)
        before = group.state_dict()
        bad = group.train_step([mbs], nan_objective)
        after_bad = group.state_dict()
        good = group.train_step([mbs], sft_objective)
        after_good = group.state_dict()
    finally:
        group.shutdown()
    assert bad["nonfinite_skipped"] == 1.0 and bad["nonfinite_params"] == 0.0
    assert all(torch.equal(before[k], after_bad[k]) for k in before)  # the NaN step changed nothing
    assert good["nonfinite_skipped"] == 0.0 and good["lr"] == pytest.approx(1e-2)  # the lr is back for the next step
    assert max((after_good[k] - before[k]).abs().max().item() for k in before) > 1e-4
