"""The pipeline report: every policy stage on the same held-out tasks, compared with the one before.

Markdown with tables and PNG plots (accuracy vs budget, thinking tokens vs budget, training
curves per stage), and the same numbers as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.config import LoadedRecipe
from align.config.schema import PipelineRecipe, SamplingConfig
from align.evaluate import evaluate_checkpoint, make_envs, print_table, standard_modes
from align.heldout import heldout_tasks, training_prompts


def evaluate_stages(r: PipelineRecipe, finals: dict[str, Path], stages: list[LoadedRecipe]) -> dict[str, Any]:
    envs = make_envs(list(r.eval.envs))
    tasks = heldout_tasks(envs, r.eval.envs, training_prompts(envs, stages), r.seed)
    sampling = SamplingConfig(max_new_tokens=r.eval.max_new_tokens, max_answer_tokens=r.eval.max_answer_tokens)
    out: dict[str, Any] = {"tasks_per_env": {n: sum(t.env == n for t in tasks) for n in envs}}
    for name, path in finals.items():
        summary = evaluate_checkpoint(path, envs, tasks, standard_modes(r.eval.budgets), sampling, r.eval.max_turns, r.seed,
                                      samples_path=Path(r.output_dir) / f"eval_{name}.jsonl")  # fmt: skip
        print_table(summary, f"stage {name}: held-out evaluation")
        out[name] = summary
    return out


def headline(summary: dict[str, Any], budgets: list[int]) -> dict[str, float | None]:
    a = summary["all"]
    row: dict[str, float | None] = {
        "accuracy_think": a["think"]["accuracy"],
        "accuracy_no_think": a["no_think"]["accuracy"],
        "toggle_compliance": a["no_think"].get("toggle_compliance"),
    }
    adherence = [a[f"budget_{b}"].get("budget_adherence") for b in budgets if f"budget_{b}" in a]
    row["budget_adherence_min"] = min(adherence) if adherence else None
    for b in budgets:
        row[f"accuracy_budget_{b}"] = a.get(f"budget_{b}", {}).get("accuracy")
    return row


def heldout_shortfall(tasks_per_env: dict[str, int], configured: dict[str, int]) -> list[str]:
    """A report line for each environment evaluated on fewer held-out tasks than ``eval.envs`` asks.

    >>> heldout_shortfall({"math": 16, "new_env": 2}, {"math": 16, "new_env": 16})
    ['**Held-out set short:** new_env has 2 of its 16 configured tasks (the rest repeat training prompts); its numbers rest on fewer samples.']
    """
    out = []
    for env, n in configured.items():
        got = tasks_per_env.get(env, 0)
        if got < n:
            missing = ", and it is missing from the tables" if not got else ""
            out.append(f"**Held-out set short:** {env} has {got} of its {n} configured tasks (the rest repeat training prompts); "
                       f"its numbers rest on fewer samples{missing}.")  # fmt: skip
    return out


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def write_report(run_dir: Path, r: PipelineRecipe, evals: dict[str, Any], timings: dict[str, float], stage_dirs: dict[str, Path]) -> Path:
    stages = [s for s in evals if s != "tasks_per_env"]
    heads = {s: headline(evals[s], r.eval.budgets) for s in stages}
    lines = ["# align pipeline report", "", f"Recipe `{r.description or 'pipeline'}`, seed {r.seed}. Held-out tasks per environment: "
             + ", ".join(f"{k} {v}" for k, v in evals["tasks_per_env"].items()) + " (greedy decoding).", ""]  # fmt: skip
    short = heldout_shortfall(evals["tasks_per_env"], r.eval.envs)
    lines += short + ([""] if short else [])
    cols = list(next(iter(heads.values())).keys()) if heads else []
    lines += ["## Headline", "", "| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    prev = None
    for s in stages:
        cells = []
        for c in cols:
            v = heads[s][c]
            delta = "" if prev is None or v is None or heads[prev][c] is None else f" ({v - heads[prev][c]:+.3f})"
            cells.append(_fmt(v) + delta)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
        prev = s
    lines += ["", "Parenthesised: change from the stage before.", "", "## Accuracy per environment (/think and /no_think)", ""]
    env_names = [e for e in evals[stages[0]] if e != "all"] if stages else []
    lines += ["| stage | " + " | ".join(f"{e} think | {e} no_think" for e in env_names) + " |", "|---" * (2 * len(env_names) + 1) + "|"]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(f"{_fmt(evals[s][e]['think']['accuracy'])} | {_fmt(evals[s][e]['no_think']['accuracy'])}" for e in env_names) + " |")
    lines += ["", "## Budgets (all environments)", "", "| stage | budget | accuracy | thinking tokens | adherence | forced close |", "|---|---|---|---|---|---|"]
    for s in stages:
        for b in r.eval.budgets:
            c = evals[s]["all"].get(f"budget_{b}")
            if c:
                lines.append(f"| {s} | {b} | {_fmt(c['accuracy'])} | {_fmt(c['thinking_tokens'])} | {_fmt(c.get('budget_adherence'))} | {_fmt(c['forced_close_rate'])} |")
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    plots = _plots(run_dir, r, evals, stages, stage_dirs)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (run_dir / "report.json").write_text(json.dumps({"headline": heads, "evals": evals, "timings_s": timings}, indent=2))
    return report


def _plots(run_dir: Path, r: PipelineRecipe, evals: dict[str, Any], stages: list[str], stage_dirs: dict[str, Path]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from align.runlog import read_metrics

    out = []
    for key, ylabel, name in (("accuracy", "accuracy", "accuracy_vs_budget.png"), ("thinking_tokens", "thinking tokens", "thinking_vs_budget.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in stages:
            xs = [b for b in r.eval.budgets if f"budget_{b}" in evals[s]["all"]]
            ax.plot(xs, [evals[s]["all"][f"budget_{b}"][key] for b in xs], marker="o", label=s)
        if key == "thinking_tokens":
            ax.plot(r.eval.budgets, r.eval.budgets, "k--", alpha=0.4, label="budget")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("thinking budget (tokens)")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=100)
        plt.close(fig)
        out.append(run_dir / name)
    fig, axes = plt.subplots(1, len(stage_dirs), figsize=(4 * len(stage_dirs), 3.2))
    for ax, (s, d) in zip(axes if len(stage_dirs) > 1 else [axes], stage_dirs.items()):
        recs = read_metrics(d)
        key = "reward" if any("reward" in x and x["split"] == "train" for x in recs) else "loss"
        pts = [(x["step"], x[key]) for x in recs if x["split"] == "train" and key in x]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_title(f"{s}: train {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "training_curves.png", dpi=100)
    plt.close(fig)
    out.append(run_dir / "training_curves.png")
    return out
