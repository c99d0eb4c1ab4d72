"""``learner.liger_kernel``: which setting turns Liger on where, and the errors of ``true``.

CPU only, without the package: the choice is made before anything of Liger is imported. Also
that applying Liger to one model leaves models built later alone (with a double of Liger's patch
function, and with the package itself where it is installed). The kernels themselves are checked
against the eager model on a GPU (tests/gpu/test_liger_gpu.py).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align.config.schema import LearnerConfig
from align.learner.liger import PIN, LigerUnavailable, choose_liger, use_liger

ROOT = Path(__file__).resolve().parents[2]


def test_auto_is_on_only_with_cuda_the_package_and_a_measured_model_type() -> None:
    assert choose_liger("auto", "llama", cuda=True, have_package=True).on
    off = {
        "no CUDA": choose_liger("auto", "llama", cuda=False, have_package=True),
        "not installed": choose_liger("auto", "llama", cuda=True, have_package=False),
        "hybrid": choose_liger("auto", "nemotron_h", cuda=True, have_package=True),
        "false": choose_liger(False, "llama", cuda=True, have_package=True),
    }
    assert not any(c.on for c in off.values())
    assert off["no CUDA"].why == "liger kernels off (no CUDA)"
    assert PIN in off["not installed"].why and "nemotron_h" in off["hybrid"].why and "false" in off["false"].why


def test_true_names_what_is_missing() -> None:
    with pytest.raises(LigerUnavailable, match="needs a CUDA GPU"):
        choose_liger(True, "llama", cuda=False, have_package=True)
    with pytest.raises(LigerUnavailable, match=r"liger_kernel package is not installed.*pip install 'liger-kernel==0\.8\.5'"):
        choose_liger(True, "llama", cuda=True, have_package=False)


def test_the_setting_parses_from_yaml_values_and_defaults_to_auto() -> None:
    assert LearnerConfig().liger_kernel == "auto"
    assert LearnerConfig(liger_kernel=True).liger_kernel is True
    assert LearnerConfig(liger_kernel="false").liger_kernel is False  # a dotted override's string
    with pytest.raises(ValueError):
        LearnerConfig(liger_kernel="fast")


def test_on_cpu_auto_leaves_the_model_alone_and_imports_nothing_of_liger() -> None:
    """The learner's CPU path: the model's forwards are the eager ones, and neither Liger nor Triton is imported."""
    code = (
        "import sys\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from align.learner.liger import use_liger\n"
        "m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))\n"
        "before = set(sys.modules)  # transformers itself imports Triton where it is installed\n"
        "print(use_liger(m, 'auto', cuda=False))\n"
        "assert 'forward' not in vars(m.model.norm) and 'forward' not in vars(m.model.layers[0].mlp)\n"
        "assert not [k for k in set(sys.modules) - before if k.startswith(('liger_kernel', 'triton'))], 'imported'\n"
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "liger kernels off (no CUDA)"


def test_true_on_cpu_stops_before_touching_the_model() -> None:
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(LigerUnavailable, match="set learner.liger_kernel: auto or false"):
        use_liger(model, True, cuda=False)
    assert "forward" not in vars(model.model.norm)


def test_the_pin_is_the_gpu_extras() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert PIN in extra


def test_triton_kernels_are_pinned_unless_the_user_chose(monkeypatch) -> None:
    import os

    from align.learner.liger import pin_triton_kernels

    for name in ("LIGER_KERNEL_IMPL", "LIGER_KERNEL_IMPL_ROPE", "LIGER_KERNEL_IMPL_RMS_NORM", "LIGER_KERNEL_IMPL_SWIGLU"):
        monkeypatch.setenv(name, "")  # recorded, so the test's changes are undone after it
        monkeypatch.delenv(name)
    monkeypatch.setenv("LIGER_KERNEL_IMPL_ROPE", "nvidia-cutedsl")
    pin_triton_kernels()
    assert (os.environ["LIGER_KERNEL_IMPL_ROPE"], os.environ["LIGER_KERNEL_IMPL_RMS_NORM"], os.environ["LIGER_KERNEL_IMPL_SWIGLU"]) == (
        "nvidia-cutedsl", "nvidia-triton", "nvidia-triton")  # fmt: skip
    monkeypatch.delenv("LIGER_KERNEL_IMPL_SWIGLU")
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "nvidia-cutile")  # a global choice holds for every op
    pin_triton_kernels()
    assert "LIGER_KERNEL_IMPL_SWIGLU" not in os.environ


def _llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))


def _undo_after_test(monkeypatch, module, names: tuple[str, ...]) -> None:
    for name in names:  # recorded, so whatever apply_liger leaves is undone after the test
        monkeypatch.setattr(module, name, getattr(module, name))
    for op in ("ROPE", "RMS_NORM", "SWIGLU"):
        monkeypatch.setenv(f"LIGER_KERNEL_IMPL_{op}", "")
        monkeypatch.delenv(f"LIGER_KERNEL_IMPL_{op}")


class _Wrapped(torch.nn.Module):
    """A Llama backbone under a class of another module, as in align's reward model."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _llama().model


@pytest.mark.parametrize("wrapped", [False, True])
def test_apply_liger_leaves_models_built_later_alone(monkeypatch, wrapped: bool) -> None:
    """Liger's patch function swaps transformers' classes (``modeling_llama.LlamaRMSNorm = LigerRMSNorm``,
    ``LlamaMLP = LigerSwiGLUMLP``) as well as patching the instance; apply_liger puts the classes back.

    Before, a Llama built later in the process (the CPU reference of tests/gpu/test_packing.py, run
    after the Liger GPU test) came out with Liger's Triton modules and failed on CPU. This double
    does what liger-kernel 0.8.5's ``apply_liger_kernel_to_llama(model=...)`` does; the test below
    runs the real package where it is installed.
    """
    import types

    from transformers.models.llama import modeling_llama

    from align.learner.liger import apply_liger

    class FusedNorm(torch.nn.Module):
        pass

    class FusedMLP(torch.nn.Module):
        pass

    def fused_rope(q, k, cos, sin, *args, **kwargs):
        return q, k

    def apply_to_instance(model, **patches):
        modeling_llama.apply_rotary_pos_emb = fused_rope
        modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP = FusedNorm, FusedMLP
        model.model.norm.forward = types.MethodType(lambda self, x: x, model.model.norm)

    fake = types.ModuleType("liger_kernel.transformers.monkey_patch")
    fake._apply_liger_kernel_to_instance = apply_to_instance
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    _undo_after_test(monkeypatch, modeling_llama, ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"))
    eager_norm, eager_mlp = modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP

    patched = _Wrapped() if wrapped else _llama()
    apply_liger(patched)
    assert "forward" in vars(patched.model.norm)  # the instance is patched
    assert modeling_llama.apply_rotary_pos_emb is fused_rope  # process-wide by necessity (module docstring)
    assert (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP) == (eager_norm, eager_mlp)
    later = _llama()
    assert type(later.model.norm) is eager_norm and type(later.model.layers[0].mlp) is eager_mlp


def test_real_liger_leaves_models_built_later_alone(monkeypatch) -> None:
    """The same with liger-kernel itself (it imports Triton; patching needs no GPU)."""
    pytest.importorskip("liger_kernel.transformers.monkey_patch", reason="liger-kernel (and Triton) not installed")
    from transformers.models.llama import modeling_llama

    from align.learner.liger import apply_liger

    _undo_after_test(monkeypatch, modeling_llama, ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"))
    eager_norm, eager_mlp, eager_rope = modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP, modeling_llama.apply_rotary_pos_emb
    patched = _llama()
    apply_liger(patched)
    assert patched.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP" and "forward" in vars(patched.model.norm)
    assert modeling_llama.apply_rotary_pos_emb is not eager_rope
    later = _llama()
    assert type(later.model.norm) is eager_norm and type(later.model.layers[0].mlp) is eager_mlp
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", eager_rope)
    with torch.no_grad():  # on CPU: every module of the later model is transformers' own
        assert torch.isfinite(later(torch.tensor([[1, 2, 3]])).logits).all()
