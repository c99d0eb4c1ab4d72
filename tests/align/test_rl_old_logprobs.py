"""GRPO's pi_old without a pass of its own: when the step's update is its only one, the update's
forward gives the same loss, gradients and mismatch metrics as the separate no-grad pass."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from align.algorithms.rl.batch import Sequence_, micro_batches, mismatch
from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs, needs_old_pass
from align.config.schema import GRPOSettings, RLRecipe


class ToyLM(nn.Module):
    """A two-layer language model over 11 tokens: enough for log-probs with gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.out = nn.Linear(8, 11)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.out(torch.tanh(self.emb(input_ids))))


def _batch() -> dict[str, torch.Tensor]:
    ignore = -100
    seqs = [
        Sequence_([1, 2, 3, 4, 5], [ignore, ignore, 3, 4, 5], [-2.1, -2.5, -1.9, -2.4], 1.0),
        Sequence_([1, 6, 7, 8], [ignore, 6, 7, 8], [-2.0, -2.2, -2.6], -0.5),
        Sequence_([2, 9, 10], [ignore, 9, 10], [-2.3, -2.2], -0.5),
    ]
    return micro_batches(seqs, world_size=1, accumulation=1, pad_id=0, aggregation="token")[0][0]


def _loss_and_grads(model: nn.Module, mb: dict[str, torch.Tensor]) -> tuple[float, dict[str, float], list[torch.Tensor]]:
    model.zero_grad()
    loss, stats = GRPOObjective(0.2, 0.28, "token", 2.0)(model, mb)
    loss.backward()
    return float(loss.detach()), {k: float(v) for k, v in stats.items()}, [p.grad.clone() for p in model.parameters()]  # as the learner reads them back


def _with_separate_pass(model: nn.Module, mb: dict[str, torch.Tensor], shift: float = 0.0) -> dict[str, torch.Tensor]:
    """``mb`` with ``old_logprobs`` from a no-grad pass, as the driver's separate pass gives them, plus ``shift``."""
    out = dict(mb)
    with torch.no_grad():
        out["old_logprobs"] = TokenLogprobs()(model, out) + shift
    return out


def test_in_step_old_logprobs_match_the_separate_pass() -> None:
    torch.manual_seed(0)
    model = ToyLM()
    mb = _batch()
    loss_in_step, stats_in_step, grads_in_step = _loss_and_grads(model, dict(mb))
    separate = _with_separate_pass(model, mb)
    loss_sep, stats_sep, grads_sep = _loss_and_grads(model, separate)

    assert loss_in_step == pytest.approx(loss_sep, abs=1e-6) and loss_sep != 0.0
    for a, b in zip(grads_in_step, grads_sep, strict=True):
        assert torch.allclose(a, b, atol=1e-6) and b.abs().sum() > 0
    # The objective's summed mismatch equals the driver's mean over the same policy tokens.
    expected = mismatch([[separate]])
    assert stats_in_step["mismatch_k3_sum"] / stats_in_step["tokens"] == pytest.approx(expected["mismatch_kl"], rel=1e-5)
    assert stats_in_step["mismatch_abs_sum"] / stats_in_step["tokens"] == pytest.approx(expected["mismatch_abs_logp"], rel=1e-5)
    assert expected["mismatch_kl"] > 0  # the rollout log-probs above are not the toy model's
    assert stats_sep["mismatch_k3_sum"] == pytest.approx(stats_in_step["mismatch_k3_sum"], rel=1e-5)


def test_a_stale_old_logprob_changes_the_loss() -> None:
    """The in-step pi_old is not a no-op: a different pi_old (a second epoch) gives another loss."""
    torch.manual_seed(0)
    model = ToyLM()
    mb = _batch()
    loss_in_step, _, _ = _loss_and_grads(model, dict(mb))
    loss_stale, _, _ = _loss_and_grads(model, _with_separate_pass(model, mb, shift=-0.5))  # the policy has since moved up by e^0.5
    assert abs(loss_stale - loss_in_step) > 1e-3


@pytest.mark.parametrize(
    ("settings", "reference", "expected"),
    [
        ({}, False, False),
        ({"epochs_per_step": 2}, False, True),
        ({"mini_batches": 4}, False, True),
        ({"max_seq_logprob_error": 2.0}, False, True),
        ({}, True, True),
    ],
)
def test_which_steps_need_a_separate_pass(settings: dict, reference: bool, expected: bool) -> None:
    assert needs_old_pass(GRPOSettings(**settings), reference) is expected


def test_mini_batches_divide_the_step_and_set_the_accumulation() -> None:
    base = {"job": "rl", "grpo": {"prompts_per_step": 8, "generations_per_prompt": 4}, "learner": {"micro_batch_size_per_device": 4}}
    assert RLRecipe.model_validate(base).accumulation_steps == 8
    four = RLRecipe.model_validate({**base, "grpo": {**base["grpo"], "mini_batches": 4}})
    assert four.accumulation_steps == 2  # 32 sequences = 4 updates x 2 micro-batches x 4
    with pytest.raises(ValueError, match="grpo.mini_batches"):
        RLRecipe.model_validate({**base, "grpo": {**base["grpo"], "mini_batches": 3}})
