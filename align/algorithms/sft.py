"""SFT driver: chat demonstrations, loss on assistant tokens only, on the shared learner layout.

Reads top to bottom: data -> learners -> train loop (eval, checkpoints, resume) -> final HF
folder, loss plot, and a sampled evaluation of the held-out tasks (accuracy, toggle and budget
control) when the data came from the environments.
"""

from __future__ import annotations

import json

from align.algorithms.common import console, finish, prepare_job, supervised_tokens, train_loop
from align.config import LoadedRecipe
from align.learner.objectives import sft_objective


def run(loaded: LoadedRecipe, resume: bool = False) -> int:
    r = loaded.recipe
    job = prepare_job(loaded, "sft")
    console.print(f"[bold]align sft[/] {loaded.name}: " + ", ".join(f"{k} {v}" for k, v in job.stats.items()))
    group, summary = train_loop(job, sft_objective, supervised_tokens, r.sft.max_steps, r.sft.eval_every_steps, resume)
    final = finish(job, group, {"train loss": ("train", "loss"), "eval loss": ("eval", "loss")}, f"SFT {loaded.name}")
    group.shutdown()
    summary["final_checkpoint"] = str(final)
    summary["data"] = job.stats
    if r.data.path is None and r.sft.num_eval_samples_to_generate > 0:
        from align.evaluate import sampled_eval

        summary["sampled_eval"] = sampled_eval(final, job.data.eval.rows, r, limit_per_env=r.sft.num_eval_samples_to_generate, run_dir=job.run_dir)
    (job.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    first, last = summary["first_eval"], summary["last_eval"]
    if first and last:
        console.print(f"eval loss {first['loss']:.4f} -> {last['loss']:.4f}; final checkpoint {final}")
    return 0
