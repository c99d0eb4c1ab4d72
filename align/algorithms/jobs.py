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


def in_process_refusal(loaded: LoadedRecipe, ray_address: str | None = None) -> str | None:
    """Why ``align rl --in-process`` cannot run this recipe, or None: one process holds one learner and one engine, on CPU."""
    from rewards.registry import reward_actor_cpus

    r = loaded.recipe
    if loaded.recipe.job != "rl":
        return f"--in-process runs RL jobs only; this recipe is a {r.job} job"
    c = r.cluster
    why = [
        (c.num_learners != 1, f"cluster.num_learners is {c.num_learners}, not 1"),
        (c.num_rollout_engines != 1, f"cluster.num_rollout_engines is {c.num_rollout_engines}, not 1"),
        (c.gpus_needed(with_rollout=True) > 0, "the recipe asks for GPUs"),
        (bool(ray_address or c.ray_address), "a Ray address is given"),
        (reward_actor_cpus(r.rewards) > 0, "a reward function starts Ray actors of its own"),
    ]
    bad = [w for cond, w in why if cond]
    return f"--in-process runs one learner and one rollout engine on CPU, without Ray: {'; '.join(bad)}" if bad else None


def run_rl_in_process(loaded: LoadedRecipe, resume: bool) -> int:
    """An RL job in this one process, without Ray: the learner and the vLLM engine are plain objects here.

    On a small CPU machine it starts sooner than the Ray layout (:func:`run_rl`): no Ray processes,
    and torch and transformers are imported once instead of in the driver, the learner and the
    engine (GRPO of ``bench/bench_vs_trl.py``, 2 cores, 3 runs: 9.1 s to the end of step 1, minus a
    step, against 13.5 s with Ray and TRL's 11.1 s; steps 1.55 s against 2.03 s). The steps run
    one after another in it, as they do with Ray in a synchronous job, and share this process's
    GIL with the driver. Check the recipe first with :func:`in_process_refusal`.
    """
    from align.learner import ds_build

    with imports_without_gc():
        from align.algorithms.rl import driver
    # The learner's DeepSpeed CPU op: built here, saying so, when missing (the Ray path does this
    # before it spawns the learners), and a stale build lock refused.
    ds_build.prepare_cpu_learners(lambda msg: print(msg, flush=True))
    return driver.run(loaded, resume=resume, in_process=True)


STAGE_JOBS: dict[str, JobFn] = {"sft": run_sft, "dpo": run_dpo, "rm": run_rm, "rl": run_rl}
