"""The jobs a recipe can run, by ``job:`` name: each a direct function that imports its driver
when called (so ``align --help`` and recipe errors stay fast), not a module path in a string.
Ray starts on a background thread before that import (``align.ray_start``): the 2-3 s of
``ray.init`` overlap the driver's imports and data loading, which run with the garbage
collector paused (``align.startup.imports_without_gc``). An RL job spawns its rollout engines on
that thread once Ray is up, and its learners before it imports its driver
(``align/algorithms/rl/prestart.py``).

The pipeline runs the stage jobs listed here; ``align <job>`` adds the pipeline itself.
"""

from __future__ import annotations

from collections.abc import Callable

from align import ray_start
from align.algorithms.rl.prestart import plan as plan_prestart
from align.config import LoadedRecipe
from align.startup import imports_without_gc

JobFn = Callable[[LoadedRecipe, bool], int]


def run_sft(loaded: LoadedRecipe, resume: bool) -> int:
    with ray_start.starting(loaded.recipe):
        with imports_without_gc():
            from align.algorithms import sft

        return sft.run(loaded, resume=resume)


def run_dpo(loaded: LoadedRecipe, resume: bool) -> int:
    with ray_start.starting(loaded.recipe):
        with imports_without_gc():
            from align.algorithms import dpo

        return dpo.run(loaded, resume=resume)


def run_rm(loaded: LoadedRecipe, resume: bool) -> int:
    with ray_start.starting(loaded.recipe):
        with imports_without_gc():
            from align.algorithms import rm

        return rm.run(loaded, resume=resume)


def run_rl(loaded: LoadedRecipe, resume: bool) -> int:
    prestart = plan_prestart(loaded)  # the actors spawn before the driver is imported
    with ray_start.starting(loaded.recipe, then=prestart.spawn_engines if prestart else None):
        with imports_without_gc():
            if prestart is not None:
                prestart.import_modules()  # lets the engines spawn on Ray's thread
                prestart.spawn_learners()
            from align.algorithms.rl import driver

        return driver.run(loaded, resume=resume, prestart=prestart)


STAGE_JOBS: dict[str, JobFn] = {"sft": run_sft, "dpo": run_dpo, "rm": run_rm, "rl": run_rl}
