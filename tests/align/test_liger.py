"""``learner.liger_kernel``: which setting turns Liger on where, and the errors of ``true``.

CPU only, without the package: the choice is made before anything of Liger is imported. The
kernels themselves are checked against the eager model on a GPU (tests/gpu/test_liger_gpu.py).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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
        "print(use_liger(m, 'auto', cuda=False))\n"
        "assert 'forward' not in vars(m.model.norm) and 'forward' not in vars(m.model.layers[0].mlp)\n"
        "assert not [k for k in sys.modules if k.startswith(('liger_kernel', 'triton'))], 'imported'\n"
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
