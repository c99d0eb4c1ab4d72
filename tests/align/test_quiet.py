"""Quiet logs by default, everything with --verbose: the library noise a job used to print, in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.config.schema import ModelConfig, TokenizerConfig
from align.init_checkpoint import prepare_initial_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# What a learner or engine process does that printed noise: a deprecated torch.distributed name
# (vLLM touches it), a tiny NemotronH loaded and run on CPU (weight-loading bar, mamba_ssm advice).
SCRIPT = """
import sys
from align.quiet import configure, kernel_note
configure(sys.argv[2] == "verbose")
import torch, torch.distributed
hasattr(torch.distributed.reduce_op, "__dict__")
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
model(torch.tensor([[5, 6, 7, 8]]))
print("NOTE:", kernel_note())
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    texts = [f"What is {a} + {b}?" for a in range(20) for b in range(20)]
    return str(prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("q") / "init", texts=texts))


def _run(checkpoint: str, mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "ALIGN_VERBOSE")}
    p = subprocess.run([sys.executable, "-c", SCRIPT, checkpoint, mode], env={**env, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout + p.stderr


def test_library_noise_is_hidden_by_default_and_shown_with_verbose(checkpoint) -> None:
    noise = ("FutureWarning", "Loading weights", "is falling back to its reference PyTorch implementation")
    loud = _run(checkpoint, "verbose")
    assert all(n in loud for n in noise), loud[-3000:]
    assert "NOTE: None" in loud  # --verbose: the libraries say it themselves
    quiet = _run(checkpoint, "quiet")
    assert not [n for n in noise if n in quiet], quiet[-3000:]
    assert "NOTE: Mamba2 layers run transformers' PyTorch reference (mamba_ssm is not installed" in quiet  # said once, by the driver
