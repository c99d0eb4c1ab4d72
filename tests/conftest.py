"""Test-wide environment: the same caches and Ray settings the Makefile sets, for direct pytest runs."""

import os
from pathlib import Path

from align.learner.ds_build import use_align_cache

ROOT = Path(__file__).resolve().parents[1]
use_align_cache()  # TORCH_EXTENSIONS_DIR, unless set: where `make install` built DeepSpeed's CPU comm op
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
