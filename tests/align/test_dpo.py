"""DPO pieces in-process: the objective on real pair batches, reference log-probs, LoRA-disabled reference, metrics."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from align.algorithms.common import count_pairs, micro_batches, per_pair_means
from align.cluster import LearnerGroup
from align.config.schema import ClusterConfig, LearnerConfig, LoraConfig, ModelConfig, TokenizerConfig
from align.data import tokenize_pair
from align.learner.objectives import DPOObjective, reference_pair_logps, reference_pair_logps_lora_disabled
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_tokenizer

TEXTS = [f"What is {a}+{b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(20) for b in range(20)]


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 13, (3 * i) % 11
        prompt = [{"role": "user", "content": f"What is {a}+{b}?"}]
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}"}],
            "rejected": [{"role": "assistant", "content": f"<think>{a}+{b}={a + b + 1 + i % 3}</think>\\boxed{{{a + b + 1 + i % 3}}}"}],
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> str:
    return str(prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("dpo") / "init", texts=TEXTS))


@pytest.fixture(scope="module")
def examples(start: str) -> list[dict]:
    tok = load_tokenizer(start)
    return [tokenize_pair(r, tok, 128) for r in _rows(16)]


def _batch(examples: list[dict], pad_id: int, n: int = 8) -> list[list[dict]]:
    return micro_batches(examples, list(range(n)), world_size=1, accumulation=1, pad_id=pad_id, count_units=count_pairs)


def _with_reference(group: LearnerGroup, per_rank: list[list[dict]], fn=reference_pair_logps) -> list[list[dict]]:
    for rank, out in zip(per_rank, group.compute(per_rank, fn), strict=True):
        for mb, lp in zip(rank, out, strict=True):
            mb["ref_chosen_logps"], mb["ref_rejected_logps"] = lp[:, 0], lp[:, 1]
    return per_rank


def test_policy_equal_to_reference_gives_log2_and_no_accuracy(start: str, examples: list[dict]) -> None:
    group = LearnerGroup(ClusterConfig(), in_process=True)
    group.setup(start, LearnerConfig(micro_batch_size_per_device=8, lr=1e-3), 10, seed=0)
    per_rank = _with_reference(group, _batch(examples, load_tokenizer(start).pad_token_id))
    m = per_pair_means(group.eval_step(per_rank, DPOObjective(beta=0.1)))
    assert m["loss"] == pytest.approx(0.6931472, abs=1e-5)
    assert m["accuracy"] == 0.0 and abs(m["margin"]) < 1e-6  # ties are not counted as right
    assert m["chosen_logps"] < 0 and m["rejected_logps"] < 0


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "sft_regularized"])
def test_dpo_steps_raise_the_margin_on_the_trained_pairs(start: str, examples: list[dict], loss: str) -> None:
    pad = load_tokenizer(start).pad_token_id
    ref = LearnerGroup(ClusterConfig(), in_process=True)
    ref.setup(start, LearnerConfig(micro_batch_size_per_device=8), 1, seed=0)
    policy = LearnerGroup(ClusterConfig(), in_process=True)
    policy.setup(start, LearnerConfig(micro_batch_size_per_device=8, lr=3e-3, lr_schedule="constant"), 20, seed=0)
    objective = DPOObjective(beta=0.5 if loss == "ipo" else 0.1, loss=loss, label_smoothing=0.1 if loss == "sigmoid" else 0.0)
    per_rank = _with_reference(ref, _batch(examples, pad))
    first = per_pair_means(policy.train_step(per_rank, objective))
    for _ in range(5):
        last = per_pair_means(policy.train_step(per_rank, objective))
    assert last["loss"] < first["loss"]
    assert last["margin"] > 0.05 and last["accuracy"] >= 0.75
    # The reference did not move: computing it again gives the same numbers.
    again = _with_reference(ref, _batch(examples, pad))
    assert torch.equal(again[0][0]["ref_chosen_logps"], per_rank[0][0]["ref_chosen_logps"])


def test_lora_disabled_reference_is_the_start_weights(start: str, examples: list[dict]) -> None:
    pad = load_tokenizer(start).pad_token_id
    base = LearnerGroup(ClusterConfig(), in_process=True)
    base.setup(start, LearnerConfig(micro_batch_size_per_device=8), 1, seed=0)
    expected = base.compute(_batch(examples, pad), reference_pair_logps)[0][0]

    lora = LearnerGroup(ClusterConfig(), in_process=True)
    lora.setup(start, LearnerConfig(micro_batch_size_per_device=8, lr=1e-2, lr_schedule="constant", lora=LoraConfig(r=8)), 10, seed=0)
    per_rank = _with_reference(lora, _batch(examples, pad), reference_pair_logps_lora_disabled)
    assert torch.allclose(per_rank[0][0]["ref_chosen_logps"], expected[:, 0], atol=1e-4)
    for _ in range(3):
        lora.train_step(per_rank, DPOObjective(beta=0.1))
    moved = lora.compute(_batch(examples, pad), reference_pair_logps)[0][0]
    still = lora.compute(_batch(examples, pad), reference_pair_logps_lora_disabled)[0][0]
    assert (moved - expected).abs().max() > 1e-3  # the adapters trained
    assert torch.allclose(still, expected, atol=1e-4)  # and switching them off gives the start back


def test_lora_disabled_without_lora_is_refused(start: str) -> None:
    policy = LearnerGroup(ClusterConfig(), in_process=True)
    policy.setup(start, LearnerConfig(micro_batch_size_per_device=2), 1, seed=0)
    with pytest.raises(ValueError, match="needs a LoRA learner"):
        policy.compute([[{"chosen_input_ids": torch.zeros(1, 3, dtype=torch.long)}]], reference_pair_logps_lora_disabled)


def test_driver_refuses_bad_settings_before_starting_anything() -> None:
    from align.algorithms.common import JobError
    from align.algorithms.dpo import Reference, run
    from align.config import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=r"dpo.reference: set by command-line override 'dpo.reference=lora_disabled'"):
        load_recipe("tiny-dpo", ["dpo.reference=lora_disabled"])  # the loader refuses it now
    plain = load_recipe("tiny-dpo")
    r = plain.recipe
    loaded = dataclasses.replace(plain, recipe=r.model_copy(update={"dpo": r.dpo.model_copy(update={"reference": "lora_disabled"})}))
    with pytest.raises(JobError, match="learner.lora"):  # and the driver still does, for recipes built in code
        Reference(loaded, model_path=None)  # type: ignore[arg-type]
    with pytest.raises(JobError, match="label_smoothing"):
        run(load_recipe("tiny-dpo", ["dpo.loss=ipo", "dpo.label_smoothing=0.1"]))


def test_per_pair_means_divides_sums_by_pairs() -> None:
    m = per_pair_means({"pairs": 4.0, "accuracy": 3.0, "margin": 2.0, "loss": 0.5, "grad_norm": 1.5})
    assert m == {"accuracy": 0.75, "margin": 0.5, "loss": 0.5, "grad_norm": 1.5}
