"""Starting Ray: embedded or joined, sized for a job, and begun early so that it overlaps imports.

``ray.init`` takes 2-3 s on a small machine (it starts the GCS and the raylet and waits for
them); the driver meanwhile spends 3-4 s importing torch, transformers and align's modules and
loading the data. :func:`begin` starts Ray on a background thread as soon as a job starts,
before its driver is imported (``align.algorithms.jobs``), and :func:`start_ray` (what every
driver calls) waits for that start instead of beginning its own. An RL job holds back its heavy
imports until Ray is up (:func:`wait_started`): its engines, spawned then, are the longest part
of its start-up. This module imports neither
torch nor transformers, so that a job can call it before those imports.

A recipe that asks for GPUs of the embedded cluster starts Ray where it did before, after the
driver has checked that the machine has them. An error that stops the job while Ray is still
starting (a missing data file, a bad checkpoint) waits for the start to end
(:func:`finish_early_start`, at most the 2-3 s it takes), so that Ray's exit hook stops what it
started and no Ray process outlives the job.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from align.learner import ds_build
from align.quiet import QUIET_ENV, VERBOSE_ENV, verbose

# Before Ray is imported anywhere: listen on loopback only, and write no auth-token file.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Environment the actors need to find the same caches as the driver.
_PROPAGATED_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HOME", "PIP_CACHE_DIR", "PYTHONPATH", VERBOSE_ENV, *QUIET_ENV)

_early: tuple[threading.Thread, threading.Event] | None = None  # the starting thread, set when ray.init returned
_early_error: list[BaseException] = []


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start Ray embedded on this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    ds_build.use_align_cache()
    env_vars = {k: os.environ[k] for k in _PROPAGATED_ENV if k in os.environ}
    env_vars["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # Ray runs its workers at nice 15 (to keep its GCS and raylet responsive), so our actors, which
    # do all of a job's work, got a few percent of a core wherever anything else ran: the job's own
    # driver while it imports, another job. At nice 0 they share the CPU like any process (as a
    # single-process trainer does); on a 2-core machine this took seconds off every start-up.
    env_vars["RAY_worker_niceness"] = "0"
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True, logging_level="INFO" if verbose() else "WARNING")
    else:
        # Embedded, every Ray process starts from this one (the raylet, then the actors' workers),
        # so the variables go into this process's environment instead of a runtime_env. A job's
        # runtime_env, even of env_vars alone, makes the raylet ask its runtime-env agent before it
        # starts each worker: a first actor took 1.16 s instead of 0.77 s on 2 cores, and
        # `ray.init` itself took longer (measured in the RL job's start-up, 3.2 s to Ray up instead of
        # about 3.7 s with the imports held back, align/algorithms/rl/prestart.py).
        os.environ.update(env_vars)
        # "local": a new embedded instance even when a `ray start` cluster runs on this machine
        # (plain ray.init() would join it, and then refuses num_cpus). No prestarted workers: Ray
        # starts one per CPU for the first driver, competing for the CPU the actors start on; with
        # no runtime_env the actors do take them, but the RL start-up was no faster (13.3-13.4 s
        # with them vs 13.4-13.5 s without, 2 interleaved pairs at load 1.7-2.2).
        ray.init(
            address="local",
            num_cpus=max(num_cpus or 0, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=True,
            logging_level="INFO" if verbose() else "WARNING",
            _system_config={"prestart_worker_first_driver": False},
        )


def reference_cpus(kind: str, num_learners: int, cpus_per_learner: float) -> float:
    """CPUs a frozen reference of ``kind`` takes in the Ray session, beyond the policy's learners."""
    return num_learners * cpus_per_learner if kind == "separate_group" else 0.0


def ray_cpus(recipe: Any) -> int:
    """Logical CPUs of a job's actors: learners, a separate reference, rollout engines (RL) or one spare slot."""
    from rewards.registry import reward_actor_cpus

    c = recipe.cluster
    if recipe.job == "rl":
        ref = reference_cpus(recipe.grpo.reference, c.num_learners, c.cpus_per_learner) if recipe.grpo.kl_coef > 0 else 0.0
        return int(c.num_learners * c.cpus_per_learner + ref + reward_actor_cpus(recipe.rewards)) + c.num_rollout_engines
    ref = reference_cpus(recipe.dpo.reference, c.num_learners, c.cpus_per_learner) if recipe.job == "dpo" else 0.0
    return int(c.num_learners * c.cpus_per_learner + ref) + 1


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that a ``ray.init`` off the main thread sets no SIGTERM handler:
    :func:`start_ray` sets the same handler from the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def begin(recipe: Any, then: Callable[[], None] | None = None) -> None:
    """Start Ray for ``recipe`` on a background thread; :func:`start_ray` waits for it.

    ``then`` runs on that thread once Ray is up (it is skipped if Ray failed to start, or did
    not start here): the RL job spawns its actors there (``align/algorithms/rl/prestart.py``).
    It must catch its own errors.
    """
    global _early
    ray = sys.modules.get("ray")
    if _early is not None or (ray is not None and ray.is_initialized()):  # started already, or joined (tests, pipelines)
        return
    if recipe.cluster.gpus_needed(with_rollout=True) > 0 and not recipe.cluster.ray_address:
        return  # the driver first checks that this machine has the GPUs (rl's check_machine): no Ray for a job refused
    logging.getLogger("ray._private.worker").addFilter(_NotMainThread())

    done = threading.Event()

    def target() -> None:
        try:
            init_ray(recipe.cluster.ray_address, num_cpus=ray_cpus(recipe))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by start_ray
            _early_error.append(e)
        done.set()
        if then is not None and not _early_error:
            then()
        # Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread*
        # that started them ends: this thread must live as long as the process (a daemon, it ends with it).
        threading.Event().wait()

    _early = (threading.Thread(target=target, name="align-ray-start", daemon=True), done)
    _early[0].start()


def wait_started() -> None:
    """Block until a start that :func:`begin` made has ended, well or not (:func:`start_ray` raises its error).

    ``ray.init`` runs Python on its thread, and on a small machine it also waits for Ray's own
    Python processes to start: heavy imports on the main thread meanwhile slow it (the GIL, the
    CPU), and everything an RL job spawns waits for it (``align/algorithms/rl/prestart.py``).
    """
    if _early is not None:
        _early[1].wait()


def _join_early() -> None:
    wait_started()
    if _early is not None and _early_error:
        raise _early_error[0]


def start_ray(*recipes: Any) -> None:
    """Start (or join) Ray sized for the largest of ``recipes`` (a pipeline's stages): the first start fixes its size.

    When :func:`begin` already started it, wait for that start (and raise its error, if any).
    """
    if _early is not None:
        _join_early()
        if threading.current_thread() is threading.main_thread():  # what ray.init does on the main thread
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        return
    init_ray(recipes[0].cluster.ray_address, num_cpus=max(ray_cpus(r) for r in recipes))


def finish_early_start() -> None:
    """At the end of a job: let a start that :func:`begin` made finish (Ray's own exit hook then stops it).

    A job that failed before it needed Ray would otherwise exit in the middle of ``ray.init``
    and could leave its GCS or raylet behind. A later job in this process begins afresh.
    """
    global _early
    try:
        _join_early()
    except BaseException:  # noqa: BLE001 - the job's own error is the one to report
        pass
    _early = None
    _early_error.clear()


def started_early() -> bool:
    """Whether :func:`begin` started Ray on its thread (so its ``then`` runs once Ray is up)."""
    return _early is not None


@contextmanager
def starting(recipe: Any, then: Callable[[], None] | None = None) -> Iterator[None]:
    """Ray starts (:func:`begin`, then ``then``) while the block imports a driver and runs its job."""
    begin(recipe, then)
    try:
        yield
    finally:
        finish_early_start()
