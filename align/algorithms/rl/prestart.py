"""RL actors spawned as soon as Ray is up, while the driver still imports its modules.

A CPU job's start-up waits for its vLLM engine: the actor's process imports torch and vLLM and
builds the engine (8-16 s on 2 cores). The driver used to spawn it only after its own imports,
data and Ray start (4-8 s). Now :func:`plan` decides from the recipe whether the actors may start
early, and :meth:`Prestart.spawn` runs on Ray's start thread right after ``ray.init``
(``align.ray_start.begin``): the rollout engines first, then the learners (their class needs
transformers' model code, which the driver is importing meanwhile). The driver takes them with
:meth:`Prestart.take` where it would have spawned them, and sets them up as before; nothing
else changes.

What a user can get wrong cheaply is checked before anything starts: the recipe's keys (already
validated when it loaded), ``init_from`` (a folder with ``config.json``), each environment's
``data_path`` (it exists here), and, as before, the engines' ``max_model_len`` against the
checkpoint (an error there is raised by the driver, with no actor started). Checks that need the
heavy imports (the chat template's generation markers, each data row) run in the driver as
before, and stop the job with the same message; the actors have started by then, and Ray stops
them when the job exits.

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

from align.algorithms.rl.schedule import engine_max_num_seqs
from align.config import LoadedRecipe
from align.config.schema import RLRecipe
from align.ray_start import started_early

if TYPE_CHECKING:
    from align.cluster import LearnerGroup, RolloutGroup


class Prestart:
    """The actors one RL job spawns on Ray's start thread; :meth:`spawn` there, :meth:`take` in the driver."""

    def __init__(self, recipe: RLRecipe) -> None:
        self.recipe = recipe
        self.started_at: float | None = None  # when the engines' spawn began (time.time())
        self.rollout: RolloutGroup | None = None
        self.learners: LearnerGroup | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    def spawn(self) -> None:
        """On Ray's start thread: the engines, then the learners; an error is kept for :meth:`take`."""
        r = self.recipe
        self.started_at = time.time()
        try:
            # Imported here, on this thread: the driver's thread imports the rest meanwhile.
            from align.cluster import LearnerGroup, RolloutGroup
            from align.weights import inference_dtype

            self.rollout = RolloutGroup(r.cluster, engine_max_num_seqs(r), str(Path(str(r.init_from))), r.seed,
                                        dtype=inference_dtype(r.learner.precision), wait=False)  # fmt: skip
            self.learners = LearnerGroup(r.cluster)
        except BaseException as e:  # noqa: BLE001 - raised by take(), in the driver
            self.error = e
        finally:
            self._done.set()

    def take(self) -> tuple[RolloutGroup | None, LearnerGroup | None, float | None]:
        """The engines, the learners (None where not spawned) and when their spawn began; raises the spawn's error.

        Call it after ``start_ray`` (which raises if Ray failed to start, when no spawn ran). Ray
        not started by ``align.ray_start.begin`` (already up, or late for GPUs): no spawn, all None.
        """
        if not self._done.is_set() and not started_early():
            return None, None, None
        self._done.wait()
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
