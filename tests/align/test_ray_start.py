"""Ray started on a background thread while the driver imports (align/ray_start.py)."""

import os
import threading
import time

import pytest
import ray

from align import ray_start
from align.algorithms.rl.prestart import Prestart
from align.config import load_recipe
from align.errors import AlignError


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


def test_a_ray_start_that_never_returns_ends_in_a_clear_error(monkeypatch, caplog) -> None:
    """``ray.init`` against an address that never answers cannot be staged cheaply on CPU, so a
    stand-in ``init_ray`` blocks instead; what is tested is the wait's deadline and its messages."""
    release = threading.Event()
    monkeypatch.setattr(ray_start, "init_ray", lambda address, num_cpus: release.wait(60))
    monkeypatch.setattr(ray_start, "REPORT_EVERY_S", 0.5)
    recipe = load_recipe("tiny-sft").recipe
    recipe = recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update={"ray_start_timeout_s": 1.6, "ray_address": "10.0.0.9:6379"})})
    ray.shutdown()
    try:
        ray_start.begin(recipe)
        t0 = time.monotonic()
        with pytest.raises(ray_start.RayStartTimeout, match=r"joining Ray at 10\.0\.0\.9:6379.*2 s \(cluster\.ray_start_timeout_s\)"):
            ray_start.wait_started()
        assert 1.2 < time.monotonic() - t0 < 5
        assert "still waiting for Ray to start (joining Ray at 10.0.0.9:6379)" in caplog.text
        t1 = time.monotonic()
        ray_start.finish_early_start()  # past the deadline: does not wait a second time
        assert time.monotonic() - t1 < 0.5
        # A start that no job began early (a pipeline's, a GPU job's) has the same deadline.
        with pytest.raises(ray_start.RayStartTimeout, match="joining Ray at 10.0.0.9:6379"):
            ray_start.start_ray(recipe)
        assert ray_start._early is None  # a later job starts afresh
    finally:
        release.set()
        ray_start.finish_early_start()


def test_an_address_ray_refuses_names_the_setting(monkeypatch) -> None:
    """Ray refuses an unreachable address only after its own retries (24 s here, and what answers
    there depends on the network), so ``ray.init`` raises its ConnectionError at once instead."""
    def refuse(**kwargs: object) -> None:
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(AlignError, match=r"could not join the Ray cluster at 10\.0\.0\.9:6379 \(cluster\.ray_address, --ray-address or RAY_ADDRESS\)"):
        ray_start.init_ray("10.0.0.9:6379")
