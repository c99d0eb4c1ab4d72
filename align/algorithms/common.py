"""What the SFT, DPO and RM drivers share: start checkpoint, data, learners, and the train loop.

One loop for the three supervised jobs, so tokens/s, accumulation and resume are computed the
same way everywhere (torchtune's copy-pasted recipes drifted apart on exactly these).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from align.byom import check_chat
from align.cluster import LearnerGroup
from align.config import LoadedRecipe
from align.config.schema import ClusterConfig, LearnerConfig
from align.data import BatchPlan, PreparedData, RowKind, iter_texts, load_splits, pad_batch, prepare_data, shard_batch
from align.data.tokenize import example_lengths
from align.errors import AlignError
from align.export import write_checkpoint
from align.guards import NonFiniteGuard
from align.io_checks import disk_errors
from align.learner.engine import MicroBatch, Objective
from align.learner.objectives import AdaptersOff
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_tokenizer
from align.runlog import Checkpoints, MetricsLog, plot_curves
from align.ray_start import reference_cpus, start_ray
from align.startup import StartupClock

console = Console(highlight=False, soft_wrap=True)


class JobError(AlignError, RuntimeError):
    """A job cannot start or go on; the message says what to do."""


def start_checkpoint(loaded: LoadedRecipe, texts: Callable[[], Any] | None = None) -> Path:
    """The HF folder a job starts from: ``init_from`` (its chat checked, :mod:`align.byom`), else ``<run>/init``."""
    r = loaded.recipe
    if r.init_from is not None:
        path = Path(r.init_from)
        if not (path / "config.json").is_file():
            raise JobError(
                f"init_from: no checkpoint at '{path}' (expected an HF folder with config.json). "
                "Run the stage that writes it first (for the tiny world: `align sft --recipe tiny-sft`), "
                f"or override it: align {r.job} --recipe {loaded.name} init_from=PATH"
            )
        check_chat(load_tokenizer(path), "init_from")
        return path
    return prepare_initial_checkpoint(r.model, r.tokenizer, Path(r.output_dir) / "init", texts=texts() if texts else None, seed=r.seed, say=console.print)


@dataclass
class Job:
    """Everything a supervised driver needs, built once."""

    loaded: LoadedRecipe
    run_dir: Path
    model_path: Path
    tokenizer: Any
    data: PreparedData
    stats: dict[str, int] = field(default_factory=dict)
    clock: StartupClock = field(default_factory=StartupClock)


def prepare_job(loaded: LoadedRecipe, kind: RowKind, attribute_names: tuple[str, ...] = ()) -> Job:
    r, clock = loaded.recipe, StartupClock()
    clock.lap("imports")
    splits = load_splits(r.data, kind, r.seed, attribute_names or None)
    check_batch_fits(loaded, len(splits.train), splits.stats)

    def texts() -> Any:
        from align.tiny.world import world_texts

        yield from iter_texts(splits.train)
        yield from world_texts(seed=r.seed)

    model_path = start_checkpoint(loaded, texts)
    tokenizer = load_tokenizer(model_path)
    data = prepare_data(r.data, kind, tokenizer, r.learner.max_seq_len, r.seed, attribute_names=attribute_names, rows=splits)
    check_batch_fits(loaded, len(data.train.examples), data.stats)
    clock.lap("data")
    return Job(loaded, Path(r.output_dir), model_path, tokenizer, data, dict(data.stats), clock)


def global_batch_size(loaded: LoadedRecipe) -> int:
    r = loaded.recipe
    return r.learner.micro_batch_size_per_device * r.learner.gradient_accumulation_steps * r.cluster.num_learners


def check_batch_fits(loaded: LoadedRecipe, n: int, stats: dict[str, int], what: str = "training examples") -> None:
    """Exit 2 (:class:`JobError`) before any actor starts when ``n`` train rows or examples cannot fill one global batch."""
    r, size = loaded.recipe, global_batch_size(loaded)
    if n >= size:
        return
    lr, learners = r.learner, r.cluster.num_learners
    rows = f"{stats['file_rows']} rows" if "file_rows" in stats else f"data.generated.num_train={stats.get('train_rows')}"
    fits = n // (lr.gradient_accumulation_steps * learners)
    todo = f"set learner.micro_batch_size_per_device={fits} (or lower)" if fits else "lower learner.gradient_accumulation_steps"
    raise JobError(f"{r.data.path or 'generated data'}: {rows} gave {n} {what}, fewer than one global batch of {size} "
                   f"(learner.micro_batch_size_per_device={lr.micro_batch_size_per_device} x learner.gradient_accumulation_steps="
                   f"{lr.gradient_accumulation_steps} x cluster.num_learners={learners}); {todo}, or add rows")  # fmt: skip


def start_learners(loaded: LoadedRecipe, model_path: Path, total_steps: int, model_kind: str = "causal_lm", num_labels: int = 1) -> LearnerGroup:
    r = loaded.recipe
    start_ray(r)
    group = LearnerGroup(r.cluster)
    group.setup(str(model_path), r.learner, total_steps, r.seed, model_kind, num_labels)
    return group


def micro_batches(examples: list[dict[str, Any]], indices: list[int], world_size: int, accumulation: int, pad_id: int,
                  count_units: Callable[[MicroBatch], float]) -> list[list[MicroBatch]]:  # fmt: skip
    """Per-rank padded micro-batches of one global batch, each carrying the global unit count."""
    per_rank = [[pad_batch([examples[i] for i in mb], pad_id) for mb in shard_batch(indices, world_size, rank, accumulation)] for rank in range(world_size)]
    total = sum(count_units(mb) for rank in per_rank for mb in rank)
    for rank in per_rank:
        for mb in rank:
            mb["loss_denominator"] = torch.tensor(float(total))
    return per_rank


def supervised_tokens(mb: MicroBatch) -> float:
    """Trained tokens in an SFT micro-batch (labels are shifted by one inside the loss)."""
    return float((mb["labels"][:, 1:] != -100).sum())


def count_pairs(mb: MicroBatch) -> float:
    """Preference pairs in a DPO or Bradley-Terry micro-batch (their loss unit)."""
    return float(mb["chosen_input_ids"].size(0))


# Pair metrics the DPO and Bradley-Terry objectives sum per pair; logged as means over pairs.
PER_PAIR_METRICS = ("accuracy", "margin", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps", "chosen_nll_per_token")


def per_pair_means(metrics: dict[str, float]) -> dict[str, float]:
    """Summed pair metrics -> means over the pairs they came from (the ``pairs`` count is dropped)."""
    out = dict(metrics)
    pairs = out.pop("pairs", 0.0)
    for k in PER_PAIR_METRICS:
        if k in out:
            out[k] = out[k] / max(pairs, 1.0)
    return out


def evaluate_loss(
    job: Job,
    group: LearnerGroup,
    objective: Objective,
    count_units: Callable[[MicroBatch], float],
    add_to_batch: Callable[[LearnerGroup, list[list[MicroBatch]]], None] | None = None,
) -> dict[str, float]:
    """Eval metrics over the whole eval set, in global batches spread over the learners.

    ``loss`` is the mean over units; every other metric is summed over the eval set (objectives
    report counts and sums; a driver's ``summarize`` turns them into means).
    """
    examples = job.data.eval.examples
    if not examples:
        return {}
    r = job.loaded.recipe
    size = r.learner.micro_batch_size_per_device * group.size
    totals: dict[str, float] = {}
    for start in range(0, len(examples), size):
        chunk = list(range(start, min(start + size, len(examples))))
        # Ranks without examples get none: pad the split with repeats is wrong (counts twice), so
        # evaluate the tail on rank 0 alone.
        ranks = group.size if len(chunk) == size else 1
        per_rank = [[pad_batch([examples[i] for i in part], job.tokenizer.pad_token_id)] for part in _split(chunk, ranks)]
        per_rank += [[] for _ in range(group.size - len(per_rank))]
        total = sum(count_units(mb) for rank in per_rank for mb in rank)
        for rank in per_rank:
            for mb in rank:
                mb["loss_denominator"] = torch.tensor(float(total))
        if add_to_batch:
            add_to_batch(group, per_rank)
        m = group.eval_step(per_rank, objective)
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + (v * total if k == "loss" else v)
        totals["_units"] = totals.get("_units", 0.0) + total
    units = totals.pop("_units")
    totals["loss"] = totals["loss"] / max(units, 1e-9)
    return totals


def _split(items: list[int], parts: int) -> list[list[int]]:
    size = len(items) // parts
    return [items[i * size : (i + 1) * size] for i in range(parts)]


def train_loop(
    job: Job, objective: Objective, count_units: Callable[[MicroBatch], float], max_steps: int, eval_every: int, resume: bool,
    model_kind: str = "causal_lm", num_labels: int = 1,
    eval_extra: Callable[[LearnerGroup, int], dict[str, float]] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    add_to_batch: Callable[[LearnerGroup, list[list[MicroBatch]]], None] | None = None,
    summarize: Callable[[dict[str, float]], dict[str, float]] | None = None,
    hf_files: Callable[[Path], None] | None = None,
) -> tuple[LearnerGroup, dict[str, Any]]:
    """Train ``max_steps`` optimizer steps with eval, checkpoints and resume; returns the group and a summary.

    The data position is the step number: batch ``k`` of the :class:`BatchPlan` is the same in
    every run, so resuming at step ``k`` replays exactly what an uninterrupted run would.

    Hooks for the jobs that need more than SFT: ``add_to_batch(group, per_rank)`` adds tensors to every
    train and eval micro-batch before the learners see it (DPO's reference log-probs);
    ``summarize(metrics)`` turns the summed train and eval metrics into what is logged (counts
    into means); ``eval_extra(group, step)`` adds metrics the objective cannot compute, at every
    eval including the one before training; ``hf_files(folder)`` adds files to each checkpoint's HF folder.
    """
    summarize = summarize or (lambda m: m)
    r = job.loaded.recipe
    examples = job.data.train.examples
    plan = BatchPlan(len(examples), global_batch_size(job.loaded), r.seed, lengths=example_lengths(examples))
    ckpts = Checkpoints(job.run_dir, r.checkpoint.keep_last)
    group = start_learners(job.loaded, job.model_path, max_steps, model_kind, num_labels)
    job.clock.lap("ray and learners")
    summary: dict[str, Any] = {"first_eval": None, "last_eval": None, "learner_nodes": group.node_ids()}
    start, state = resume_from(ckpts, resume, group, check=lambda s: plan.check_state(s["plan"]))
    log = MetricsLog(job.run_dir, resume_from_step=start if state is not None else None, recipe=r)
    log.log(start, "data", {k: float(v) for k, v in job.stats.items()})
    pad_id = job.tokenizer.pad_token_id
    nonfinite = NonFiniteGuard(r.learner.on_nonfinite, r.learner.max_nonfinite_steps, console)
    step_times: list[float] = []
    tokens_seen = 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        bar = progress.add_task(f"{r.job} {job.loaded.name}", total=max_steps, completed=start, info="")
        if start == 0:
            ev = evaluate_loss(job, group, objective, count_units, add_to_batch)
            if ev:
                ev = summarize(ev)
            if eval_extra:
                ev.update(eval_extra(group, 0))
            if ev:
                summary["first_eval"] = ev
                log.log(0, "eval", ev)
            job.clock.lap("eval 0")
        for step in range(start, max_steps):
            t0 = time.perf_counter()
            per_rank = micro_batches(examples, plan.batch(step), group.size, r.learner.gradient_accumulation_steps, pad_id, count_units)
            if add_to_batch:
                add_to_batch(group, per_rank)
            metrics = summarize(group.train_step(per_rank, objective))
            nonfinite.after_step(step + 1, metrics)
            dt = time.perf_counter() - t0
            tokens = sum(float(v.sum()) for rank in per_rank for mb in rank for k, v in mb.items() if k.endswith("attention_mask"))
            tokens_seen += int(tokens)
            step_times.append(dt)
            if step == start:
                progress.console.print(job.clock.line(dt))
            metrics.update(step_time_s=dt, tokens_per_s=tokens / dt, epoch=float(plan.epoch(step)))
            done = step + 1
            if done % r.log_every_steps == 0:
                log.log(done, "train", metrics)
            if on_step:
                on_step(done, metrics)
            progress.update(bar, completed=done, info=f"loss {metrics['loss']:.4f}  {metrics['tokens_per_s']:.0f} tok/s")
            if done % eval_every == 0 or done == max_steps:
                ev = evaluate_loss(job, group, objective, count_units, add_to_batch)
                if ev:
                    ev = summarize(ev)
                if eval_extra:
                    ev.update(eval_extra(group, done))
                if ev:
                    summary["last_eval"] = ev
                    log.log(done, "eval", ev)
                    progress.console.print(f"step {done}: " + "  ".join(f"eval {k} {v:.4g}" for k, v in ev.items()))
            if done % r.checkpoint.every_steps == 0 and done < max_steps:
                ckpts.save(done, lambda tmp: write_checkpoint(group, tmp, job.model_path, r.checkpoint.save_hf, hf_files), {"plan": plan.state_dict()})
    log.close()
    summary.update(
        steps=max_steps - start,
        median_step_time_s=sorted(step_times)[len(step_times) // 2] if step_times else None,
        tokens_per_s=tokens_seen / sum(step_times) if step_times else None,
    )
    return group, summary


def resume_from(
    ckpts: Checkpoints, resume: bool, group: LearnerGroup, check: Callable[[dict[str, Any]], None] | None = None
) -> tuple[int, dict[str, Any] | None]:
    """(step, state.json) of the latest checkpoint, loaded into ``group`` after ``check(state)``; else (0, None)."""
    latest = ckpts.latest() if resume else None
    if latest is None:
        if resume:
            console.print(f"[yellow]--resume: no checkpoint in {ckpts.root}; starting from step 0[/]")
        return 0, None
    state = json.loads((latest / "state.json").read_text())
    if check:
        check(state)
    group.load_state(str(latest))
    start = int(state["step"])
    console.print(f"resumed from {latest} at step {start}")
    return start, state


def publish_hf(run_dir: Path, group: LearnerGroup, tokenizer_path: Path, before_publish: Callable[[Path], None] | None = None) -> Path:
    """Write ``run_dir/final`` atomically (a temp folder, then renamed); ``before_publish(tmp)`` may add files."""
    final = run_dir / "final"
    tmp = run_dir / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    with disk_errors(run_dir, "the final model"):
        group.save_hf(str(tmp), tokenizer_path=str(tokenizer_path))
        if before_publish:
            before_publish(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def finish(job: Job, group: LearnerGroup, plots: dict[str, tuple[str, str]], title: str, before_publish: Callable[[Path], None] | None = None) -> Path:
    """:func:`publish_hf` (``before_publish``: e.g. a reward model's attribute names) and the loss plot; returns the HF folder."""
    final = publish_hf(job.run_dir, group, job.model_path, before_publish)
    plot_curves(job.run_dir, plots, "loss.png", title)
    return final


# ---------------------------------------------------------------------------- frozen reference


class FrozenReference:
    """The frozen start policy, for per-micro-batch reference values (DPO, GRPO with ``kl_coef > 0``).

    Drivers ask it for reference log-probs just before a step and put them into the
    micro-batches; they are never written to disk. Two kinds:

    - ``separate_group``: a second :class:`LearnerGroup` loaded from the same start weights and
      only ever used for forward passes. Costs a second copy of the model (and its placement-group
      slots: ``cluster.num_learners`` more bundles of ``cpus_per_learner``/``gpus_per_learner``).
    - ``lora_disabled``: with ``learner.lora`` set, the policy's own learners with the adapters
      switched off (:class:`align.learner.objectives.AdaptersOff`): no second copy, exact
      because LoRA starts at zero.

    ``key`` is the recipe key that chose the kind (``dpo.reference``), for error messages. The
    caller starts Ray with room for :meth:`cpus` more CPUs before building one.
    """

    def __init__(
        self,
        kind: str,
        cluster: ClusterConfig,
        learner: LearnerConfig,
        model_path: Path,
        seed: int,
        key: str,
        in_process: bool = False,
    ) -> None:
        self.check(kind, learner, key)
        self.kind = kind
        self.group: LearnerGroup | None = None
        if kind == "lora_disabled":
            return
        self.group = LearnerGroup(cluster, in_process=in_process)
        # The reference never steps: full weights (no LoRA), and total_steps only sizes an unused schedule.
        # Not waited for: the policy's learners build meanwhile; the first compute() waits.
        self.group.setup(str(model_path), learner.model_copy(update={"lora": None}), 1, seed, wait=False)

    @staticmethod
    def check(kind: str, learner: LearnerConfig, key: str) -> None:
        """Refuse a reference that cannot work, before anything starts."""
        if kind == "lora_disabled" and learner.lora is None:
            raise JobError(
                f"{key} is lora_disabled, but learner.lora is not set: there are no adapters to disable. "
                f"Set learner.lora (e.g. learner.lora={{r: 16}}) or use {key}=separate_group."
            )
        if kind not in ("lora_disabled", "separate_group"):
            raise JobError(f"{key}: unknown reference kind {kind!r}; expected separate_group or lora_disabled")

    @staticmethod
    def cpus(kind: str, cluster: ClusterConfig) -> float:
        """CPUs a reference of ``kind`` takes in the Ray session, beyond the policy's learners."""
        return reference_cpus(kind, cluster.num_learners, cluster.cpus_per_learner)

    def compute(
        self, policy: LearnerGroup, per_rank: list[list[MicroBatch]], fn: Callable[[Any, MicroBatch], torch.Tensor]
    ) -> list[list[torch.Tensor]]:
        """``fn(reference_model, mb)`` for every micro-batch, laid out like ``per_rank``."""
        if self.group is not None:
            self.group.wait_ready()
            return self.group.compute(per_rank, fn)
        return policy.compute(per_rank, AdaptersOff(fn))

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()
