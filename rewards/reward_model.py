"""A trained reward model as an RL reward: ``reward_model`` scores whole conversations.

``RewardModelReward`` is a :class:`~rewards.base.RewardFn` like any other; a recipe names it::

    rewards:
      - name: reward_model
        weight: 1.0
        params: {path: runs/tiny-rm/final}          # a folder written by `align rm`

Scoring runs in :class:`~align.cluster.RewardModelGroup` actors (``num_actors`` of them,
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from align.reasoning import round_budget
from rewards.base import RewardInput

Message = dict[str, Any]


class RewardModelScorer:
    """One copy of a reward model that scores conversations in padded batches (a plain worker class).

    :class:`align.cluster.RewardModelGroup` makes it a Ray actor; tests use it directly.
    """

    def __init__(self, path: str, batch_size: int = 32, max_seq_len: int = 1024, cpus: float | None = None) -> None:
        from transformers import AutoTokenizer

        from align.learner.reward_model import RewardModel

        if cpus is not None and not torch.cuda.is_available():  # as a Ray actor: its CPU share
            torch.set_num_threads(max(1, int(cpus)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = RewardModel.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len

    def attributes(self) -> dict[str, float]:
        """The model's attribute names and saved weights, in output order."""
        return {n: self.model.attribute_weights.get(n, 0.0) for n in self.model.attribute_names}

    def _render(self, messages: list[Message], template_kwargs: Mapping[str, Any]) -> list[int]:
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        ids = list(self.tokenizer.apply_chat_template(clean, tokenize=True, return_dict=True, **template_kwargs)["input_ids"])
        return ids[-self.max_seq_len :]

    @torch.no_grad()
    def score(
        self,
        conversations: Sequence[list[Message]],
        template_kwargs: Sequence[Mapping[str, Any]] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[float]:
        """One combined reward per conversation, in order (batched longest-first to pad little)."""
        kwargs = template_kwargs if template_kwargs is not None else [{}] * len(conversations)
        ids = [self._render(c, k) for c, k in zip(conversations, kwargs, strict=True)]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [0.0] * len(ids)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            length = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            rewards = self.model(input_ids.to(self.device), mask.to(self.device))
            for i, v in zip(chunk, self.model.combine(rewards, weights).tolist(), strict=True):
                out[i] = float(v)
        return out


def template_kwargs(x: RewardInput) -> dict[str, Any]:
    """The chat-template variables that render ``x``'s conversation as the policy saw it."""
    kwargs: dict[str, Any] = {"enable_thinking": x.mode.thinking}
    if x.mode.thinking and x.mode.budget is not None:
        kwargs["thinking_budget"] = round_budget(x.mode.budget)
    return kwargs


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
        scores = self._scorers().score([x.messages for x in batch], [template_kwargs(x) for x in batch], self.params.attribute_weights)
        return list(scores)

    def close(self) -> None:
        """Stop the scorer actors (they also end with the Ray session)."""
        if self._group is not None:
            self._group.shutdown()
            self._group = None
