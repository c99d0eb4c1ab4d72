"""``learner.liger_kernel``: the learner with Liger's fused kernels against the eager learner, on GPU.

The real learner (DeepSpeed, packed rows) in this process, on a tiny Llama checkpoint, once
with ``liger_kernel: false`` and once with ``true``: the per-token log-probs, the GRPO loss, the
gradient norm (the backward) and the log-probs after one update must agree, in float32 tightly
and in bf16 within its rounding. The start-up line must say which path ran.

Needs deepspeed and liger-kernel (the gpu extra) and a CUDA GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# float32: the fused kernels compute what the eager ops do, up to summation order; bf16: each
# rounds its intermediates at different points (Liger's RMSNorm keeps them in float32). Measured
# on an H200 (2026-12-01): max |logp diff| 9.5e-7 (fp32) and 4.0e-3 (bf16; 9.2e-3 after one
# update); loss and grad norm equal to 6 digits in both.
TOLERANCE = {"fp32": {"logp": 1e-4, "loss": 1e-5, "grad": 1e-4}, "bf16": {"logp": 3e-2, "loss": 1e-3, "grad": 1e-2}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from align.config.schema import ModelConfig, TokenizerConfig
    from align.init_checkpoint import prepare_initial_checkpoint

    return prepare_initial_checkpoint(ModelConfig(arch="llama"), TokenizerConfig(vocab_size=512), tmp_path_factory.mktemp("liger") / "tiny")


def _micro_batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, vocab, (8, 96), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 70:] = 0
    attn[5, 20:] = 0
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, :8] = -100
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "loss_denominator": torch.tensor(float((labels[:, 1:] != -100).sum()))}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_liger_learner_matches_eager(checkpoint, precision, monkeypatch, capfd) -> None:
    from transformers.models.llama import modeling_llama

    from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs
    from align.config.schema import LearnerConfig
    from align.learner.engine import Learner
    from align.models import load_tokenizer

    # Liger's rotary patch is process-wide: put transformers' function back after this test.
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb)
    eager_classes = (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP)
    mb = _micro_batch(len(load_tokenizer(checkpoint)))
    mask = (mb["labels"][:, 1:] != -100).float()
    got: dict[bool, dict[str, object]] = {}
    for liger in (False, True):  # eager first: once Liger is applied, the rotary patch holds in this process
        learner = Learner(0, 1)
        learner.setup(str(checkpoint), LearnerConfig(zero_stage=0, micro_batch_size_per_device=8, precision=precision, liger_kernel=liger), 10, seed=0,
                      master=learner.free_port("127.0.0.1"))  # fmt: skip
        logp = learner.compute([dict(mb)], TokenLogprobs(1.0))[0] * mask
        rl = dict(mb, loss_mask=mask, old_logprobs=logp, rollout_logprobs=logp, advantages=torch.linspace(-1, 1, 8))
        stats = learner.train_step([rl], GRPOObjective(0.2, 0.28, "token", 2.0))
        after = learner.compute([dict(mb)], TokenLogprobs(1.0))[0] * mask
        got[liger] = {"logp": logp, "loss": stats["loss"], "grad": stats["grad_norm"], "after": after}
        del learner
    # Liger swaps these classes in transformers' module; the learner puts them back, or every Llama
    # built later in this process (test_packing.py's CPU reference) would get Liger's Triton modules.
    assert (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP) == eager_classes
    out = capfd.readouterr().out
    assert "liger kernels off (learner.liger_kernel: false)" in out and "liger kernels on (llama: rms_norm, swiglu, rope)" in out
    e, f, tol = got[False], got[True], TOLERANCE[precision]
    diff = (f["logp"] - e["logp"]).abs().max().item()
    diff_after = (f["after"] - e["after"]).abs().max().item()
    print(f"{precision}: liger vs eager max |logp diff| {diff:.2e} (after one update {diff_after:.2e}); "
          f"loss {f['loss']:.6f} vs {e['loss']:.6f}; grad norm {f['grad']:.6f} vs {e['grad']:.6f}")  # fmt: skip
    assert diff < tol["logp"] and diff_after < tol["logp"]
    assert abs(f["loss"] - e["loss"]) < tol["loss"] * max(1.0, abs(e["loss"]))
    assert abs(f["grad"] - e["grad"]) < tol["grad"] * e["grad"]
    assert e["grad"] > 0
