"""Ray started on a background thread while the driver imports (align/ray_start.py)."""

import os
import time

import ray

from align import ray_start
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
        # The job's workers run at the driver's priority, not Ray's default nice 15.
        assert ray.get(ray.remote(lambda: os.nice(0)).remote(), timeout=60) == 0
        ray_start.finish_early_start()
        ray_start.begin(recipe)  # a later job in this process joins the running session
        assert ray_start._early is None
    finally:
        ray_start.finish_early_start()
        ray.shutdown()
