"""``align rm`` with ``rm.objective: genrm``: the policy architecture trained as a generative judge.

Reads top to bottom: the same preference pairs a Bradley-Terry RM reads (``data``) -> two
judgement SFT rows per pair, one per order (:mod:`rewards.genrm.data`) -> the SFT train loop on
the learners -> ``final/`` (an HF causal LM: serve it with the ``genrm`` reward) -> the held-out
judge evaluation: every held-out pair judged greedily in both orders by an in-process vLLM
engine, with the start checkpoint and with the trained one (:func:`rewards.genrm.judge.pair_metrics`:
accuracy per order and both orders, position-bias rate, parse-failure rate).

Limits: SFT only. The RL stage of a GenRM (reward = agreement with the label + format) is not
part of this job yet.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from align.algorithms.common import Job, console, finish, start_checkpoint, supervised_tokens, train_loop
from align.config import LoadedRecipe
from align.data import RowSplits, iter_texts, load_splits, prepare_data
from align.learner.objectives import sft_objective
from align.models import inference_dtype, load_tokenizer
from rewards.genrm.data import judgement_rows, response_text
from rewards.genrm.judge import Item, judge, pair_metrics


def judgement_splits(pairs: RowSplits) -> RowSplits:
    """Judgement rows for both splits; each pair's file position is kept for both of its rows."""

    def twice(refs: Any) -> Any:
        return None if refs is None else [ref for ref in refs for _ in range(2)]

    train, evals = judgement_rows(pairs.train), judgement_rows(pairs.eval)
    stats = {**pairs.stats, "judgement_train_rows": len(train), "judgement_eval_rows": len(evals)}
    return RowSplits(train, evals, stats, twice(pairs.train_refs), twice(pairs.eval_refs))


def judge_pairs(model_path: Path, pairs: list[dict[str, Any]], max_new_tokens: int, seed: int, samples: Path | None = None) -> dict[str, float]:
    """:func:`pair_metrics` of ``model_path`` on ``pairs`` (greedy, an in-process vLLM engine)."""
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
        calls = asyncio.run(judge(items, tokenizer, engine_generate_fn(engine), max_new_tokens, temperature=0.0, seed=seed))
    finally:
        del engine
    metrics = pair_metrics([c.verdict for c in calls[::2]], [c.verdict for c in calls[1::2]])
    metrics.update(judge_time_s=time.perf_counter() - t0, judge_tokens_per_call=sum(c.prompt_tokens + c.completion_tokens for c in calls) / len(calls))
    if samples is not None:
        with open(samples, "w") as f:
            for p, c in zip([p for p in pairs for _ in range(2)], calls, strict=True):
                f.write(json.dumps({"id": p.get("id"), "pair_kind": p.get("pair_kind"), "judgement": c.text,
                                    "verdict": None if c.verdict is None else [c.verdict.a, c.verdict.b]}) + "\n")  # fmt: skip
    return metrics


def run(loaded: LoadedRecipe, resume: bool = False) -> int:
    r = loaded.recipe
    s = r.rm
    pairs = load_splits(r.data, "preference", r.seed)
    rows = judgement_splits(pairs)

    def texts() -> Any:
        from align.tiny.world import world_texts

        yield from iter_texts(rows.train)
        yield from world_texts(seed=r.seed)

    model_path = start_checkpoint(loaded, texts)
    tokenizer = load_tokenizer(model_path)
    data = prepare_data(r.data, "sft", tokenizer, r.learner.max_seq_len, r.seed, rows=rows)
    job = Job(loaded, Path(r.output_dir), model_path, tokenizer, data, dict(data.stats))
    console.print(f"[bold]align rm[/] {loaded.name}: genrm (judgement SFT, both orders); " + ", ".join(f"{k} {v}" for k, v in job.stats.items()))
    held_out = pairs.eval[: s.genrm.num_eval_pairs]
    if not held_out:
        console.print("[yellow]no held-out pairs: the judge evaluation is skipped (set data.eval_fraction or data.generated.num_eval)[/]")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    before = judge_pairs(model_path, held_out, s.genrm.max_new_tokens, r.seed) if held_out and s.genrm.evaluate_start and not resume else None
    t0 = time.perf_counter()
    group, summary = train_loop(job, sft_objective, supervised_tokens, s.max_steps, s.eval_every_steps, resume)
    final = finish(job, group, {"train loss": ("train", "loss"), "eval loss": ("eval", "loss")}, f"GenRM {loaded.name}")
    group.shutdown()
    summary["train_wall_s"] = time.perf_counter() - t0
    after = judge_pairs(final, held_out, s.genrm.max_new_tokens, r.seed, job.run_dir / "judge_samples.jsonl") if held_out else None
    summary.update(final_checkpoint=str(final), data=job.stats, judge_start=before, judge_final=after, held_out_pairs=len(held_out))
    (job.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for label, m in (("start", before), ("final", after)):
        if m:
            console.print(f"judge ({label}) on {len(held_out)} held-out pairs x 2 orders: " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
    console.print(f"generative reward model: {final}")
    return 0
