"""``grpo.forking_share``: the policy gradient on the highest-entropy tokens only (align/losses.py)."""

import math

import pytest
import torch
from torch import nn

from align.algorithms.rl.objective import GRPOObjective
from align.losses import top_entropy_mask


def _entropy(logits: list[float]) -> float:
    p = torch.softmax(torch.tensor(logits), -1)
    return float(-(p * p.log()).sum())


def test_top_entropy_mask_by_hand() -> None:
    # Entropies: uniform ln 2 = 0.693, [1, 0] 0.582, [2, 0] 0.378, [10, 0] ~0.0005; the last row is padding.
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert _entropy([1.0, 0.0]) == pytest.approx(0.5822, abs=1e-4)
    # ceil(0.5 x 4) = 2 tokens: the two most uncertain; the padded uniform row never counts.
    assert top_entropy_mask(logits, mask, 0.5).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert top_entropy_mask(logits, mask, 0.2).tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]  # at least one
    assert top_entropy_mask(logits, mask, 1.0).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]
    # The entropy is the sampler's, at its temperature: [0, 0, -20] stays near ln 2 when divided by 4
    # (0.69 -> 0.71), [3, 0, 0] spreads (0.37 -> 1.03), so the more uncertain of the two swaps.
    pair = torch.tensor([[[0.0, 0.0, -20.0], [3.0, 0.0, 0.0]]])
    assert _entropy([3.0, 0.0, 0.0]) == pytest.approx(0.3666, abs=1e-4) and _entropy([0.75, 0.0, 0.0]) == pytest.approx(1.0295, abs=1e-4)
    assert top_entropy_mask(pair, torch.ones(1, 2), 0.5).tolist() == [[1.0, 0.0]]
    assert top_entropy_mask(pair, torch.ones(1, 2), 0.5, temperature=4.0).tolist() == [[0.0, 1.0]]
    assert top_entropy_mask(logits, torch.zeros_like(mask), 0.5).sum() == 0


class _Logits(nn.Module):
    """A 'policy' whose next-token logits are a free parameter per position (no tokens read)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(logits.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return type("Out", (), {"logits": self.table})()


def test_forking_share_trains_only_the_uncertain_tokens() -> None:
    # One sequence of 5 tokens; labels at positions 1-4, so the logits of positions 0-3 carry the loss.
    # Position 1 is confident ([10, 0, 0]), the others uncertain.
    table = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 0, 0, 0, 1]])
    mb = {"input_ids": torch.zeros(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long), "labels": labels,
          "loss_mask": torch.ones(1, 4), "advantages": torch.tensor([-1.0]), "rollout_logprobs": torch.zeros(1, 4)}  # fmt: skip
    grads = {}
    for share in (1.0, 0.75):
        model = _Logits(table)
        loss, stats = GRPOObjective(0.2, 0.28, "token", tis_cap=1e9, forking_share=share)(model, mb)
        loss.backward()
        grads[share] = model.table.grad[0].abs().sum(-1)
        assert stats["tokens"].item() == 4  # masked-out tokens still count in the total
    assert (grads[1.0][:4] > 0).all()
    # ceil(0.75 x 4) = 3: the confident position 1 gets no gradient, the rest the same as with all tokens.
    assert grads[0.75][1] == 0
    assert torch.allclose(grads[0.75][[0, 2, 3]], grads[1.0][[0, 2, 3]])
    assert math.isclose(float(grads[0.75][4]), 0.0)
