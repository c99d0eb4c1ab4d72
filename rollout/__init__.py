"""Rollout: vLLM engines serving the policy, and episodes that run environments against it.

- :mod:`rollout.types`: ``GenRequest``, ``GenOutput``, ``Trajectory``, ``GenerateFn``.
- :mod:`rollout.engine`: ``VLLMEngine``, one in-process vLLM engine (a Ray actor in ``align/cluster.py``).
- :mod:`rollout.engine_loop`: ``StepLoop``, the thread that steps it: continuous batching, in-flight weight updates.
- :mod:`rollout.batcher`: ``Batcher``, concurrent episodes' requests joined into engine calls.
- :mod:`rollout.chat`: prompts and observations as token ids, thinking counts, ``chat_template_kwargs``.
- :mod:`rollout.episode`: ``run_episode`` (multi-turn, reasoning budgets).
- :mod:`rollout.collect`: ``collect``, G concurrent episodes per task, per request or through one Batcher.

Importing this package does not import vLLM; ``VLLMEngine`` does when it is built.
"""

from rollout.collect import collect
from rollout.engine import VLLMEngine
from rollout.batcher import Batcher, engine_generate_fn
from rollout.episode import derive_seed, run_episode
from rollout.types import GenerateFn, GenOutput, GenRequest, RequestFn, Trajectory

__all__ = [
    "Batcher",
    "GenOutput",
    "GenRequest",
    "RequestFn",
    "GenerateFn",
    "Trajectory",
    "VLLMEngine",
    "collect",
    "derive_seed",
    "engine_generate_fn",
    "run_episode",
]
