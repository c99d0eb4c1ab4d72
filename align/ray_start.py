"""Starting Ray: embedded or joined, sized for a job, and begun early so that it overlaps imports.

``ray.init`` takes 2-3 s on a small machine (it starts the GCS and the raylet and waits for
them); the driver meanwhile spends 3-4 s importing torch, transformers and align's modules and
loading the data. :func:`begin` starts Ray on a background thread as soon as a job starts,
before its driver is imported (``align.algorithms.jobs``), and :func:`start_ray` (what every
driver calls) waits for that start instead of beginning its own. An RL job holds back its heavy
imports until Ray is up (:func:`wait_started`): its engines, spawned then, are the longest part
of its start-up. This module imports neither
torch nor transformers, so that a job can call it before those imports.

A recipe that asks for GPUs of the embedded cluster starts Ray only in :func:`start_ray`, after
the driver has checked that the machine has them. An error that stops the job while Ray is still
starting (a missing data file, a bad checkpoint) waits for the start to end
(:func:`finish_early_start`, at most the 2-3 s it takes), so that Ray's exit hook stops what it
started and no Ray process outlives the job. Every wait for a start is bounded by
``cluster.ray_start_timeout_s`` (:func:`wait_started`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from align.errors import AlignError
from align.learner import ds_build
from align.quiet import QUIET_ENV, VERBOSE_ENV, verbose

# Before Ray is imported anywhere: listen on loopback only, and write no auth-token file.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Environment the actors need to find the same caches as the driver.
_PROPAGATED_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HOME", "PIP_CACHE_DIR", "PYTHONPATH", VERBOSE_ENV, *QUIET_ENV)

REPORT_EVERY_S = 30.0  # while waiting for Ray, say so this often


@dataclass
class _Start:
    """A ``ray.init`` running on its own thread (:func:`_start_thread`)."""

    what: str  # for the messages: "an embedded Ray" or "joining Ray at ADDRESS"
    timeout_s: float  # the recipe's cluster.ray_start_timeout_s
    deadline: float  # time.monotonic() past which waiting for it raises RayStartTimeout
    done: threading.Event = field(default_factory=threading.Event)  # set when ray.init returned, well or not
    error: BaseException | None = None  # what ray.init raised


_early: _Start | None = None


class RayStartTimeout(AlignError, RuntimeError):
    """``ray.init`` did not return within ``cluster.ray_start_timeout_s``."""


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
        try:
            ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True, logging_level="INFO" if verbose() else "WARNING")
        except ConnectionError as e:  # Ray's own message names neither the setting nor what to do
            raise AlignError(
                f"could not join the Ray cluster at {address} (cluster.ray_address, --ray-address or RAY_ADDRESS): {e}. "
                "Check the address and that `ray status --address ADDRESS` answers from this machine, or leave it "
                "unset to start Ray on this machine."
            ) from e
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
    ray = sys.modules.get("ray")
    if _early is not None or (ray is not None and ray.is_initialized()):  # started already, or joined (tests, pipelines)
        return
    if recipe.cluster.gpus_needed(with_rollout=True) > 0 and not recipe.cluster.ray_address:
        return  # the driver first checks that this machine has the GPUs (rl's check_machine): no Ray for a job refused
    _start_thread(recipe.cluster, ray_cpus(recipe), then)


def _start_thread(cluster: Any, num_cpus: int, then: Callable[[], None] | None = None) -> None:
    """``init_ray`` on a thread of its own, which :func:`wait_started` waits for with a deadline."""
    global _early
    logging.getLogger("ray._private.worker").addFilter(_NotMainThread())
    address = cluster.ray_address or os.environ.get("RAY_ADDRESS")
    start = _Start(f"joining Ray at {address}" if address else "an embedded Ray", cluster.ray_start_timeout_s,
                   time.monotonic() + cluster.ray_start_timeout_s)  # fmt: skip

    def target() -> None:
        try:
            init_ray(cluster.ray_address, num_cpus=num_cpus)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by start_ray
            start.error = e
        start.done.set()
        if then is not None and start.error is None:
            then()
        # Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread*
        # that started them ends: this thread must live as long as the process (a daemon, it ends with it).
        threading.Event().wait()

    _early = start
    threading.Thread(target=target, name="align-ray-start", daemon=True).start()


def wait_started() -> None:
    """Block until a start that :func:`begin` made has ended, well or not (:func:`start_ray` raises its error).

    ``ray.init`` runs Python on its thread, and on a small machine it also waits for Ray's own
    Python processes to start: heavy imports on the main thread meanwhile slow it (the GIL, the
    CPU), and everything an RL job spawns waits for it (``align/algorithms/rl/prestart.py``).

    It says every 30 s what it waits for, and raises :class:`RayStartTimeout` (exit 2) once the
    start has taken longer than the recipe's ``cluster.ray_start_timeout_s``: nothing else bounds
    ``ray.init``, which waited on without end for an address where nothing listens (127.0.0.1:1).
    """
    start = _early
    if start is None:
        return
    began = time.monotonic()
    while not start.done.wait(max(0.0, min(REPORT_EVERY_S, start.deadline - time.monotonic()))):
        if time.monotonic() >= start.deadline:
            raise RayStartTimeout(
                f"Ray did not start ({start.what}): ray.init had not returned within "
                f"{start.timeout_s:.0f} s (cluster.ray_start_timeout_s). "
                "If a cluster address was given, check that `ray status --address ADDRESS` answers from this "
                "machine; otherwise the Ray logs (/tmp/ray/session_latest/logs on this machine) say where it "
                "waits. On a slow or loaded machine, raise cluster.ray_start_timeout_s."
            )
        logging.getLogger(__name__).warning("still waiting for Ray to start (%s): %.0f s", start.what, time.monotonic() - began)


def _join_early() -> None:
    wait_started()
    if _early is not None and _early.error is not None:
        raise _early.error


def start_ray(*recipes: Any) -> None:
    """Start (or join) Ray sized for the largest of ``recipes`` (a pipeline's stages): the first start fixes its size.

    When :func:`begin` already started it, wait for that start (and raise its error, if any).
    Otherwise start it the same way, on a thread, so that the same deadline bounds the wait.
    """
    global _early
    if _early is None:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            return
        _start_thread(recipes[0].cluster, max(ray_cpus(r) for r in recipes))
        try:
            _join_early()
        finally:
            _early = None  # started for this call alone: a later job starts (or joins) afresh
    else:
        _join_early()
    if threading.current_thread() is threading.main_thread():  # what ray.init does on the main thread
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


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
