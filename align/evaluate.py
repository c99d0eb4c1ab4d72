"""Evaluation: held-out tasks played through vLLM and scored by their own environments.

Measures what reasoning control promises: accuracy per environment with ``/think`` and
``/no_think``; accuracy and thinking length at each budget of the ladder; budget adherence
(thinking fits the budget without a forced close); toggle compliance (``/no_think`` answers
with no thinking). :func:`summarize` is a pure function of trajectories, so the metrics are
tested on constructed trajectories with known answers.

Decoding is greedy (temperature 0), one sample per task and mode: the numbers are the model's
deterministic behaviour, not a sampling estimate. One mode may sample instead
(:func:`standard_modes`' ``sampled_temperature``): ``think_sampled`` plays /think once per task
at the RL stage's temperature, the quantity GRPO's reward optimizes. A policy can gain there
(it samples its right answers more often) while its greedy answer stays the same. With
``sampled_k`` > 1 it plays k samples per task, and its cells add pass@k (any of the k right) and
the share of tasks with mixed outcomes: the groups GRPO can learn from at group size k, since an
all-right or all-wrong group has no advantage.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from align.config.schema import PipelineEval, SamplingConfig
from align.reasoning import ReasoningMode
from envs.base import Environment, Task, task_source
from rollout.types import GenerateFn, Trajectory

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EvalMode:
    label: str  # "think", "no_think", "budget_32", "think_sampled"
    mode: ReasoningMode
    temperature: float = 0.0  # 0: greedy
    samples: int = 1  # per task


def standard_modes(budgets: Sequence[int] = (), sampled_temperature: float | None = None, sampled_k: int = 1) -> list[EvalMode]:
    """/think, /no_think, each budget (greedy), and /think sampled ``sampled_k`` times at ``sampled_temperature`` if given."""
    modes = [EvalMode("think", ReasoningMode(True)), EvalMode("no_think", ReasoningMode(False))]
    modes += [EvalMode(f"budget_{b}", ReasoningMode(True, b)) for b in budgets]
    if sampled_temperature is not None:
        modes.append(EvalMode("think_sampled", ReasoningMode(True), temperature=sampled_temperature, samples=sampled_k))
    return modes


def pipeline_plan(e: PipelineEval) -> tuple[list[EvalMode], SamplingConfig]:
    """The modes and sampling a pipeline recipe's ``eval`` section asks for: its report
    (align/report.py) and ``align eval`` on it play the same."""
    sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, max_answer_tokens=e.max_answer_tokens)
    return standard_modes(e.budgets, e.sampled_temperature, e.sampled_k), sampling


class EvalCell(TypedDict):
    """The metrics of one (environment, mode label) cell; see :func:`summarize`."""

    n: int
    accuracy: float | None
    reward: float | None
    thinking_tokens: float | None
    completion_tokens: float | None
    forced_close_rate: float | None
    errors: int
    toggle_compliance: NotRequired[float | None]  # no_think cells
    budget_adherence: NotRequired[float | None]  # budget cells
    samples_per_task: NotRequired[int]  # cells with more than one sample per task: think_sampled with sampled_k > 1
    pass_at_k: NotRequired[float]  # share of tasks with any sample right
    mixed_share: NotRequired[float]  # share of tasks with some samples right and some wrong


EvalSummary = dict[str, dict[str, EvalCell]]  # environment (and "all") -> mode label -> cell


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(results: Sequence[tuple[str, Trajectory]]) -> EvalSummary:
    """Metrics per environment and mode label from ``(mode label, trajectory)`` pairs.

    Per cell: ``n``, ``accuracy`` (share with ``correct`` true; a crashed sample counts as
    wrong), ``reward`` (environment reward), ``thinking_tokens`` (mean), ``forced_close_rate``,
    ``errors``; for ``no_think`` cells ``toggle_compliance`` (share with zero thinking tokens);
    for budget cells ``budget_adherence`` (thinking <= budget and no forced close); for cells with
    k > 1 samples of each task ``samples_per_task``, ``pass_at_k`` and ``mixed_share`` (accuracy is
    then the mean over all samples). An ``all`` environment aggregates every environment.
    """
    cells: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
    for label, t in results:
        cells[(t.env, label)].append(t)
        cells[("all", label)].append(t)
    out: EvalSummary = defaultdict(dict)
    for (env, label), ts in sorted(cells.items()):
        cell: EvalCell = {
            "n": len(ts),
            "accuracy": _mean([1.0 if t.correct else 0.0 for t in ts]),
            "reward": _mean([float(t.reward) for t in ts]),
            "thinking_tokens": _mean([float(t.thinking_tokens) for t in ts]),
            "completion_tokens": _mean([float(t.num_policy_tokens) for t in ts]),
            "forced_close_rate": _mean([1.0 if t.forced_close else 0.0 for t in ts]),
            "errors": sum(1 for t in ts if t.info.get("error")),
        }
        if not ts[0].mode.thinking:
            cell["toggle_compliance"] = _mean([1.0 if t.thinking_tokens == 0 else 0.0 for t in ts])
        if ts[0].mode.thinking and ts[0].budget is not None:
            cell["budget_adherence"] = _mean([1.0 if (t.thinking_tokens <= t.budget and not t.forced_close) else 0.0 for t in ts])
        by_task: dict[tuple[str, str], list[bool]] = defaultdict(list)
        for t in ts:
            by_task[(t.env, t.task.id)].append(bool(t.correct))
        ks = {len(v) for v in by_task.values()}
        if len(ks) == 1 and ks != {1}:  # k samples of every task (a data set's repeated ids give uneven counts)
            cell["samples_per_task"] = ks.pop()
            cell["pass_at_k"] = sum(any(v) for v in by_task.values()) / len(by_task)
            cell["mixed_share"] = sum(any(v) and not all(v) for v in by_task.values()) / len(by_task)
        out[env][label] = cell
    return dict(out)


async def play(
    envs: dict[str, Environment],
    tasks: Sequence[Task],
    modes: Sequence[EvalMode],
    tokenizer: PreTrainedTokenizerBase,
    generate: GenerateFn,
    sampling: SamplingConfig,
    max_turns: int,
    seed: int,
    budget_grace_fraction: float = 0.0,
) -> list[tuple[str, Trajectory]]:
    """Every task in every mode (at the mode's temperature), all episodes concurrent through one batcher.

    ``budget_grace_fraction``: the grace window after a thinking budget (:mod:`rollout.episode`);
    evaluate with the one the policy was trained with.
    """
    from rollout.collect import collect
    from rollout.batcher import Batcher

    batcher = Batcher(generate)

    def one(temperature: float, samples: int, ms: list[EvalMode]) -> Any:
        pairs = [(task, m.mode) for m in ms for task in tasks]
        return collect(envs, pairs, samples, tokenizer=tokenizer, generate=batcher, sampling=sampling.model_copy(update={"temperature": temperature}),
                       max_turns=max_turns, seed=seed, budget_grace_fraction=budget_grace_fraction)  # fmt: skip

    by_play: dict[tuple[float, int], list[EvalMode]] = defaultdict(list)
    for m in modes:
        by_play[(m.temperature, m.samples)].append(m)
    played = await asyncio.gather(*(one(t, k, ms) for (t, k), ms in by_play.items()))
    out = []
    for ms, groups in zip(by_play.values(), played, strict=True):
        labels = [m.label for m in ms for _ in tasks]
        out += [(label, t) for label, g in zip(labels, groups, strict=True) for t in g]
    return out


def make_envs(names: Sequence[str], params: dict[str, dict[str, Any]] | None = None) -> dict[str, Environment]:
    from envs.registry import make_env

    return {n: make_env(n, (params or {}).get(n)) for n in names}


def tasks_for_rows(rows: Sequence[dict[str, Any]], envs: dict[str, Environment], generated: Any) -> list[Task]:
    """The generated tasks behind data rows (rows carry ``env`` and ``id``): regenerate and match ids."""
    from align.data.generated import env_seed, generated_envs, split_counts

    wanted: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        wanted[row["env"]].add(str(row["id"]))
    train_counts = split_counts(generated.envs, generated.num_train)
    eval_counts = split_counts(generated.envs, generated.num_eval)
    tasks = []
    for name, ids in wanted.items():
        produced = generated_envs(generated, [name])[name].generate(train_counts[name] + eval_counts[name], env_seed(generated.seed, name))
        tasks.extend(t for t in produced if t.id in ids)
    return tasks


def evaluate_checkpoint(
    model_path: str | Path,
    envs: dict[str, Environment],
    tasks: Sequence[Task],
    modes: Sequence[EvalMode],
    sampling: SamplingConfig,
    max_turns: int,
    seed: int = 0,
    samples_path: Path | None = None,
    budget_grace_fraction: float = 0.0,
) -> EvalSummary:
    """Load ``model_path`` into an in-process vLLM engine, play, summarize; optionally write samples."""
    from align.models import inference_dtype, load_tokenizer
    from rollout.engine import VLLMEngine
    from rollout.batcher import engine_generate_fn

    tokenizer = load_tokenizer(model_path)
    engine = VLLMEngine(str(model_path), seed=seed, max_model_len=1024, kv_cache_memory_bytes=256 * 2**20, dtype=inference_dtype())
    try:
        results = asyncio.run(play(envs, tasks, modes, tokenizer, engine_generate_fn(engine), sampling, max_turns, seed, budget_grace_fraction))
    finally:
        del engine
    if samples_path is not None:
        with open(samples_path, "w") as f:
            for label, t in results:
                f.write(json.dumps({"mode": label, "env": t.env, "task": t.task.id, "correct": t.correct, "reward": t.reward,
                                    "thinking_tokens": t.thinking_tokens, "forced_close": t.forced_close,
                                    "completion": t.completion, "error": t.info.get("error")}) + "\n")  # fmt: skip
    return summarize(results)


def sampled_eval(model_path: Path, rows: Sequence[dict[str, Any]], recipe: Any, limit_per_env: int, run_dir: Path) -> EvalSummary:
    """SFT's closing check: held-out generated tasks in /think and /no_think, greedy."""
    names = sorted({row["env"] for row in rows})
    envs = make_envs(names)
    per_env: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if len(per_env[row["env"]]) < limit_per_env:
            per_env[row["env"]].append(row)
    tasks = tasks_for_rows([r for rs in per_env.values() for r in rs], envs, recipe.data.generated)
    sampling = SamplingConfig(max_new_tokens=recipe.sft.max_new_tokens, max_answer_tokens=32)
    summary = evaluate_checkpoint(model_path, envs, tasks, standard_modes(), sampling, max_turns=3, seed=recipe.seed,
                                  samples_path=run_dir / "eval_samples.jsonl")  # fmt: skip
    print_table(summary, f"held-out samples ({len(tasks)} tasks x 2 modes, greedy)")
    return summary


def print_table(summary: EvalSummary, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("env", "mode", "n", "accuracy", "reward", "thinking", "forced", "toggle", "adherence", "pass@k", "mixed"):
        table.add_column(col)

    def fmt(x: Any) -> str:
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    for env, modes in summary.items():
        for label, c in modes.items():
            table.add_row(env, label, fmt(c["n"]), fmt(c["accuracy"]), fmt(c["reward"]), fmt(c["thinking_tokens"]),
                          fmt(c["forced_close_rate"]), fmt(c.get("toggle_compliance")), fmt(c.get("budget_adherence")),
                          fmt(c.get("pass_at_k")), fmt(c.get("mixed_share")))  # fmt: skip
    Console(width=140).print(table)


def cmd_eval(args: Any) -> int:
    """``align eval --model PATH --recipe NAME``: the held-out evaluation of a pipeline or RL recipe.

    A pipeline recipe's ``eval`` section says which environments, how many tasks and which
    budgets; an RL recipe uses its environments' ``num_eval`` and ``reasoning.eval_budgets``.
    Writes ``eval.json`` and ``eval_samples.jsonl`` next to the model.
    """
    from align.config import load_recipe
    from align.config.schema import PipelineRecipe, RLRecipe
    from align.config.stages import load_stages
    from align.errors import AlignError
    from align.heldout import heldout_tasks, training_prompts

    loaded = load_recipe(args.recipe, args.overrides)
    r = loaded.recipe
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise AlignError(f"--model: no HF checkpoint at '{model}' (expected config.json)")
    if isinstance(r, PipelineRecipe):
        counts, seed = dict(r.eval.envs), r.seed
        modes, sampling = pipeline_plan(r.eval)
        max_turns, grace = r.eval.max_turns, r.eval.budget_grace_fraction
        stages, _ = load_stages(r)
        params: dict[str, dict[str, Any]] = {}
    elif isinstance(r, RLRecipe):
        counts, seed = {s.name: s.num_eval for s in r.envs}, r.seed
        modes = standard_modes(r.reasoning.eval_budgets)
        sampling, max_turns, stages = r.rollout.sampling, r.rollout.max_turns, [loaded]
        grace = r.reasoning.budget_grace_fraction
        params = {s.name: s.params for s in r.envs}  # the run's environments, e.g. tiny-rlhf's chat grades
    else:
        raise AlignError(f"align eval takes a pipeline or rl recipe; '{loaded.name}' is a {r.job} recipe")
    envs = make_envs(list(counts), params)
    tasks = heldout_tasks(envs, counts, training_prompts(envs, stages), seed)
    summary = evaluate_checkpoint(model, envs, tasks, modes, sampling, max_turns, seed,
                                  samples_path=model / "eval_samples.jsonl", budget_grace_fraction=grace)  # fmt: skip
    print_table(summary, f"{model}: held-out evaluation ({len(tasks)} tasks)")
    (model / "eval.json").write_text(json.dumps(summary, indent=2))
    return 0
