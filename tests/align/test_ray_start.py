"""Ray started on a background thread while the driver imports (align/ray_start.py)."""

import os
import time

import ray

from align import ray_start
from align.algorithms.rl.prestart import Prestart
from align.config import load_recipe


def test_ray_started_early_outlives_the_thread_that_started_it() -> None:
    recipe = load_recipe("tiny-sft").recipe
    ray.shutdown()  # a session an earlier test left (sized for it) would be joined, not started here
    try:
        ray_start.begin(recipe)
        assert ray_start._early is not None  # starting on its thread
        ray_start.start_ray(recipe)  # waits for the background start
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] >= ray_start.ray_cpus(recipe)
        # Ray's GCS and raylet die with the thread that started them (PR_SET_PDEATHSIG): a starter
        # thread that ended after ray.init left a session whose GCS was gone seconds later.
        time.sleep(3)
        assert ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60) == 42
        # The job's workers run at the driver's priority, not Ray's default nice 15, and get the
        # variables the actors need from this process's environment (embedded: no runtime_env).
        assert ray.get(ray.remote(lambda: os.nice(0)).remote(), timeout=60) == 0
        assert ray.get(ray.remote(lambda: os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")).remote(), timeout=60) == "0"
        ray_start.finish_early_start()
        ray_start.begin(recipe)  # a later job in this process joins the running session
        assert ray_start._early is None
    finally:
        ray_start.finish_early_start()
        ray.shutdown()


def test_the_rl_prestart_imports_the_learners_part_once_ray_is_up() -> None:
    """Imported while ``ray.init`` runs, torch and transformers slowed Ray's start by about 2 s on
    2 cores, and the engines spawn only once Ray is up. The learner's modules are imported already
    here, so without the wait ``import_modules`` would return while Ray is still starting."""
    import align.learner.engine  # noqa: F401 - makes the import in import_modules instant

    recipe = load_recipe("nano3-multienv-tiny").recipe
    ray.shutdown()
    try:
        ray_start.begin(recipe)
        Prestart(recipe).import_modules()
        assert ray.is_initialized()
    finally:
        ray_start.finish_early_start()
        ray.shutdown()
