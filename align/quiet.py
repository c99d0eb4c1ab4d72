"""Quiet logs by default, everything with ``--verbose``.

A tiny CPU job used to print about 60 library lines around align's own few: vLLM's INFO and
WARNING lines, ``torch.distributed`` FutureWarnings from every learner, transformers' "install
mamba_ssm for the optimized kernel" advice once per process (it cannot be installed on CPU),
and weight-loading progress bars in every stage. :func:`configure` sets, before any of those
libraries is imported, the switches they read at import time; :data:`QUIET_ENV` travels to the
Ray actors with the rest of the job's environment (``align.ray_start._PROPAGATED_ENV``). Errors
and align's own lines are never hidden.

Limits: DeepSpeed's "Setting accelerator to CPU" line (one per process, at import) and Ray's
worker start-up lines are left as they are.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

VERBOSE_ENV = "ALIGN_VERBOSE"  # "1": every library logs as it would without align
QUIET_ENV: dict[str, str] = {
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's INFO/WARNING lines (engine config, KV cache, CPU tuning tips)
    "TRANSFORMERS_VERBOSITY": "error",  # kernel fallback advice, weight-tying notes
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "PYTHONWARNINGS": "ignore::FutureWarning",  # torch.distributed / vLLM deprecation notices in every process
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings (NUMA binding)
    "WANDB_SILENT": "true",  # W&B start/finish banners (align/loggers.py)
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose_logs: bool) -> None:
    """Set the switches for this process and the actors it starts; call before torch/vLLM are imported.

    A variable the user set is kept. Verbose mode sets nothing but :data:`VERBOSE_ENV`.
    """
    if verbose_logs:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.pop(VERBOSE_ENV, None)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)  # PYTHONWARNINGS is read at interpreter start only


def kernel_note() -> str | None:
    """What the hidden per-process "install mamba_ssm" advice said, as one line for the driver to print once."""
    if verbose() or importlib.util.find_spec("mamba_ssm") is not None:
        return None
    return ("Mamba2 layers run transformers' PyTorch reference (mamba_ssm is not installed; it is a GPU-only speed-up, "
            "see README 'GPUs'). --verbose shows every library's log lines.")  # fmt: skip
