"""DPO driver: preference pairs, a frozen reference, sigmoid / IPO / SFT-regularized losses.

Reads top to bottom: data -> reference -> train loop (the one SFT and RM use) -> final HF
folder, loss plot, and (for generated data) the task accuracy of the start and the final
policy on held-out tasks, so a run shows whether preference training cost task skill.

The reference is frozen and never written to disk. Before every train and eval step the
driver asks it for the summed log-probs of the step's chosen and rejected responses and puts
them into the micro-batches (``ref_chosen_logps``, ``ref_rejected_logps``); the objective
(:class:`align.learner.objectives.DPOObjective`) reads them there. Two kinds of reference
(:class:`align.algorithms.common.FrozenReference`, which GRPO's KL uses too):

- ``separate_group``: a second :class:`LearnerGroup` loaded from the same start weights and
  only ever used for forward passes. Costs a second copy of the model (and its placement-group
  slots: ``cluster.num_learners`` more bundles of ``cpus_per_learner``/``gpus_per_learner``).
- ``lora_disabled``: with ``learner.lora`` set, the policy's own learners with the adapters
  switched off (peft's ``disable_adapter``): no second copy, exact because LoRA starts at zero.

Limits: reference log-probs are recomputed for each eval (the eval set is small next to the
train steps); a resumed run recomputes them, which gives the same values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.algorithms.common import FrozenReference, JobError, console, count_pairs, finish, per_pair_means, prepare_job, start_ray, train_loop
from align.cluster import LearnerGroup
from align.config import LoadedRecipe
from align.learner.engine import MicroBatch
from align.learner.objectives import DPOObjective, reference_pair_logps


class Reference:
    """DPO's reference: the shared frozen reference (:class:`FrozenReference`) and the pair log-probs it adds."""

    def __init__(self, loaded: LoadedRecipe, model_path: Path) -> None:
        r = loaded.recipe
        self.kind = r.dpo.reference
        c = r.cluster
        start_ray(r)  # sized for both groups (align.ray_start.ray_cpus), before either starts
        self.frozen = FrozenReference(self.kind, c, r.learner, model_path, r.seed, key="dpo.reference")

    def add_to_batch(self, policy: LearnerGroup, per_rank: list[list[MicroBatch]]) -> None:
        """Put ``ref_chosen_logps`` / ``ref_rejected_logps`` into every micro-batch, in place."""
        out = self.frozen.compute(policy, per_rank, reference_pair_logps)
        for rank, logps in zip(per_rank, out, strict=True):
            for mb, lp in zip(rank, logps, strict=True):
                mb["ref_chosen_logps"], mb["ref_rejected_logps"] = lp[:, 0].contiguous(), lp[:, 1].contiguous()

    def shutdown(self) -> None:
        self.frozen.shutdown()


def task_accuracy(loaded: LoadedRecipe, model_path: Path, run_dir: Path, label: str) -> dict[str, Any]:
    """Greedy accuracy of ``model_path`` on held-out generated tasks (``/think`` and ``/no_think``).

    ``dpo.num_eval_samples_to_generate`` tasks per environment of ``data.generated``, drawn from
    :func:`align.heldout.heldout_tasks` without this recipe's training prompts, so the start
    and the final policy are scored on the same tasks.
    """
    from align.config.schema import SamplingConfig
    from align.evaluate import evaluate_checkpoint, make_envs, standard_modes
    from align.heldout import heldout_tasks, training_prompts

    r = loaded.recipe
    assert r.data.generated is not None
    names = sorted(r.data.generated.envs)
    envs = make_envs(names)
    counts = {n: r.dpo.num_eval_samples_to_generate for n in names}
    tasks = heldout_tasks(envs, counts, training_prompts(envs, [loaded]), r.seed)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=r.dpo.max_new_tokens, max_answer_tokens=32)
    return evaluate_checkpoint(model_path, envs, tasks, standard_modes(), sampling, max_turns=3, seed=r.seed,
                               samples_path=run_dir / f"eval_samples_{label}.jsonl")  # fmt: skip


def _overall(summary: dict[str, Any]) -> dict[str, float | None]:
    return {mode: cell["accuracy"] for mode, cell in summary.get("all", {}).items()}


def run(loaded: LoadedRecipe, resume: bool = False) -> int:
    r = loaded.recipe
    d = r.dpo
    if d.loss == "ipo" and d.label_smoothing > 0:
        raise JobError("dpo.label_smoothing applies to the sigmoid losses only; set it to 0 for dpo.loss=ipo")
    job = prepare_job(loaded, "preference")
    console.print(f"[bold]align dpo[/] {loaded.name}: loss {d.loss}, beta {d.beta}, reference {d.reference}; "
                  + ", ".join(f"{k} {v}" for k, v in job.stats.items()))  # fmt: skip
    reference = Reference(loaded, job.model_path)
    objective = DPOObjective(beta=d.beta, loss=d.loss, label_smoothing=d.label_smoothing, sft_weight=d.sft_weight)
    try:
        group, summary = train_loop(
            job, objective, count_pairs, d.max_steps, d.eval_every_steps, resume,
            add_to_batch=reference.add_to_batch, summarize=per_pair_means,
        )  # fmt: skip
        plots = {"train loss": ("train", "loss"), "eval loss": ("eval", "loss"),
                 "train accuracy": ("train", "accuracy"), "eval accuracy": ("eval", "accuracy")}  # fmt: skip
        final = finish(job, group, plots, f"DPO {loaded.name}")
        group.shutdown()
    finally:
        reference.shutdown()
    summary["final_checkpoint"] = str(final)
    summary["data"] = job.stats
    if r.data.path is None and d.num_eval_samples_to_generate > 0:
        start = task_accuracy(loaded, job.model_path, job.run_dir, "start")
        end = task_accuracy(loaded, final, job.run_dir, "final")
        summary["task_accuracy"] = {"start": start, "final": end}
        console.print(f"task accuracy (greedy, held-out tasks): start {_overall(start)} -> final {_overall(end)}")
    (job.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    first, last = summary["first_eval"], summary["last_eval"]
    if first and last:
        console.print(
            f"eval preference accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f}, "
            f"margin {first['margin']:.3f} -> {last['margin']:.3f}; final checkpoint {final}"
        )
    return 0
