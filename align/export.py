"""Hugging Face folders for checkpoints: written with every kept checkpoint, and ``align export``.

A checkpoint (``<run>/checkpoints/step_N/``) holds DeepSpeed's state for ``--resume`` and, with
``checkpoint.save_hf`` (the default), ``hf/``: the model as the learners hold it at that step
(LoRA merged, the tokenizer beside it, a reward model's head files), which transformers and
vLLM load as they load ``final/``. ``align export CKPT DIR`` copies that folder out, from a
checkpoint folder or a run folder (its latest checkpoint).

Cost: ``hf/`` is one more copy of the weights per kept checkpoint (``checkpoint.keep_last`` of
them), written by learner rank 0 after the ZeRO gather; set ``checkpoint.save_hf=false`` to save
the space on large models.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.runlog import Checkpoints

HF_SUBDIR = "hf"


class ExportError(AlignError):
    """Nothing to export at the path given; the message says what was found and what to do."""


def write_checkpoint(group: Any, folder: Path, tokenizer_path: Path, save_hf: bool, hf_files: Callable[[Path], None] | None = None) -> None:
    """Fill a checkpoint folder: the learners' DeepSpeed state and, if ``save_hf``, the ``hf/`` folder."""
    group.save_state(str(folder))
    if save_hf:
        group.save_hf(str(folder / HF_SUBDIR), tokenizer_path=str(tokenizer_path))
        if hf_files:
            hf_files(folder / HF_SUBDIR)


def find_hf(path: Path) -> Path:
    """The HF folder of a checkpoint folder, of a run folder's latest checkpoint, or ``path`` itself if it is one."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / HF_SUBDIR / "config.json").is_file():
        return path / HF_SUBDIR
    latest = Checkpoints(path, keep_last=1).latest()
    if latest is not None and (latest / HF_SUBDIR / "config.json").is_file():
        return latest / HF_SUBDIR
    if latest is not None or (path / "state.json").is_file():
        ckpt = latest or path
        raise ExportError(
            f"{ckpt} has no {HF_SUBDIR}/ folder: it was written with checkpoint.save_hf=false (or before align wrote one). "
            f"Resume from it with checkpoint.save_hf=true; the next checkpoint carries one"
        )
    raise ExportError(f"{path}: not a checkpoint (no state.json), a run folder with checkpoints/, or an HF folder (no config.json)")


def export(checkpoint: Path, out: Path) -> Path:
    """Copy the checkpoint's HF folder to ``out`` (which must not exist); returns ``out``."""
    src = find_hf(checkpoint)
    if out.exists():
        raise ExportError(f"{out} already exists; give a new folder to export into")
    shutil.copytree(src, out)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    out = export(Path(args.checkpoint), Path(args.out))
    print(f"exported {find_hf(Path(args.checkpoint))} -> {out} (load it with transformers' from_pretrained or vLLM)")
    return 0
