"""Packed rows give each sample what it gets in a padded batch: hybrid (Mamba2 + attention) and Llama.

The CPU test checks the packing logic exactly (float32, transformers' PyTorch Mamba2 with the
per-sample ``seq_idx`` reference of ``align.kernels``). The GPU tests check the real thing:
``mamba_ssm``'s Triton scan with ``seq_idx`` in bf16, against the padded batch on the GPU and
against the float32 CPU path, forward and backward, plus greedy decoding GPU vs CPU.

Llama's attention is transformers' default, SDPA, on CPU and GPU alike (the GPU image has no
flash-attn; nothing in align asks for another): packed rows reach it as a block-diagonal causal
mask that transformers derives from the restarting ``position_ids``. The bf16 tolerance is wide
of what bf16 costs here: the GPU test's logic run on CPU in bf16 (2026-12-01) gave packed equal to
padded exactly, both within 5.6e-4 of float32 (NLL about 6.3), and gradient cosine 1.000.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, NemotronHConfig, PreTrainedModel

from align.kernels import enable_mamba_kernels
from align.models import enable_packed_forward

VOCAB = 512
# Lengths cross the Mamba2 chunk (64) and the packed row boundary; one sample is a single token.
LENGTHS = [200, 37, 64, 1, 129, 90, 50, 20]


def hybrid_config() -> NemotronHConfig:
    return NemotronHConfig(
        vocab_size=VOCAB, hidden_size=256, hybrid_override_pattern="M-M*-M*-", num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, intermediate_size=512, mamba_num_heads=8, mamba_head_dim=64, ssm_state_size=64, n_groups=2,
        chunk_size=64, expand=2, mlp_hidden_act="relu2", residual_in_fp32=False, max_position_embeddings=1024,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True, use_cache=False,
    )  # fmt: skip


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=512, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=True, use_cache=False,
    )  # fmt: skip


def build(config: NemotronHConfig | LlamaConfig) -> PreTrainedModel:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    foreign = sorted({type(m).__module__ for m in model.modules() if not type(m).__module__.startswith(("transformers.", "torch."))})
    # An earlier test in this process swapped transformers' classes (Liger did: align/learner/liger.py).
    assert not foreign, f"{type(model).__name__} built with modules from {foreign}, not transformers'"
    return model


def padded_batch(lengths: list[int], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        cols = slice(t - n, t) if left else slice(0, n)
        ids[i, cols] = torch.randint(2, VOCAB, (n,), generator=g)
        mask[i, cols] = 1
    return ids, mask


def per_sample_nll(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each sample (the SFT loss per sample)."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    labels = ids.masked_fill(mask == 0, -100)[:, 1:].masked_fill(mask[:, :-1] == 0, -100)  # no target read from a pad
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counts = (labels != -100).sum(1).clamp(min=1)
    return nll.sum(1) / counts


def padded_and_packed(model: PreTrainedModel) -> tuple[PreTrainedModel, PreTrainedModel]:
    packed = copy.deepcopy(model)
    assert enable_packed_forward(packed, force=True)
    return model, packed


@pytest.mark.parametrize("arch", ["nemotron_h", "llama"])
@pytest.mark.parametrize("left", [False, True])
def test_packed_equals_padded_cpu(arch: str, left: bool) -> None:
    enable_mamba_kernels(require_cuda=False)  # CPU: transformers' PyTorch Mamba2 + the seq_idx reference
    model = build(hybrid_config() if arch == "nemotron_h" else llama_config())
    padded, packed = padded_and_packed(model)
    ids, mask = padded_batch(LENGTHS, left=left)
    with torch.no_grad():
        want = per_sample_nll(padded, ids, mask)
        got = per_sample_nll(packed, ids, mask)
    lengths = torch.tensor(LENGTHS)
    assert torch.allclose(got[lengths > 1], want[lengths > 1], rtol=1e-5, atol=1e-5), (got, want)


def test_packed_rows_never_exceed_padded_width() -> None:
    from align.data.batching import pack_padded

    ids, mask = padded_batch(LENGTHS)
    p = pack_padded(ids, mask)
    assert p.input_ids.shape[1] <= ids.shape[1] and p.input_ids.shape[0] < ids.shape[0]
    assert p.num_tokens == sum(LENGTHS)
    assert torch.equal(p.input_ids.reshape(-1)[p.target], ids.reshape(-1)[p.source])


# ---------------------------------------------------------------------------- GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("arch", ["nemotron_h", "llama"])
def test_packed_equals_padded_gpu_bf16(arch: str) -> None:
    status = enable_mamba_kernels()
    if arch == "nemotron_h":
        assert status.chunk_scan == "mamba_ssm triton", status
    cpu_model = build(hybrid_config() if arch == "nemotron_h" else llama_config())
    ids, mask = padded_batch(LENGTHS)
    keep = torch.tensor(LENGTHS) > 1
    with torch.no_grad():
        cpu = per_sample_nll(cpu_model, ids, mask)

    gpu = copy.deepcopy(cpu_model).to("cuda", torch.bfloat16).train()
    padded, packed = padded_and_packed(gpu)
    ids, mask = ids.cuda(), mask.cuda()
    loss_padded = per_sample_nll(padded, ids, mask)
    loss_padded.sum().backward()
    loss_packed = per_sample_nll(packed, ids, mask)
    loss_packed.sum().backward()
    a, b = loss_padded.detach().cpu(), loss_packed.detach().cpu()
    print(f"{arch}: cpu fp32 {cpu[keep].tolist()}\n  gpu padded {a[keep].tolist()}\n  gpu packed {b[keep].tolist()}")
    assert torch.allclose(b[keep], a[keep], rtol=2e-2, atol=2e-2)
    assert torch.allclose(b[keep], cpu[keep], rtol=2e-2, atol=2e-2)
    ga, gb = _grads(padded), _grads(packed)
    assert set(ga) == set(gb)
    flat_a = torch.cat([g.flatten() for g in ga.values()])
    flat_b = torch.cat([g.flatten() for g in gb.values()])
    cos = torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0).item()
    print(f"{arch}: gradient cosine packed vs padded {cos:.5f}")
    assert cos > 0.99


@pytest.mark.gpu
@cuda
def test_greedy_gpu_matches_cpu() -> None:
    """Greedy continuation of the hybrid policy: GPU (Triton kernels, float32) equals CPU (PyTorch)."""
    enable_mamba_kernels()
    cpu_model = build(hybrid_config())
    gpu_model = copy.deepcopy(cpu_model).cuda()
    prompt, _ = padded_batch([24])
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, use_cache=True)
    with torch.no_grad():
        want = cpu_model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
        got = gpu_model.generate(prompt.cuda(), attention_mask=torch.ones_like(prompt).cuda(), **kwargs).cpu()
    print("greedy cpu", want[0, 24:].tolist(), "\ngreedy gpu", got[0, 24:].tolist())
    assert torch.equal(got, want)
