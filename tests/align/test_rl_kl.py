"""GRPO's KL to the reference (k3), the KL metric per environment, and the rollout queue's ordering."""

import math
import threading
import time

import pytest
import torch

from align.algorithms.common import FrozenReference, JobError
from align.algorithms.rl.batch import mean_k3, micro_batches
from align.algorithms.rl.objective import GRPOObjective
from align.algorithms.rl.schedule import EngineQueue
from align.config.schema import ClusterConfig, LearnerConfig, LoraConfig
from align.losses import grpo_loss_sum, kl_k3


def test_k3_by_hand() -> None:
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3])).requires_grad_()
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    k3 = kl_k3(logp, ref)
    # r = ref / p: 0.5 -> 0.5 - log 0.5 - 1; 2 -> 2 - log 2 - 1; 1 -> 0.
    assert k3.tolist() == pytest.approx([math.log(2) - 0.5, 1 - math.log(2), 0.0], abs=1e-6)
    k3.sum().backward()
    assert logp.grad.tolist() == pytest.approx([1 - 0.5, 1 - 2.0, 0.0], abs=1e-6)  # d/dlogp = 1 - r


def test_k3_is_an_unbiased_estimate_of_kl_p_ref() -> None:
    """E_{x~p}[k3(x)] = KL(p || ref) exactly, for any two distributions (sum over all outcomes)."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(7, generator=g), -1)
    q = torch.softmax(torch.randn(7, generator=g), -1)
    expected = float((p * (p.log() - q.log())).sum())
    assert float((p * kl_k3(p.log(), q.log())).sum()) == pytest.approx(expected, abs=1e-6)
    assert float(kl_k3(p.log(), q.log()).min()) >= 0


def test_kl_term_of_the_grpo_loss_by_hand() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.2, 0.4, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1], [0.2, 0.2, 0.1]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the third column is padding: its large KL must not count
    zero_adv = torch.zeros(2)
    k = [[math.log(2) - 0.5, 1 - math.log(2)], [0.0, math.log(2) - 0.5]]
    token, _ = grpo_loss_sum(logp, logp, zero_adv, mask, 0.2, 0.28, "token", ref_logp=ref, kl_coef=0.1)
    assert token.item() == pytest.approx(0.1 * sum(map(sum, k)), abs=1e-6)
    sequence, _ = grpo_loss_sum(logp, logp, zero_adv, mask, 0.2, 0.28, "sequence", ref_logp=ref, kl_coef=0.1)
    assert sequence.item() == pytest.approx(0.1 * (sum(k[0]) / 2 + sum(k[1]) / 2), abs=1e-6)
    # The KL stays out of the importance weights: weighting the surrogate does not scale it.
    weighted, _ = grpo_loss_sum(logp, logp, zero_adv, mask, 0.2, 0.28, "token", is_weights=torch.full((2, 3), 2.0), ref_logp=ref, kl_coef=0.1)
    assert weighted.item() == pytest.approx(token.item(), abs=1e-6)
    off, _ = grpo_loss_sum(logp, logp, zero_adv, mask, 0.2, 0.28, "token", ref_logp=ref, kl_coef=0.0)
    assert off.item() == 0.0


def test_kl_penalty_keeps_the_policy_near_the_reference() -> None:
    """Gradient steps on the same advantages: with kl_coef > 0 the policy ends measurably closer to the reference."""
    ref_logits = torch.zeros(6)
    tokens = torch.tensor([[0, 1, 2, 3]])  # sampled tokens; positive advantage pushes them up
    mask = torch.ones(1, 4)

    def train(kl_coef: float) -> float:
        logits = ref_logits.clone().requires_grad_()
        opt = torch.optim.SGD([logits], lr=0.5)
        for _ in range(30):
            logp = torch.log_softmax(logits, -1)[tokens]
            ref = torch.log_softmax(ref_logits, -1)[tokens]
            loss, _ = grpo_loss_sum(logp, logp.detach(), torch.tensor([1.0]), mask, 0.2, 0.28, ref_logp=ref, kl_coef=kl_coef)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = torch.softmax(logits.detach(), -1)
        return float((p * (p.log() - torch.log_softmax(ref_logits, -1))).sum())

    # Per sampled token the gradient is -A + kl_coef (1 - ref/p): with kl_coef > A it has a fixed
    # point at p = ref / (1 - A/kl_coef), here 4/3 of the reference's probability.
    free, held = train(0.0), train(4.0)
    assert free > 0.05  # the advantages moved the policy away
    assert held < 0.5 * free


def test_objective_refuses_kl_without_reference_logprobs() -> None:
    obj = GRPOObjective(0.2, 0.28, "token", 2.0, kl_coef=0.1)
    with pytest.raises(ValueError, match="ref_logprobs"):
        obj(torch.nn.Identity(), {"loss_mask": torch.ones(1, 2)})


def test_mean_k3_overall_and_per_environment() -> None:
    from align.algorithms.rl.batch import Sequence_

    # Three sequences: env a, b, a. Rows are re-ordered by length inside micro_batches.
    seqs = [Sequence_([1, 2, 3], [-100, 2, 3], [0.0, 0.0], 1.0), Sequence_([1, 2, 3, 4, 5], [-100, 2, 3, 4, 5], [0.0] * 4, 1.0),
            Sequence_([1, 2], [-100, 2], [0.0], 1.0)]  # fmt: skip
    per_rank = micro_batches(seqs, world_size=1, accumulation=1, pad_id=0, aggregation="token")
    mb = per_rank[0][0]
    assert mb["sequence_index"].tolist() == [1, 0, 2]  # longest first
    # Per token: old = log 0.5 everywhere; ref = log 0.25 (k3 = log 2 - 0.5) in env a, log 0.5 (k3 = 0) in b.
    mb["old_logprobs"] = torch.full_like(mb["rollout_logprobs"], math.log(0.5))
    ref = torch.full_like(mb["rollout_logprobs"], math.log(0.5))
    for row, seq in enumerate(mb["sequence_index"].tolist()):
        if seq in (0, 2):
            ref[row] = math.log(0.25)
    mb["ref_logprobs"] = ref
    kl = mean_k3(per_rank, "old_logprobs", "ref_logprobs", ["a", "b", "a"])
    k = math.log(2) - 0.5
    # Policy tokens: a has 2 + 1, b has 4.
    assert kl["a"] == pytest.approx(k, abs=1e-6) and kl["b"] == pytest.approx(0.0, abs=1e-7)
    assert kl[""] == pytest.approx(3 * k / 7, abs=1e-6)
    assert set(mean_k3(per_rank, "old_logprobs", "ref_logprobs")) == {""}


def test_reference_kinds_are_checked_before_anything_starts() -> None:
    with pytest.raises(JobError, match=r"grpo.reference is lora_disabled, but learner.lora is not set"):
        FrozenReference("lora_disabled", ClusterConfig(), LearnerConfig(), None, 0, "grpo.reference")  # type: ignore[arg-type]
    FrozenReference.check("lora_disabled", LearnerConfig(lora=LoraConfig()), "grpo.reference")
    assert FrozenReference.cpus("separate_group", ClusterConfig(num_learners=2, cpus_per_learner=1.5)) == 3.0
    assert FrozenReference.cpus("lora_disabled", ClusterConfig(num_learners=2)) == 0.0


def _driver_schedule(queue: EngineQueue, steps: int, depth: int) -> list[int]:
    """The driver's submission pattern (align/algorithms/rl/driver.py) with stand-in jobs; returns staleness per step."""
    pending: dict[int, object] = {}
    staleness = []

    def rollout(step: int) -> int:
        version = queue.version
        time.sleep(0.01)  # long enough that the driver thread runs ahead when it can
        return version

    for step in range(steps):
        for ahead in range(step, min(step + depth, steps - 1) + 1):
            if ahead not in pending:
                pending[ahead] = queue.submit(rollout, ahead)
        version = pending.pop(step).result()  # type: ignore[attr-defined]
        staleness.append(step - version)
        queue.sync(lambda weights: None, None, step + 1)
    queue.close()
    return staleness


def test_engine_queue_bounds_staleness() -> None:
    assert _driver_schedule(EngineQueue(threaded=False, version=0), 5, depth=0) == [0, 0, 0, 0, 0]
    assert _driver_schedule(EngineQueue(threaded=True, version=0), 5, depth=1) == [0, 1, 1, 1, 1]
    assert _driver_schedule(EngineQueue(threaded=True, version=0), 6, depth=2) == [0, 1, 2, 2, 2, 2]


def test_engine_queue_runs_in_order_off_the_driver_thread_and_passes_errors_on() -> None:
    q = EngineQueue(threaded=True, version=3)
    seen: list[tuple[str, int]] = []
    a = q.submit(lambda: seen.append(("a", q.version)) or threading.current_thread().name)
    q.sync(lambda w: seen.append(("load", w)), 7, 4)
    b = q.submit(lambda: seen.append(("b", q.version)))
    boom = q.submit(lambda: 1 / 0)
    b.result()
    assert seen == [("a", 3), ("load", 7), ("b", 4)]
    assert a.result().startswith("rollout")
    with pytest.raises(ZeroDivisionError):
        boom.result()
    q.close()
    inline = EngineQueue(threaded=False, version=0)
    assert inline.submit(lambda: threading.current_thread().name).result() == threading.current_thread().name
    with pytest.raises(ZeroDivisionError):
        inline.submit(lambda: 1 / 0).result()
