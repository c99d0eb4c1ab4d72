"""learner.freeze: the parameters its patterns name stay out of training, the rest train, and a
pattern that names nothing stops set-up with the learner and the key named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from align.actor_errors import ActorSetupError
from align.cluster import LearnerGroup, init_ray
from align.config.schema import ClusterConfig, LearnerConfig, ModelConfig, TokenizerConfig
from align.init_checkpoint import prepare_initial_checkpoint
from align.learner.loading import freeze_matching
from align.learner.objectives import sft_objective

MAMBA = r"layers\.0\.mixer\."  # the tiny policy's first Mamba mixer
TEXTS = [f"What is {a} + {b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(30) for b in range(0, 30, 3)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("m") / "init", texts=TEXTS))


def _model(checkpoint: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)


def test_patterns_freeze_exactly_the_parameters_they_find(checkpoint: str) -> None:
    model = _model(checkpoint)
    expected = {n for n, _ in model.named_parameters() if n.startswith("model.layers.0.mixer.") or n == "lm_head.weight"}
    assert len(expected) > 3
    frozen = freeze_matching(model, [MAMBA, r"^lm_head\."])
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert freeze_matching(model, []) == 0


def test_a_pattern_that_finds_nothing_or_freezes_everything_is_refused(checkpoint: str) -> None:
    with pytest.raises(ValueError, match=r"learner.freeze: no parameter name has a match for layers\\\.9\\\.mixer; the model's names look like model\.embeddings\.weight, "):
        freeze_matching(_model(checkpoint), [MAMBA, r"layers\.9\.mixer"])
    with pytest.raises(ValueError, match="freeze every parameter, so nothing would train"):
        freeze_matching(_model(checkpoint), ["."])


def test_a_pattern_that_is_not_a_regular_expression_fails_in_the_recipe() -> None:
    with pytest.raises(ValidationError, match=r"learner.freeze: 'layers\\\.\[0' is not a regular expression"):
        LearnerConfig(freeze=[r"layers\.[0"])


def _micro_batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "loss_denominator": torch.tensor(float((labels[:, 1:] != -100).sum()))}]


def test_frozen_weights_stay_put_through_deepspeed_steps_and_the_rest_train(checkpoint: str) -> None:
    """Real DeepSpeed learners in Ray actors, as a job runs them; a bad pattern stops their set-up."""
    init_ray()
    start = _model(checkpoint).state_dict()
    mbs = _micro_batches(json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"])
    cfg = dict(micro_batch_size_per_device=2, lr=1e-2, lr_schedule="constant")
    group = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1))
    try:
        group.setup(checkpoint, LearnerConfig(freeze=[MAMBA], **cfg), 3, seed=0)
        losses = [group.train_step([mbs], sft_objective)["loss"] for _ in range(3)]
        after = group.state_dict()
    finally:
        group.shutdown()
    assert losses[-1] < losses[0], losses
    moved = {k for k in start if not torch.equal(after[k], start[k])}
    frozen = {k for k in start if k.startswith("model.layers.0.mixer.")}
    assert frozen and not moved & frozen
    assert {"model.layers.1.mixer.q_proj.weight", "model.layers.3.mixer.in_proj.weight", "lm_head.weight"} <= moved

    group = LearnerGroup(ClusterConfig(num_learners=1, cpus_per_learner=1))
    try:
        with pytest.raises(ActorSetupError, match=r"(?s)learner 0 \(rank 0\) failed in Learner.load_model.*no parameter name has a match for layers.0.mlp.*To fix it: correct learner.freeze"):
            group.setup(checkpoint, LearnerConfig(freeze=["layers.0.mlp"], **cfg), 3, seed=0)
    finally:
        group.shutdown()


def test_a_job_with_a_pattern_that_finds_nothing_exits_2_with_one_message(tmp_path) -> None:
    """`align sft` as a user runs it, two learners: the cause (load_model) is what is reported, not
    the later calls that fail after it, and Ray prints none of them as an unhandled error."""
    small = ["data.generated.envs={math: 1.0}", "data.generated.num_train=64", "data.generated.num_eval=8", "tokenizer.vocab_size=320",
             "sft.num_eval_samples_to_generate=0", "sft.max_steps=2", "cluster.num_learners=2"]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    args = ["sft", "--recipe", "tiny-sft", *small, "learner.freeze=[layers.9.mixer]", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, timeout=240, cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)))  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "failed in Learner.load_model" in out and "no parameter name has a match for layers.9.mixer" in out, out[-3000:]
    assert "To fix it: correct learner.freeze" in out
    assert "Traceback" not in out and "Unhandled error" not in out and "build_engine" not in out, out[-3000:]
