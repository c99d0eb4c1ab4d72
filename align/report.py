"""The pipeline report: every policy stage on the same held-out tasks, compared with the one before.

Markdown with tables and PNG plots (accuracy vs budget, thinking tokens vs budget, training
curves per stage), and the same numbers as JSON. Accuracies carry 95% Wilson intervals, and
changes between stages are tested on the paired per-task outcomes (:mod:`align.stats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.config import LoadedRecipe
from align.config.schema import PipelineRecipe
from align.evaluate import evaluate_checkpoint, make_envs, pipeline_plan, print_table
from align.heldout import heldout_tasks, training_prompts
from align.stats import PairedChange, paired_change, wilson_interval


def evaluate_stages(r: PipelineRecipe, finals: dict[str, Path], stages: list[LoadedRecipe]) -> dict[str, Any]:
    """Each stage on the same held-out tasks: summaries by stage name, plus ``tasks_per_env`` and
    ``outcomes`` (stage -> environment -> mode -> task id -> correct, for the paired tests)."""
    envs = make_envs(list(r.eval.envs))
    tasks = heldout_tasks(envs, r.eval.envs, training_prompts(envs, stages), r.seed)
    modes, sampling = pipeline_plan(r.eval)
    out: dict[str, Any] = {"tasks_per_env": {n: sum(t.env == n for t in tasks) for n in envs}, OUTCOMES: {}, GRADES: {}}
    for t in tasks:
        if t.meta.get("grade") is not None:
            out[GRADES].setdefault(t.env, {})[str(t.id)] = t.meta["grade"]
    for name, path in finals.items():
        samples = Path(r.output_dir) / f"eval_{name}.jsonl"
        summary = evaluate_checkpoint(path, envs, tasks, modes, sampling, r.eval.max_turns,
                                      r.seed, samples_path=samples, budget_grace_fraction=r.eval.budget_grace_fraction)  # fmt: skip
        print_table(summary, f"stage {name}: held-out evaluation")
        out[name] = summary
        out[OUTCOMES][name] = read_outcomes(samples)
    return out


OUTCOMES = "outcomes"
GRADES = "grades"  # environment -> task id -> its generator's difficulty grade (Task.meta["grade"])
_NOT_STAGES = ("tasks_per_env", OUTCOMES, GRADES)


def read_outcomes(samples_path: Path) -> dict[str, dict[str, dict[str, bool]]]:
    """environment (and ``all``) -> mode label -> task id -> correct, from an ``eval_samples`` JSONL file."""
    out: dict[str, dict[str, dict[str, bool]]] = {}
    for line in samples_path.read_text().splitlines():
        row = json.loads(line)
        correct = bool(row["correct"])  # with k samples of a task (think_sampled), its first counts
        out.setdefault(row["env"], {}).setdefault(row["mode"], {}).setdefault(str(row["task"]), correct)
        out.setdefault("all", {}).setdefault(row["mode"], {}).setdefault(f"{row['env']}/{row['task']}", correct)
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
    if "think_sampled" in a:
        row["accuracy_think_sampled"] = a["think_sampled"]["accuracy"]
        if "pass_at_k" in a["think_sampled"]:
            row["think_sampled_pass_at_k"] = a["think_sampled"]["pass_at_k"]
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


def _with_interval(cell: dict[str, Any] | None, key: str = "accuracy") -> str:
    """``0.714 [0.61, 0.80]``: the share and its 95% Wilson interval over the cell's tasks."""
    if not cell or cell.get(key) is None:
        return "-"
    n = int(cell["n"]) // int(cell.get("samples_per_task", 1))  # k samples of a task are not k tasks
    lo, hi = wilson_interval(round(cell[key] * n), n)
    return f"{cell[key]:.3f} [{lo:.2f}, {hi:.2f}]"


class _Changes:
    """Stage-to-stage accuracy changes, tested on the paired per-task outcomes when the evals have them."""

    def __init__(self, evals: dict[str, Any]) -> None:
        self.outcomes: dict[str, Any] = evals.get(OUTCOMES, {})

    def change(self, env: str, mode: str, before: str, after: str) -> PairedChange | None:
        a = self.outcomes.get(before, {}).get(env, {}).get(mode)
        b = self.outcomes.get(after, {}).get(env, {}).get(mode)
        return paired_change(a, b) if a and b else None

    def delta(self, env: str, mode: str, before: str | None, after: str, b_value: float | None, a_value: float | None) -> str:
        """`` (+0.036)``, with `` *`` when the change is beyond noise (McNemar p < 0.05); empty for the first stage."""
        if before is None or a_value is None or b_value is None:
            return ""
        c = self.change(env, mode, before, after)
        return f" ({a_value - b_value:+.3f}{' *' if c is not None and c.significant() else ''})"


def write_report(run_dir: Path, r: PipelineRecipe, evals: dict[str, Any], timings: dict[str, float], stage_dirs: dict[str, Path]) -> Path:
    stages = [s for s in evals if s not in _NOT_STAGES]
    heads = {s: headline(evals[s], r.eval.budgets) for s in stages}
    changes = _Changes(evals)
    lines = ["# align pipeline report", "", f"Recipe `{r.description or 'pipeline'}`, seed {r.seed}. Held-out tasks per environment: "
             + ", ".join(f"{k} {v}" for k, v in evals["tasks_per_env"].items()) + " (greedy decoding"
             + (f"; think_sampled at temperature {r.eval.sampled_temperature}" if r.eval.sampled_temperature else "")
             + (f", {r.eval.sampled_k} samples per task" if r.eval.sampled_k > 1 else "") + ").", ""]  # fmt: skip
    short = heldout_shortfall(evals["tasks_per_env"], r.eval.envs)
    lines += short + ([""] if short else [])
    cols = list(next(iter(heads.values())).keys()) if heads else []
    lines += ["## Headline", "", "| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    prev = None
    for s in stages:
        cells = []
        for c in cols:
            mode = c.removeprefix("accuracy_") if c.startswith("accuracy_") else None
            text = _with_interval(evals[s]["all"].get(mode)) if mode else _fmt(heads[s][c])
            cells.append(text + changes.delta("all", mode or "", prev, s, heads[prev][c] if prev else None, heads[s][c]))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
        prev = s
    lines += ["", NOTE, "", "## Accuracy per environment (/think and /no_think)", ""]
    env_names = [e for e in evals[stages[0]] if e != "all"] if stages else []
    modes = ["think", "no_think"] + (["think_sampled"] if stages and "think_sampled" in evals[stages[0]]["all"] else [])
    lines += ["| stage | " + " | ".join(f"{e} {m}" for e in env_names for m in modes) + " |", "|---" * (len(modes) * len(env_names) + 1) + "|"]
    prev = None
    for s in stages:
        cells = [_with_interval(evals[s][e].get(m)) + changes.delta(e, m, prev, s, evals[prev][e][m]["accuracy"] if prev else None,
                 evals[s][e][m]["accuracy"]) for e in env_names for m in modes]  # fmt: skip
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
        prev = s
    lines += _grade_table(changes, stages, evals.get(GRADES, {}))
    lines += _pass_at_k_table(evals, stages, ["all", *env_names])
    lines += _budget_table(evals, stages, ["all", *env_names], r.eval.budgets)
    lines += _significance_table(changes, stages, ["all", *env_names], evals)
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    plots = _plots(run_dir, r, evals, stages, stage_dirs)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (run_dir / "report.json").write_text(json.dumps({"headline": heads, "evals": evals, "timings_s": timings}, indent=2))
    return report


NOTE = (
    "Brackets: 95% Wilson interval. Parenthesised: change from the stage before; `*` marks an accuracy change beyond "
    "noise, McNemar's exact test p < 0.05 on the paired tasks (every stage plays the same held-out tasks, greedy). "
    "`think_sampled` (if present): /think with one sample per task at the RL stage's temperature, what GRPO optimizes; "
    "its changes carry the sampling noise of one draw per task on top (with k samples per task, the test takes each task's first)."
)


def _grade_table(changes: _Changes, stages: list[str], grades: dict[str, dict[str, Any]]) -> list[str]:
    """Greedy /think accuracy per difficulty grade of each environment, from the paired outcomes: where a stage gains."""
    if not grades or not changes.outcomes:
        return []
    lines = ["", "## /think accuracy per grade", "", "Grades are the generators' difficulty levels (`meta.grade`); changes are "
             "tested as above, on the grade's tasks.", "", "| env | grade | tasks | " + " | ".join(stages) + " |", "|---" * (len(stages) + 3) + "|"]  # fmt: skip
    for env, by_task in grades.items():
        for grade in sorted(set(by_task.values()), key=str):
            ids = {t for t, g in by_task.items() if g == grade}
            cells, prev_out = [], None
            for s in stages:
                out = {t: ok for t, ok in changes.outcomes.get(s, {}).get(env, {}).get("think", {}).items() if t in ids}
                if not out:
                    cells.append("-")
                    prev_out = None
                    continue
                cell = _with_interval({"n": len(out), "accuracy": sum(out.values()) / len(out)})
                if prev_out:
                    c = paired_change(prev_out, out)
                    cell += f" ({c.delta:+.3f}{' *' if c.significant() else ''})"
                cells.append(cell)
                prev_out = out
            lines.append(f"| {env} | {grade} | {len(ids)} | " + " | ".join(cells) + " |")
    return lines


def _pass_at_k_table(evals: dict[str, Any], stages: list[str], envs: list[str]) -> list[str]:
    """think_sampled with k > 1 samples per task: mean accuracy, pass@k, and the share of tasks with mixed outcomes."""
    cells = [(e, s, evals[s].get(e, {}).get("think_sampled")) for e in envs for s in stages]
    cells = [(e, s, c) for e, s, c in cells if c and "pass_at_k" in c]
    if not cells:
        return []
    k = cells[0][2]["samples_per_task"]
    lines = ["", f"## Sampled /think, {k} samples per task", "",
             f"Mixed: tasks with some of their {k} samples right and some wrong, the groups GRPO learns from at group size {k}; "
             "an all-right or all-wrong group has no advantage.", "",
             "| env | stage | accuracy (mean) | pass@k | mixed |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {e} | {s} | {_fmt(c['accuracy'])} | {_fmt(c['pass_at_k'])} | {_fmt(c['mixed_share'])} |" for e, s, c in cells]
    return lines


def _budget_table(evals: dict[str, Any], stages: list[str], envs: list[str], budgets: list[int]) -> list[str]:
    lines = ["", "## Budgets per environment", "", "| env | budget | stage | accuracy | thinking tokens | adherence | forced close |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in envs:
        for b in budgets:
            for s in stages:
                c = evals[s].get(e, {}).get(f"budget_{b}")
                if c:
                    lines.append(f"| {e} | {b} | {s} | {_with_interval(c)} | {_fmt(c['thinking_tokens'])} | "
                                 f"{_with_interval(c, 'budget_adherence')} | {_fmt(c['forced_close_rate'])} |")  # fmt: skip
    return lines


def _mode_order(label: str) -> tuple[int, int]:
    """think, no_think, budgets in increasing order (``budget_128`` after ``budget_16``), then think_sampled."""
    if label.startswith("budget_"):
        return 2, int(label.removeprefix("budget_"))
    return {"think": 0, "no_think": 1}.get(label, 3), 0


def _significance_table(changes: _Changes, stages: list[str], envs: list[str], evals: dict[str, Any]) -> list[str]:
    """First stage vs last, per environment and mode: the paired test in full."""
    if len(stages) < 2 or not changes.outcomes:
        return []
    first, last = stages[0], stages[-1]
    lines = ["", f"## {last} vs {first}: paired changes", "", f"Gained: tasks right in {last} and wrong in {first}; lost: the reverse.", "",
             "| env | mode | tasks | before | after | change | gained | lost | McNemar p | beyond noise |", "|---" * 10 + "|"]  # fmt: skip
    for e in envs:
        for mode in sorted(evals[last].get(e, {}), key=_mode_order):
            c = changes.change(e, mode, first, last)
            if c is not None:
                lines.append(f"| {e} | {mode} | {c.n} | {c.before:.3f} | {c.after:.3f} | {c.delta:+.3f} | {c.gained} | {c.lost} | "
                             f"{c.p_value:.3g} | {'yes' if c.significant() else 'no'} |")  # fmt: skip
    return lines


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
