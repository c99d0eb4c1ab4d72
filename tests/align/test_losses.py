"""Losses and advantages: against hand-computed values and against TRL 1.16's own code on the same inputs.

TRL's losses live inside trainer methods (``DPOTrainer._compute_loss``,
``RewardTrainer.compute_loss``), so the TRL side calls those methods on a stand-in ``self``
that holds only the attributes they read, with a stand-in model that returns the given
per-token log-probs (or rewards). Where TRL has no per-pair form (conservative label
smoothing appears in 1.16 only inside the ``aot`` loss, which sorts the batch), it is called on
one pair at a time, where sorting does nothing.

The objective-level checks run a tiny NemotronH policy under TRL's fused LM head and compare
TRL's loss with :class:`DPOObjective` / :class:`BradleyTerryObjective` on the same weights and
batch: log-prob extraction, masking and loss together.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.reward_trainer import RewardTrainer

from align.config.schema import ModelConfig
from align.learner.objectives import BradleyTerryObjective, DPOObjective
from align.losses import IGNORE, bradley_terry_losses, dpo_losses, group_advantages, grpo_loss_sum, regression_loss_sum, truncated_is_weights

TOL = 1e-5


# ------------------------------------------------------------------ TRL stand-ins


def _accelerator() -> SimpleNamespace:
    return SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _trl_dpo_self(loss_types: list[str], beta: float, label_smoothing: float = 0.0, loss_weights: list[float] | None = None) -> SimpleNamespace:
    """What ``DPOTrainer._compute_loss`` reads of ``self``, with precomputed reference log-probs."""
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(),
    )  # fmt: skip


class _LogProbModel:
    """Returns fixed per-token log-probs ``[2B, T-1]`` (chosen rows, then rejected rows) as the fused head would."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        self.log_probs = log_probs

    def __call__(self, **kwargs: object) -> SimpleNamespace:
        lp = self.log_probs
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp), is_top1=torch.zeros_like(lp, dtype=torch.bool))


def _pair_batch(seed: int, pairs: int, prompt: int = 3, max_len: int = 9, chosen_len: int | None = None) -> dict[str, torch.Tensor]:
    """Random per-token log-probs and completion masks for ``pairs`` pairs (right-padded)."""
    g = torch.Generator().manual_seed(seed)
    t = prompt + max_len
    completion = torch.zeros(2 * pairs, t, dtype=torch.long)
    for i in range(2 * pairs):
        n = chosen_len if (chosen_len is not None and i < pairs) else int(torch.randint(1, max_len + 1, (1,), generator=g))
        completion[i, prompt : prompt + n] = 1
    token_logps = -torch.rand(2 * pairs, t - 1, generator=g, dtype=torch.float64).float() * 3
    token_logps = token_logps * completion[:, 1:]  # zero outside the completion, as TRL's fused head returns
    return {
        "token_logps": token_logps,
        "completion_mask": completion,
        "ref": -torch.rand(2 * pairs, generator=g) * 12,
    }


def _trl_dpo_loss(b: dict[str, torch.Tensor], loss_types: list[str], beta: float, label_smoothing: float = 0.0, loss_weights: list[float] | None = None) -> torch.Tensor:
    pairs = b["completion_mask"].size(0) // 2
    inputs = {
        "input_ids": torch.zeros_like(b["completion_mask"]),
        "attention_mask": torch.ones_like(b["completion_mask"]),
        "completion_mask": b["completion_mask"],
        "ref_chosen_logps": b["ref"][:pairs],
        "ref_rejected_logps": b["ref"][pairs:],
    }
    fake = _trl_dpo_self(loss_types, beta, label_smoothing, loss_weights)
    return DPOTrainer._compute_loss(fake, _LogProbModel(b["token_logps"]), inputs, return_outputs=False)


def _sums(b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    pairs = b["completion_mask"].size(0) // 2
    logps = b["token_logps"].sum(-1)
    n = b["completion_mask"].sum(-1).float()
    return logps[:pairs], logps[pairs:], b["ref"][:pairs], b["ref"][pairs:], n[:pairs], n[pairs:]


# ------------------------------------------------------------------ DPO against TRL


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_sigmoid_dpo_matches_trl(beta: float) -> None:
    b = _pair_batch(seed=int(beta * 100), pairs=8)
    pc, pr, rc, rr, _, _ = _sums(b)
    ours, chosen_r, rejected_r = dpo_losses(pc, pr, rc, rr, beta, "sigmoid")
    trl = _trl_dpo_loss(b, ["sigmoid"], beta)
    assert abs(ours.mean().item() - trl.item()) < TOL
    # Each pair alone, too: a mean can hide compensating errors.
    for i in range(8):
        one = _pair_batch(seed=int(beta * 100), pairs=8)
        sub = {"token_logps": one["token_logps"][[i, 8 + i]], "completion_mask": one["completion_mask"][[i, 8 + i]], "ref": one["ref"][[i, 8 + i]]}
        assert abs(ours[i].item() - _trl_dpo_loss(sub, ["sigmoid"], beta).item()) < TOL
    assert torch.allclose(chosen_r, beta * (pc - rc)) and torch.allclose(rejected_r, beta * (pr - rr))


@pytest.mark.parametrize("eps", [0.1, 0.25, 0.4])
def test_label_smoothed_dpo_matches_trl_per_pair(eps: float) -> None:
    b = _pair_batch(seed=7, pairs=6)
    pc, pr, rc, rr, _, _ = _sums(b)
    ours, _, _ = dpo_losses(pc, pr, rc, rr, 0.2, "sigmoid", label_smoothing=eps)
    for i in range(6):
        sub = {"token_logps": b["token_logps"][[i, 6 + i]], "completion_mask": b["completion_mask"][[i, 6 + i]], "ref": b["ref"][[i, 6 + i]]}
        # TRL 1.16's conservative-DPO form: the "aot" loss, which on one pair does not reorder anything.
        assert abs(ours[i].item() - _trl_dpo_loss(sub, ["aot"], 0.2, label_smoothing=eps).item()) < TOL


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_on_per_token_averages_matches_trl(beta: float) -> None:
    b = _pair_batch(seed=3, pairs=8)
    pc, pr, rc, rr, nc, nr = _sums(b)
    ours, _, _ = dpo_losses(pc / nc, pr / nr, rc / nc, rr / nr, beta, "ipo")
    assert abs(ours.mean().item() - _trl_dpo_loss(b, ["ipo"], beta).item()) < TOL


def test_sft_regularized_matches_trl_sigmoid_plus_sft_when_chosen_lengths_are_equal() -> None:
    # TRL's "sft" term is a token mean over the batch; ours is each pair's token mean (RPO). They agree
    # when every chosen response has the same length.
    b = _pair_batch(seed=11, pairs=5, chosen_len=6)
    pc, pr, rc, rr, nc, _ = _sums(b)
    dpo, _, _ = dpo_losses(pc, pr, rc, rr, 0.1, "sigmoid")
    ours = (dpo + 0.7 * (-pc / nc)).mean()
    trl = _trl_dpo_loss(b, ["sigmoid", "sft"], 0.1, loss_weights=[1.0, 0.7])
    assert abs(ours.item() - trl.item()) < TOL


# ------------------------------------------------------------------ DPO by hand


def test_dpo_hand_computed_cases() -> None:
    z = torch.tensor([0.0])
    # Policy equals reference: margin 0, loss log 2 for any smoothing; IPO (0 - 1/(2b))^2.
    for eps in (0.0, 0.3):
        loss, c, r = dpo_losses(z, z, z, z, 0.1, "sigmoid", eps)
        assert loss.item() == pytest.approx(math.log(2), abs=1e-7) and c.item() == 0 and r.item() == 0
    assert dpo_losses(z, z, z, z, 0.1, "ipo")[0].item() == pytest.approx(25.0)
    # h = (-1 - -2) - (-5 - -3) = 3; beta 0.5 -> x = 1.5.
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-2.0]), torch.tensor([-3.0])
    x = 1.5
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert dpo_losses(pc, pr, rc, rr, 0.5, "sigmoid")[0].item() == pytest.approx(softplus(-x), abs=1e-6)
    assert dpo_losses(pc, pr, rc, rr, 0.5, "sigmoid", 0.2)[0].item() == pytest.approx(0.8 * softplus(-x) + 0.2 * softplus(x), abs=1e-6)
    assert dpo_losses(pc, pr, rc, rr, 0.5, "ipo")[0].item() == pytest.approx((3 - 1) ** 2, abs=1e-6)
    _, c, r = dpo_losses(pc, pr, rc, rr, 0.5, "sigmoid")
    assert c.item() == pytest.approx(0.5) and r.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_losses(z, z, z, z, 0.1, "hinge")


# ------------------------------------------------------------------ Bradley-Terry and regression


def _trl_rm_loss(rewards: torch.Tensor, margin: torch.Tensor | None, center: float | None) -> torch.Tensor:
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), args=SimpleNamespace(center_rewards_coefficient=center),
        _total_train_tokens=0, _tp_size=1, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )  # fmt: skip
    inputs: dict[str, torch.Tensor] = {"input_ids": torch.zeros(rewards.size(0), 4, dtype=torch.long), "attention_mask": torch.ones(rewards.size(0), 4, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    model = lambda **kw: SimpleNamespace(logits=rewards.unsqueeze(-1))  # noqa: E731
    return RewardTrainer.compute_loss(fake, model, inputs)


def test_bradley_terry_matches_trl() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(2 * 10, generator=g) * 3
    chosen, rejected = rewards[:10], rewards[10:]
    assert abs(bradley_terry_losses(chosen, rejected).mean().item() - _trl_rm_loss(rewards, None, None).item()) < TOL
    margin = torch.rand(10, generator=g)
    assert abs(bradley_terry_losses(chosen, rejected, margin).mean().item() - _trl_rm_loss(rewards, margin, None).item()) < TOL
    # The objective's centring term is TRL's center_rewards_coefficient.
    centred = (bradley_terry_losses(chosen, rejected) + 0.01 * (chosen + rejected) ** 2).mean()
    assert abs(centred.item() - _trl_rm_loss(rewards, None, 0.01).item()) < TOL


def test_bradley_terry_and_regression_by_hand() -> None:
    assert bradley_terry_losses(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    assert bradley_terry_losses(torch.tensor([2.0]), torch.tensor([1.0])).item() == pytest.approx(math.log1p(math.exp(-1)))
    assert bradley_terry_losses(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    pred, target = torch.tensor([[1.0, 2.0], [0.0, 0.5]]), torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    assert regression_loss_sum(pred, target).item() == pytest.approx(1 + 0 + 1 + 0.25)


# ------------------------------------------------------------------ objectives on a real model vs TRL


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    from align.models import build_tiny_model

    model = build_tiny_model(ModelConfig(), tiny_tokenizer, seed=0).eval()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model


def _real_pairs(vocab: int, pairs: int = 4, prompt: int = 5, chosen_len: int = 6) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our pair micro-batch and TRL's concatenated inputs for the same random token sequences."""
    g = torch.Generator().manual_seed(1)
    rejected_lens = [3, 8, 5, 7][:pairs]
    t = prompt + max(chosen_len, *rejected_lens)
    ours: dict[str, torch.Tensor] = {}
    completion = []
    prompt_ids = torch.randint(10, vocab, (pairs, prompt), generator=g)
    for side, lens in (("chosen", [chosen_len] * pairs), ("rejected", rejected_lens)):
        ids = torch.zeros(pairs, t, dtype=torch.long)
        attn = torch.zeros(pairs, t, dtype=torch.long)
        labels = torch.full((pairs, t), IGNORE)
        comp = torch.zeros(pairs, t, dtype=torch.long)
        for i, n in enumerate(lens):
            resp = torch.randint(10, vocab, (n,), generator=g)
            ids[i, :prompt], ids[i, prompt : prompt + n] = prompt_ids[i], resp
            attn[i, : prompt + n] = 1
            labels[i, prompt : prompt + n] = resp
            comp[i, prompt : prompt + n] = 1
        ours.update({f"{side}_input_ids": ids, f"{side}_attention_mask": attn, f"{side}_labels": labels})
        completion.append(comp)
    ref = -torch.rand(2 * pairs, generator=g) * 40
    ours["ref_chosen_logps"], ours["ref_rejected_logps"] = ref[:pairs], ref[pairs:]
    trl = {
        "input_ids": torch.cat([ours["chosen_input_ids"], ours["rejected_input_ids"]]),
        "attention_mask": torch.cat([ours["chosen_attention_mask"], ours["rejected_attention_mask"]]),
        "completion_mask": torch.cat(completion),
        "ref_chosen_logps": ref[:pairs],
        "ref_rejected_logps": ref[pairs:],
    }
    return ours, trl


@pytest.mark.parametrize(
    ("ours", "trl_types", "trl_weights"),
    [
        (DPOObjective(beta=0.1, loss="sigmoid"), ["sigmoid"], None),
        (DPOObjective(beta=0.3, loss="ipo"), ["ipo"], None),
        (DPOObjective(beta=0.1, loss="sft_regularized", sft_weight=0.5), ["sigmoid", "sft"], [1.0, 0.5]),
    ],
    ids=["sigmoid", "ipo", "sft_regularized"],
)
def test_dpo_objective_matches_trl_on_a_tiny_policy(tiny_lm, ours: DPOObjective, trl_types: list[str], trl_weights: list[float] | None) -> None:
    mb, trl_inputs = _real_pairs(tiny_lm.config.vocab_size)
    with torch.no_grad():
        loss_sum, metrics = ours(tiny_lm, mb)
        trl = DPOTrainer._compute_loss(_trl_dpo_self(trl_types, ours.beta, loss_weights=trl_weights), tiny_lm, dict(trl_inputs), False)
    assert abs(loss_sum.item() / 4 - trl.item()) < TOL
    assert metrics["pairs"] == 4 and 0 <= metrics["accuracy"] <= 4


def test_bradley_terry_objective_matches_trl_on_a_tiny_reward_model(tiny_tokenizer, tmp_path) -> None:
    from align.learner.reward_model import RewardModel
    from align.models import build_tiny_model

    build_tiny_model(ModelConfig(), tiny_tokenizer, seed=0).save_pretrained(tmp_path)
    rm = RewardModel.from_causal_lm(tmp_path, num_labels=1).eval()
    torch.nn.init.normal_(rm.score.weight, std=1.0)  # rewards far apart enough to matter
    mb, trl_inputs = _real_pairs(rm.config.vocab_size)
    with torch.no_grad():
        loss_sum, metrics = BradleyTerryObjective(center_rewards_coefficient=0.05)(rm, mb)
        model = lambda **kw: SimpleNamespace(logits=rm(kw["input_ids"], kw["attention_mask"]))  # noqa: E731
        fake = SimpleNamespace(
            model=SimpleNamespace(training=True), accelerator=_accelerator(), args=SimpleNamespace(center_rewards_coefficient=0.05),
            _total_train_tokens=0, _tp_size=1, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        )  # fmt: skip
        trl = RewardTrainer.compute_loss(fake, model, {k: trl_inputs[k] for k in ("input_ids", "attention_mask")})
    assert abs(loss_sum.item() / 4 - trl.item()) < TOL
    assert metrics["accuracy"] == pytest.approx(fake._metrics["train"]["accuracy"][0] * 4)


# ------------------------------------------------------------------ GRPO by hand


def test_group_advantages_by_hand() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    std = math.sqrt(1 / 3)  # unbiased: sum of squares 1.0 over 3
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6)
    assert torch.allclose(group_advantages(r, "mean_std"), expected, atol=1e-6)
    assert torch.allclose(group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), "leave_one_out"), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    assert torch.allclose(group_advantages(torch.tensor([3.0, 1.0]), "leave_one_out"), torch.tensor([2.0, -2.0]))
    for baseline in ("mean_std", "leave_one_out"):
        assert group_advantages(torch.full((5,), 0.7), baseline).abs().max() < 1e-6  # all equal: no signal
        assert group_advantages(torch.tensor([1.0]), baseline).tolist() == [0.0]  # one sample: no baseline
    with pytest.raises(ValueError, match="unknown baseline"):
        group_advantages(r, "median")


def test_truncated_is_weights_by_hand() -> None:
    train = torch.log(torch.tensor([0.5, 0.1, 0.3]))
    rollout = torch.log(torch.tensor([0.25, 0.2, 0.3]))
    w = truncated_is_weights(train.requires_grad_(), rollout, cap=1.5)
    assert torch.allclose(w, torch.tensor([1.5, 0.5, 1.0]), atol=1e-6)
    assert not w.requires_grad


def _grpo_case() -> tuple[torch.Tensor, ...]:
    # Two sequences; ratios per token chosen by hand: seq 0 [1.5, 0.5, 1.1], seq 1 [0.5, 1.5, (pad)].
    ratio = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 1.0]])
    old = torch.log(torch.tensor([[0.2, 0.4, 0.5], [0.6, 0.3, 0.5]]))
    logp = (old + torch.log(ratio)).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, adv, mask


def test_grpo_clipping_low_and_high_by_hand() -> None:
    logp, old, adv, mask = _grpo_case()
    total, stats = grpo_loss_sum(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, aggregation="token")
    # seq 0 (A=+1): r=1.5 -> min(1.5, 1.28) = 1.28 (clipped high); r=0.5 -> min(0.5, 0.8) = 0.5; r=1.1 -> 1.1.
    # seq 1 (A=-1): r=0.5 -> min(-0.5, -0.8) = -0.8 (clipped low); r=1.5 -> min(-1.5, -1.28) = -1.5.
    per_token = [[-1.28, -0.5, -1.1], [0.8, 1.5]]
    assert total.item() == pytest.approx(sum(map(sum, per_token)), abs=1e-5)
    assert stats["clip_frac_sum"].item() == 2 and stats["tokens"].item() == 5
    assert stats["ratio_sum"].item() == pytest.approx(1.5 + 0.5 + 1.1 + 0.5 + 1.5, abs=1e-5)
    total.backward()
    # Clipped tokens pass no gradient; the others pass -A * ratio (d ratio / d logp = ratio).
    expected_grad = torch.tensor([[0.0, -0.5, -1.1], [0.0, 1.5, 0.0]])
    assert torch.allclose(logp.grad, expected_grad, atol=1e-5)


def test_grpo_clip_higher_is_asymmetric() -> None:
    logp, old, adv, mask = _grpo_case()
    symmetric, _ = grpo_loss_sum(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    higher, _ = grpo_loss_sum(logp, old, adv, mask, clip_low=0.2, clip_high=0.6)
    # Only seq 0's r=1.5 token changes: capped at 1.2 vs left at 1.5 (below 1.6).
    assert symmetric.item() - higher.item() == pytest.approx(1.5 - 1.2, abs=1e-5)


def test_grpo_token_vs_sequence_aggregation_by_hand() -> None:
    logp, old, adv, mask = _grpo_case()
    token, _ = grpo_loss_sum(logp, old, adv, mask, 0.2, 0.28, aggregation="token")
    sequence, _ = grpo_loss_sum(logp, old, adv, mask, 0.2, 0.28, aggregation="sequence")
    assert token.item() == pytest.approx(-1.28 - 0.5 - 1.1 + 0.8 + 1.5, abs=1e-5)
    assert sequence.item() == pytest.approx((-1.28 - 0.5 - 1.1) / 3 + (0.8 + 1.5) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="unknown aggregation"):
        grpo_loss_sum(logp, old, adv, mask, 0.2, 0.28, aggregation="prompt")


def test_grpo_is_weights_and_kl_by_hand() -> None:
    logp, old, adv, mask = _grpo_case()
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    weighted, _ = grpo_loss_sum(logp, old, adv, mask, 0.2, 0.28, is_weights=w)
    assert weighted.item() == pytest.approx(-1.28 * 2 - 0.5 - 1.1 + 0.8 + 1.5 * 0.5, abs=1e-5)
    ref = logp.detach() + torch.log(torch.tensor(2.0))  # ref/pi = 2 everywhere: k3 = 2 - log 2 - 1
    with_kl, _ = grpo_loss_sum(logp, old, adv, mask, 0.2, 0.28, ref_logp=ref, kl_coef=0.1)
    plain, _ = grpo_loss_sum(logp, old, adv, mask, 0.2, 0.28)
    assert with_kl.item() - plain.item() == pytest.approx(0.1 * 5 * (1 - math.log(2)), abs=1e-5)


def test_token_logprob_helpers_match_cross_entropy() -> None:
    from align.losses import sft_loss_sum, shift, token_logprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[IGNORE, 3, 4, IGNORE, IGNORE], [IGNORE, IGNORE, 1, 2, 7]])
    lg, lb = shift(logits, labels)
    lp = token_logprobs(lg, lb)
    loss, n = sft_loss_sum(logits, labels)
    assert n == 5 and loss.item() == pytest.approx(-lp.sum().item(), abs=1e-5)
    assert loss.item() == pytest.approx(F.cross_entropy(lg.reshape(-1, 11), lb.reshape(-1), ignore_index=IGNORE, reduction="sum").item(), abs=1e-5)
