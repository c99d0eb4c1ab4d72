"""RL actors spawned as soon as Ray is up, while the driver still imports its modules.

A CPU job's start-up waits for its vLLM engine: the actor's process imports torch and vLLM and
builds the engine (8-16 s on 2 cores). The driver used to spawn it only after its own imports,
data and Ray start (4-8 s). Now :func:`plan` decides from the recipe whether the actors may start
early, and the job (``align.algorithms.jobs.run_rl``) spawns them before it imports its driver:

- :meth:`Prestart.import_modules`, on the main thread, imports what the spawns use (the actor
  groups and the engine's class, which import no torch, then torch and the learner's model code)
  and, once the engines' part is imported, lets :meth:`Prestart.spawn_engines` go: that runs on
  Ray's start thread right after ``ray.init`` (``align.ray_start.begin``), so the engines start
  as soon as Ray is up (their part imports in 0.6-0.8 s at load 7, with torch it took
  3.4-5.0 s). The heavy part waits until Ray is up: imported while ``ray.init`` ran, it
  delayed Ray, and so the engines, by about 2 s on 2 cores (Ray up at 5.2 s, 3.2 s without it);
- :meth:`Prestart.spawn_learners`, on the main thread, waits for Ray and spawns the learners.

Only the main thread imports: the spawn on Ray's thread uses modules already imported and Ray's
own (which only that thread imports while Ray starts). An earlier version imported the actor
groups on Ray's thread while the main thread imported the driver: two threads importing torch,
transformers and DeepSpeed at once, which Python's per-module import locks do not make safe for
packages with circular imports, and one run in three of ``bench_vs_trl`` failed.

The driver takes the actors with :meth:`Prestart.take` where it would have spawned them, and sets
them up as before; nothing else changes. What a user can get wrong cheaply is checked before
anything starts: the recipe's keys (already validated when it loaded), ``init_from`` (a folder
with ``config.json``), each environment's ``data_path`` (it exists here), and, as before, the
engines' ``max_model_len`` against the checkpoint (an error there is raised by the driver, with
no actor started). Checks that need the heavy imports (the chat template's generation markers,
each data row) run in the driver as before, and stop the job with the same message; the actors
have started by then, and Ray stops them when the job exits.

Actors start where they always did for: recipes without ``init_from`` (the job first builds
``<run>/init``), a frozen reference (``grpo.kl_coef > 0``: its kind is checked by the driver),
engines that share a GPU with a learner (they size their cache after the learner's build), and
GPUs of the embedded cluster (the driver first checks that the machine has them; Ray then
starts late, ``align.ray_start``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from align import ray_start
from align.algorithms.rl.schedule import engine_max_num_seqs
from align.config import LoadedRecipe
from align.config.schema import RLRecipe

if TYPE_CHECKING:
    from align.cluster import LearnerGroup, RolloutGroup


class Prestart:
    """The actors one RL job spawns before its driver is imported (see the module's docstring)."""

    def __init__(self, recipe: RLRecipe) -> None:
        self.recipe = recipe
        self.started_at: float | None = None  # when the engines' spawn began (time.time())
        self.rollout: RolloutGroup | None = None
        self.learners: LearnerGroup | None = None
        self.error: BaseException | None = None
        self.dtype = ""  # the engines' vLLM dtype, set by import_modules
        self._engine_modules = threading.Event()  # set by import_modules: spawn_engines may run
        self._engines_done = threading.Event()

    def import_modules(self) -> None:
        """On the main thread: the modules both spawns use; the engines' spawn waits for the first."""
        try:
            import align.cluster
            import rollout.engine  # noqa: F401 - the engine actor's class
            from align.weights import inference_dtype

            # Neither module imports torch, nor does this for an explicit precision: the engines
            # then spawn the moment Ray is up, while torch loads here. "auto" asks torch for a GPU.
            self.dtype = inference_dtype(self.recipe.learner.precision)
        finally:
            self._engine_modules.set()  # on an error too: the spawn then meets it and keeps it for take()
        # Ray first: while ray.init runs, torch's and transformers' imports here took the CPU and
        # the GIL from it, and Ray was up at 5.2 s instead of 3.2 s; the engines, the longest part
        # of the start-up, spawn only then. The learners, spawned after this import, still get
        # their set-up done before the engines are built.
        ray_start.wait_started()
        import align.learner.engine  # noqa: F401 - the learner actor's class (transformers, DeepSpeed)

    def spawn_engines(self) -> None:
        """On Ray's start thread, once Ray is up: the engines; an error is kept for :meth:`take`."""
        self._engine_modules.wait()
        r = self.recipe
        self.started_at = time.time()
        try:
            from align.cluster import RolloutGroup

            self.rollout = RolloutGroup(r.cluster, engine_max_num_seqs(r), str(Path(str(r.init_from))), r.seed,
                                        dtype=self.dtype, wait=False)  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - raised by take(), in the driver
            self.error = e
        finally:
            self._engines_done.set()

    def spawn_learners(self) -> None:
        """On the main thread, after :meth:`import_modules`: wait for Ray, then spawn the learners.

        Nothing to do where Ray did not start early (already up, or late for GPUs); a Ray start
        error is left to the driver's ``start_ray``, another error is kept for :meth:`take`.
        """
        if not ray_start.started_early():
            return
        try:
            ray_start.start_ray(self.recipe)
        except BaseException:  # noqa: BLE001 - the driver's start_ray raises it again
            return
        try:
            from align.cluster import LearnerGroup

            self.learners = LearnerGroup(self.recipe.cluster)
        except BaseException as e:  # noqa: BLE001 - raised by take(), in the driver
            self.error = self.error or e

    def take(self) -> tuple[RolloutGroup | None, LearnerGroup | None, float | None]:
        """The engines, the learners (None where not spawned) and when the engines' spawn began; raises a spawn's error.

        Call it after ``start_ray`` (which raises if Ray failed to start, when no spawn ran). Ray
        not started by ``align.ray_start.begin`` (already up, or late for GPUs): no spawn, all None.
        """
        if not self._engines_done.is_set() and not ray_start.started_early():
            return None, None, None
        self._engines_done.wait()
        if self.error is not None:
            raise self.error
        return self.rollout, self.learners, self.started_at


def plan(loaded: LoadedRecipe) -> Prestart | None:
    """A :class:`Prestart` for an RL recipe whose actors may start before the driver's imports, else None."""
    r = loaded.recipe
    if not isinstance(r, RLRecipe) or r.init_from is None or not (Path(r.init_from) / "config.json").is_file():
        return None
    if r.grpo.kl_coef > 0 or 0 < r.cluster.gpus_per_rollout_engine < 1:
        return None
    if any(s.data_path is not None and not Path(s.data_path).exists() for s in r.envs):
        return None  # a missing file, or a hub dataset the driver fetches and checks first
    return Prestart(r)
