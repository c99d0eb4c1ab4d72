"""``genrm``: a trained generative reward model judges each group by circular comparison.

A recipe names it like any reward::

    rewards:
      - name: genrm
        params: {path: runs/tiny-genrm/final, order: both}

The judge (an HF causal LM written by ``align rm`` with ``rm.objective: genrm``) is served by
its own vLLM engines: a :class:`~align.cluster.RolloutGroup` of ``num_engines`` actors, each in its
own placement-group bundle (1 CPU, ``gpus_per_engine`` GPUs) beside the policy's learners and
engines, so the two never share a slot (the job's Ray session is sized for them,
:func:`align.ray_start.ray_cpus`). ``num_engines: 0`` runs one engine in the calling
process (tests; a machine with no free slot). The judge is frozen: nothing is synced to it.

Per group of G responses to one prompt: G comparisons (``order: random``) or 2G (``both``), one
batch through the judge engines; verdicts -> rewards by :func:`rewards.genrm.compare.aggregate`
(a malformed verdict is logged and its comparison dropped; a response left without any verdict
gets the group mean, a zero advantage), plus optional length control. The reward is the judged
quality on the 1-5 scale; GRPO's group baseline removes its offset.

Where a task has a verifier (``RewardInput.correct`` is not ``None``), ``verifier_gate`` (on by
default) gives a group's wrong answers one floor below all its right answers and lets the
judge order the right ones (:mod:`rewards.genrm.gate`). ``envs`` limits the judge to some environments'
prompts; the others get ``None`` (not applicable), so their own environment reward stands alone,
as in Nemotron 3 Nano's multi-environment RLHF.

``step_metrics()`` returns, and resets, what judging cost since the last call: judge calls,
judge tokens (prompt + generated), parse failures, failed samples, and the gate's
(right, wrong) pairs and how many of them the judge had scored wrong >= right.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from align.plugins import RECIPE_ENVS, PluginParamsError
from rewards.base import RewardInput
from rewards.genrm.compare import LengthControl, aggregate, comparisons
from rewards.genrm.gate import gate_stats, verifier_gate
from rewards.genrm.judge import Item, judge, read_show_thinking

log = logging.getLogger(__name__)


class GenRMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # the judge: an HF causal-LM folder (align rm, rm.objective=genrm: its final/)
    order: Literal["both", "random"] = "both"  # both orders per pair (2G calls) or one random order (G)
    max_new_tokens: int = Field(64, ge=1)  # the judge's reasoning + verdict
    temperature: float = Field(0.0, ge=0)  # 0: greedy verdicts
    # Does the judge read the responses' thinking? null: as it was trained (its folder's genrm.json).
    show_thinking: bool | None = None
    length_control: LengthControl = LengthControl()
    # Where the task has a verifier, wrong answers get a floor below every right one; the judge orders the right ones.
    verifier_gate: bool = True
    envs: list[str] | None = None  # environments whose prompts the judge scores; null: all
    num_engines: int = Field(1, ge=0)  # judge engine actors; 0: one engine in the calling process
    gpus_per_engine: float = Field(0.0, ge=0)
    max_model_len: int = Field(1024, ge=64)
    kv_cache_memory_mb: int | None = Field(256, ge=16)  # on CPU set it (vLLM's estimate is unreliable there)
    gpu_memory_utilization: float = Field(0.1, gt=0, le=1)
    seed: int = 0

    @field_validator("envs")
    @classmethod
    def _recipe_has_envs(cls, envs: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """At recipe load (the context names the recipe's environments), ``envs`` must be among them."""
        names = (info.context or {}).get(RECIPE_ENVS)
        unknown = [e for e in envs or () if names is not None and e not in names]
        if unknown:
            raise ValueError(f"names {unknown}, which are not among the recipe's envs {names}: name some of those, or null for all")
        return envs


class GenRMReward:
    """Circular-comparison rewards from a trained GenRM (see the module docstring)."""

    name: ClassVar[str] = "genrm"
    description: ClassVar[str] = "A trained generative reward model judges each group by circular comparison (i vs i+1 mod G)."
    Params: ClassVar[type[BaseModel]] = GenRMParams

    def __init__(self, params: GenRMParams) -> None:
        if not (Path(params.path) / "config.json").is_file():
            raise PluginParamsError(
                f"genrm: no judge model at '{params.path}' (expected an HF folder with config.json); "
                "train one first, e.g. `align rm --recipe tiny-genrm`, and name its final/ folder"
            )
        self.params = params
        self._engines: Any = None
        self._tokenizer: Any = None
        self._rng = random.Random(f"genrm:{params.seed}")
        self._stats: dict[str, float] = defaultdict(float)

    @staticmethod
    def ray_cpus(params: GenRMParams) -> float:
        """Logical CPUs its engine actors take in the job's Ray session."""
        return float(params.num_engines)

    def engines(self) -> Any:
        """The judge's RolloutGroup, started on first use."""
        if self._engines is None:
            from align.cluster import RolloutGroup
            from align.config.schema import ClusterConfig, RolloutConfig
            from align.models import inference_dtype, load_tokenizer

            p = self.params
            cluster = ClusterConfig(num_rollout_engines=max(1, p.num_engines), gpus_per_rollout_engine=p.gpus_per_engine)
            rollout = RolloutConfig(max_model_len=p.max_model_len, kv_cache_memory_mb=p.kv_cache_memory_mb, gpu_memory_utilization=p.gpu_memory_utilization)
            self._tokenizer = load_tokenizer(p.path)
            self._engines = RolloutGroup(cluster, rollout, p.path, p.seed, in_process=p.num_engines == 0, dtype=inference_dtype())
        return self._engines

    def judge_items(self, items: list[Item]) -> list[Any]:
        """Judge calls for ``items`` through the judge engines (one batch)."""
        engines = self.engines()
        seed = self._rng.randrange(2**31)
        p = self.params
        show = read_show_thinking(p.path) if p.show_thinking is None else p.show_thinking
        calls = asyncio.run(judge(items, self._tokenizer, engines.generate, p.max_new_tokens, p.temperature, seed, show))
        self._stats["judge_calls"] += len(calls)
        self._stats["judge_tokens"] += sum(c.prompt_tokens + c.completion_tokens for c in calls)
        self._stats["judge_parse_failures"] += sum(c.verdict is None for c in calls)
        for c in calls:
            if c.verdict is None:
                log.warning("genrm: malformed verdict (comparison dropped): %r", c.text[-200:])
        return calls

    def score(self, batch: list[RewardInput]) -> list[float | None]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, x in enumerate(batch):
            if self.params.envs is None or x.task.env in self.params.envs:
                groups[x.task.id].append(i)
        plans = []
        items: list[Item] = []
        for idx in groups.values():
            if len(idx) < 2:  # nothing to compare with
                plans.append((idx, [], len(items)))
                continue
            calls = comparisons(len(idx), self.params.order, self._rng)
            prompt = [m for m in batch[idx[0]].task.prompt]
            plans.append((idx, calls, len(items)))
            items += [Item(prompt, batch[idx[c.a]].completion, batch[idx[c.b]].completion) for c in calls]
        results = self.judge_items(items) if items else []
        out: list[float | None] = [None] * len(batch)
        for idx, calls, start in plans:
            if not calls:
                continue
            verdicts = [r.verdict for r in results[start : start + len(calls)]]
            lengths = [batch[i].completion_tokens for i in idx]
            s = aggregate(len(idx), calls, verdicts, lengths, self.params.length_control)
            self._stats["judge_failed_samples"] += sum(s.failed)
            rewards = s.rewards
            if self.params.verifier_gate:
                correct = [batch[i].correct for i in idx]
                pairs, overridden = gate_stats(rewards, correct)
                self._stats["judge_gate_pairs"] += pairs
                self._stats["judge_gate_overrides"] += overridden
                rewards = verifier_gate(rewards, correct)
            for i, reward in zip(idx, rewards, strict=True):
                out[i] = reward
        return out

    def step_metrics(self) -> dict[str, float]:
        """Judge cost since the last call (then reset)."""
        out = dict(self._stats)
        self._stats.clear()
        return out

    def close(self) -> None:
        if self._engines is not None:
            self._engines.shutdown()
            self._engines = None
