"""A trained reward model as an RL reward: ``reward_model`` scores whole conversations.

``RewardModelReward`` is a :class:`~rewards.base.RewardFn` like any other; a recipe names it::

    rewards:
      - name: reward_model
        weight: 1.0
        params: {path: runs/tiny-rm/final}          # a folder written by `align rm`

Scoring runs in :class:`~align.cluster.RewardModelGroup` actors (workers of class
:class:`~align.learner.reward_model.RewardModelScorer`) (``num_actors`` of them,
each holding one copy of the model) so a large reward model sits on its own GPUs beside the
learners and rollout engines; ``num_actors: 0`` scores in the calling process (tests, small
models on CPU). Each trajectory's conversation is rendered with the reward model's own chat
template in the trajectory's reasoning mode (``/think``, ``/no_think``, budget), as the policy
saw it, and scored at its last token. A multi-attribute model's outputs are combined with the
weights saved with it (``rm.attributes`` of its recipe) unless ``attribute_weights`` overrides them.

Limits: a conversation longer than ``max_seq_len`` tokens is cut from the *left* (the score
reads the last token, so the response is kept and the oldest context goes); the reward model
must share nothing with the policy but the chat format; it is loaded once and never updated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardInput
from rollout.chat import chat_template_kwargs

class RewardModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # a reward-model folder written by `align rm` (its final/ folder)
    # Weights of a multi-attribute model's outputs; null: those saved with the model.
    attribute_weights: dict[str, float] | None = None
    # Scorer actors, each a placement-group bundle of cpus/gpus_per_actor beside the learners and
    # rollout engines. 0: score in the calling process (a machine with no free slot, e.g. 2 CPU cores).
    num_actors: int = Field(1, ge=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    batch_size_per_actor: int = Field(32, ge=1)
    max_seq_len: int = Field(1024, ge=8)
    # Fail, naming the scorer actor, if loading the model takes longer than this.
    setup_timeout_s: float = Field(900.0, gt=0)


class RewardModelReward:
    """The score of a trained reward model (``align rm``), one float per trajectory, never ``None``.

    The folder is checked at construction, not when a recipe is validated: a pipeline validates
    its RL stage before the RM stage has written the folder. Actors start on the first ``score``.
    """

    name: ClassVar[str] = "reward_model"
    description: ClassVar[str] = "A trained reward model (align rm) scores the whole conversation; multi-attribute outputs are weighted."
    Params: ClassVar[type[BaseModel]] = RewardModelParams

    def __init__(self, params: RewardModelParams) -> None:
        from align.learner.reward_model import HEAD_JSON
        from align.plugins import PluginParamsError

        self.params = params
        info = Path(params.path) / HEAD_JSON
        if not info.is_file():
            raise PluginParamsError(
                f"reward_model: no reward model at '{params.path}' (expected a folder with {HEAD_JSON}); "
                "train one first, e.g. `align rm --recipe tiny-rm`, and name its final/ folder"
            )
        names = json.loads(info.read_text())["attribute_names"]
        unknown = sorted(set(params.attribute_weights or {}) - set(names))
        if unknown:
            raise PluginParamsError(f"reward_model: attribute_weights names {unknown}, but the reward model at {params.path} has {names}")
        self._group: Any = None

    def _scorers(self) -> Any:
        if self._group is None:
            from align.cluster import RewardModelGroup

            p = self.params
            self._group = RewardModelGroup(
                p.path, num_actors=max(1, p.num_actors), cpus_per_actor=p.cpus_per_actor, gpus_per_actor=p.gpus_per_actor,
                batch_size_per_actor=p.batch_size_per_actor, max_seq_len=p.max_seq_len, in_process=p.num_actors == 0,
                setup_timeout_s=p.setup_timeout_s,
            )  # fmt: skip
        return self._group

    def score(self, batch: list[RewardInput]) -> list[float | None]:
        if not batch:
            return []
        scores = self._scorers().score([x.messages for x in batch], [chat_template_kwargs(x.mode) for x in batch], self.params.attribute_weights)
        return list(scores)

    def close(self) -> None:
        """Stop the scorer actors (they also end with the Ray session)."""
        if self._group is not None:
            self._group.shutdown()
            self._group = None
