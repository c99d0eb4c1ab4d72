"""Rollout: vLLM engines serving the policy, and episodes that run environments against it.

- :mod:`rollout.types`: ``GenRequest``, ``GenOutput``, ``Trajectory``, ``GenerateFn``.
- :mod:`rollout.engine`: ``VLLMEngine``, one in-process vLLM engine (a Ray actor in ``align/cluster.py``).
- :mod:`rollout.engine_loop`: ``StepLoop``, the thread that steps it: continuous batching, in-flight weight updates.
- :mod:`rollout.batcher`: ``Batcher``, concurrent episodes' requests joined into engine calls.
- :mod:`rollout.chat`: prompts and observations as token ids, thinking counts, ``chat_template_kwargs``.
- :mod:`rollout.episode`: ``run_episode`` (multi-turn, reasoning budgets).
- :mod:`rollout.collect`: ``collect``, G concurrent episodes per task, per request or through one Batcher.

Importing this package imports none of them (nor vLLM): each name below is imported from its
module when first used. A vLLM engine actor imports ``rollout.engine`` and must not pay for
the episode side (``rollout.collect`` pulls in align's recipe schema and loader): eager
imports here cost each engine start about 0.2-0.35 s of CPU, on the path to a job's first step.
``collect`` is not among them: ``rollout.collect`` is its module (the function is
``rollout.collect.collect``), which a lazy name could only shadow until that module is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.batcher import Batcher, engine_generate_fn
    from rollout.engine import VLLMEngine
    from rollout.episode import derive_seed, run_episode
    from rollout.types import GenerateFn, GenOutput, GenRequest, RequestFn, Trajectory

_WHERE = {
    "Batcher": "rollout.batcher",
    "engine_generate_fn": "rollout.batcher",
    "VLLMEngine": "rollout.engine",
    "derive_seed": "rollout.episode",
    "run_episode": "rollout.episode",
    "GenerateFn": "rollout.types",
    "GenOutput": "rollout.types",
    "GenRequest": "rollout.types",
    "RequestFn": "rollout.types",
    "Trajectory": "rollout.types",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """``rollout.X``: the name from its module, imported now (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
