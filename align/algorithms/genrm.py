"""``align rm`` with ``rm.objective: genrm``: the policy architecture trained as a generative judge.

Reads top to bottom: the same preference pairs a Bradley-Terry RM reads (``data``) -> two
judgement SFT rows per pair, one per order (:mod:`rewards.genrm.data`) -> the SFT train loop on
the learners -> ``final/`` (an HF causal LM: serve it with the ``genrm`` reward) -> the held-out
judge evaluation: every held-out pair judged greedily in both orders by an in-process vLLM
engine, with the start checkpoint and with the trained one (:func:`rewards.genrm.judge.pair_metrics`:
accuracy per order and both orders, position-bias rate, parse-failure rate).

With ``rm.genrm.rl_recipe`` (``tiny-genrm``: ``tiny-genrm-rl``) the SFT is the first of two
stages, as Nemotron 3 trains its GenRM: the SFT judge goes to ``<run>/sft/final``, then GRPO of
that judge (vLLM engines sample judgements, DeepSpeed learners update; reward = agreement with
the pair's label + a parseable verdict, :mod:`envs.judge`) on the same train pairs, each in both
orders, goes to ``<run>/rl/final``, and ``<run>/final`` links to it. The held-out evaluation then
has three columns: start, after SFT, after RL.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from align.algorithms.rl import driver
from align.algorithms.common import Job, JobError, check_batch_fits, console, finish, start_checkpoint, start_ray, supervised_tokens, train_loop
from align.config import LoadedRecipe, load_recipe
from align.data import RowSplits, iter_texts, load_splits, prepare_data
from align.learner.objectives import sft_objective
from align.models import inference_dtype, load_tokenizer
from envs.judge.env import judge_tasks
from rewards.genrm.data import judgement_rows, kept_pairs, response_text
from rewards.genrm.judge import Item, judge, pair_metrics, write_format


JUDGEMENT_ROWS = "judgement rows (each pair in both orders)"


def judgement_splits(pairs: RowSplits, show_thinking: bool = False) -> RowSplits:
    """Judgement rows for both splits; each pair's file position is kept for both of its rows."""

    def twice(refs: Any) -> Any:
        return None if refs is None else [ref for ref in refs for _ in range(2)]

    train, evals = judgement_rows(pairs.train, show_thinking), judgement_rows(pairs.eval, show_thinking)
    stats = {**pairs.stats, "judgement_train_rows": len(train), "judgement_eval_rows": len(evals)}
    return RowSplits(train, evals, stats, twice(pairs.train_refs), twice(pairs.eval_refs))


def judge_pairs(model_path: Path, pairs: list[dict[str, Any]], max_new_tokens: int, seed: int, samples: Path | None = None,
                show_thinking: bool = False) -> dict[str, Any]:  # fmt: skip
    """:func:`pair_metrics` of ``model_path`` on ``pairs`` (greedy, an in-process vLLM engine), also per ``pair_kind``."""
    from rollout.batcher import engine_generate_fn
    from rollout.engine import VLLMEngine

    tokenizer = load_tokenizer(model_path)
    engine = VLLMEngine(str(model_path), seed=seed, max_model_len=1024, kv_cache_memory_bytes=256 * 2**20, dtype=inference_dtype())
    items = []
    for p in pairs:
        chosen, rejected = response_text(p["chosen"]), response_text(p["rejected"])
        items += [Item(p["prompt"], chosen, rejected), Item(p["prompt"], rejected, chosen)]
    t0 = time.perf_counter()
    try:
        calls = asyncio.run(judge(items, tokenizer, engine_generate_fn(engine), max_new_tokens, temperature=0.0, seed=seed, show_thinking=show_thinking))
    finally:
        del engine
    metrics: dict[str, Any] = pair_metrics([c.verdict for c in calls[::2]], [c.verdict for c in calls[1::2]])
    kinds = sorted({str(p["pair_kind"]) for p in pairs if p.get("pair_kind")})
    for kind in kinds:  # where the task family says why a pair's rejected answer is worse: the same metrics per kind
        idx = [i for i, p in enumerate(pairs) if p.get("pair_kind") == kind]
        metrics[f"by_kind/{kind}"] = {"pairs": len(idx), **pair_metrics([calls[2 * i].verdict for i in idx], [calls[2 * i + 1].verdict for i in idx])}
    metrics.update(judge_time_s=time.perf_counter() - t0, judge_tokens_per_call=sum(c.prompt_tokens + c.completion_tokens for c in calls) / len(calls))
    if samples is not None:
        with open(samples, "w") as f:
            for p, c in zip([p for p in pairs for _ in range(2)], calls, strict=True):
                f.write(json.dumps({"id": p.get("id"), "pair_kind": p.get("pair_kind"), "judgement": c.text,
                                    "verdict": None if c.verdict is None else [c.verdict.a, c.verdict.b]}) + "\n")  # fmt: skip
    return metrics


def rl_stage(loaded: LoadedRecipe, train_pairs: list[dict[str, Any]]) -> LoadedRecipe | None:
    """The judge's RL recipe (``rm.genrm.rl_recipe``) as this job runs it, or ``None``.

    Loaded before anything trains, so a bad recipe or override costs nothing. Its one
    environment must be ``judge``; its tasks are this job's train pairs in both orders, written to
    ``<run>/rl/judge_tasks.jsonl``, and it starts from ``<run>/sft/final``.
    """
    r = loaded.recipe
    s = r.rm.genrm
    if s.rl_recipe is None:
        return None
    rl_dir = Path(r.output_dir) / "rl"
    tasks = rl_dir / "judge_tasks.jsonl"
    rl_dir.mkdir(parents=True, exist_ok=True)
    tasks.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in judge_tasks(train_pairs, s.show_thinking)))
    overrides = [f"init_from={Path(r.output_dir) / 'sft' / 'final'}", f"output_dir={rl_dir}", f"seed={r.seed}", f"envs.0.data_path={tasks}"]
    rl = load_recipe(s.rl_recipe, [*overrides, *s.rl_overrides], job="rl")
    if [e.name for e in rl.recipe.envs] != ["judge"]:  # type: ignore[attr-defined]
        raise JobError(f"rm.genrm.rl_recipe {s.rl_recipe}: the judge's RL recipe must have one environment, judge "
                       f"(got {[e.name for e in rl.recipe.envs]}); see recipes/tiny-genrm-rl.yaml")  # type: ignore[attr-defined]  # fmt: skip
    return rl


def run(loaded: LoadedRecipe, resume: bool = False) -> int:
    r = loaded.recipe
    s = r.rm
    pairs = load_splits(r.data, "helpsteer" if s.genrm.data_format == "helpsteer" else "preference", r.seed)
    show = s.genrm.show_thinking
    if s.genrm.train_pair_kinds:
        keep = kept_pairs([p.get("pair_kind") for p in pairs.train], s.genrm.train_pair_kinds, r.seed)
        refs = None if pairs.train_refs is None else [pairs.train_refs[i] for i in keep]
        pairs = replace(pairs, train=[pairs.train[i] for i in keep], train_refs=refs, stats={**pairs.stats, "train_rows_kept": len(keep)})
    rows = judgement_splits(pairs, show)
    check_batch_fits(loaded, len(rows.train), rows.stats, JUDGEMENT_ROWS)
    rl = rl_stage(loaded, pairs.train)
    run_dir = Path(r.output_dir)
    sft_dir = run_dir / "sft" if rl else run_dir

    def texts() -> Any:
        from align.tiny.world import world_texts

        yield from iter_texts(rows.train)
        yield from world_texts(seed=r.seed)

    model_path = start_checkpoint(loaded, texts)
    tokenizer = load_tokenizer(model_path)
    data = prepare_data(r.data, "sft", tokenizer, r.learner.max_seq_len, r.seed, rows=rows)
    check_batch_fits(loaded, len(data.train.examples), data.stats, JUDGEMENT_ROWS)
    job = Job(loaded, sft_dir, model_path, tokenizer, data, dict(data.stats))
    stages = "judgement SFT, both orders" + (f", then GRPO ({s.genrm.rl_recipe})" if rl else "")
    console.print(f"[bold]align rm[/] {loaded.name}: genrm ({stages}); " + ", ".join(f"{k} {v}" for k, v in job.stats.items()))
    held_out = pairs.eval[: s.genrm.num_eval_pairs]
    if not held_out:
        console.print("[yellow]no held-out pairs: the judge evaluation is skipped (set data.eval_fraction or data.generated.num_eval)[/]")
    sft_dir.mkdir(parents=True, exist_ok=True)
    if rl:
        start_ray(r, rl.recipe)  # sized once, for the RL stage's engines too
    judged = {"start": judge_pairs(model_path, held_out, s.genrm.max_new_tokens, r.seed, None, show) if held_out and s.genrm.evaluate_start and not resume else None}
    t0 = time.perf_counter()
    group, summary = train_loop(job, sft_objective, supervised_tokens, s.max_steps, s.eval_every_steps, resume)
    final = finish(job, group, {"train loss": ("train", "loss"), "eval loss": ("eval", "loss")}, f"GenRM {loaded.name}", lambda f: write_format(f, show))
    group.shutdown()
    summary["train_wall_s"] = time.perf_counter() - t0
    judged["sft"] = judge_pairs(final, held_out, s.genrm.max_new_tokens, r.seed, sft_dir / "judge_samples.jsonl", show) if held_out else None
    if rl:
        console.rule(f"the judge's RL stage: align rl --recipe {s.genrm.rl_recipe}")
        t0 = time.perf_counter()
        code = driver.run(rl, resume)
        if code != 0:
            return code
        summary["rl_wall_s"] = time.perf_counter() - t0
        final = Path(rl.recipe.output_dir) / "final"
        write_format(final, show)
        judged["rl"] = judge_pairs(final, held_out, s.genrm.max_new_tokens, r.seed, final.parent / "judge_samples.jsonl", show) if held_out else None
        link = run_dir / "final"
        if link.is_dir() and not link.is_symlink():  # an SFT-only run's final/ in the same folder
            shutil.rmtree(link)
        link.unlink(missing_ok=True)
        link.symlink_to(final.relative_to(run_dir), target_is_directory=True)
    summary.update(final_checkpoint=str(final), data=job.stats, held_out_pairs=len(held_out), **{f"judge_{k}": v for k, v in judged.items()})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for label, m in judged.items():
        if m:
            console.print(f"judge ({label}) on {len(held_out)} held-out pairs x 2 orders: " + "  ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)))
            for k, v in m.items():
                if isinstance(v, dict):
                    console.print(f"  {k}: " + "  ".join(f"{name} {x:.3f}" for name, x in v.items()))
    console.print(f"generative reward model: {run_dir / 'final'}")
    return 0
