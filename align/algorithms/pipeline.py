"""The post-training pipeline: stages in order, each from the one before, then a report.

Resumable stage by stage: a stage whose final checkpoint exists is skipped; an interrupted
stage resumes from its own last checkpoint. Every policy stage is then evaluated on the same
held-out tasks, and the report compares each stage with the one before.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from align.algorithms.common import console, start_ray
from align.algorithms.jobs import STAGE_JOBS
from align.config import LoadedRecipe
from align.config.schema import PipelineRecipe
from align.config.stages import load_stages


def run(loaded: LoadedRecipe, resume: bool = False) -> int:
    r: PipelineRecipe = loaded.recipe  # type: ignore[assignment]
    run_dir = Path(r.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings_path = run_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    # Validate every stage's recipe before running any, so a typo in the last stage costs nothing.
    stages, finals = load_stages(r)
    for stage, stage_loaded in zip(r.stages, stages, strict=True):
        if (finals[stage.name] / "config.json").is_file():
            console.print(f"[bold]stage {stage.name}[/]: done before ({finals[stage.name]}), skipped")
            continue
        console.rule(f"stage {stage.name}: align {stage_loaded.recipe.job} --recipe {stage.recipe}")
        start_ray(*(s.recipe for s in stages))  # sized once, for the largest stage
        t0 = time.perf_counter()
        code = STAGE_JOBS[stage_loaded.recipe.job](stage_loaded, True)
        if code != 0:
            console.print(f"[red]stage {stage.name} failed with exit code {code}; rerun the pipeline to resume it[/]")
            return code
        timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - t0
        timings_path.write_text(json.dumps(timings, indent=2))

    from align.report import evaluate_stages, write_report

    t0 = time.perf_counter()
    summaries = evaluate_stages(r, {s.name: finals[s.name] for s in r.stages if s.evaluate}, stages)
    timings["eval"] = time.perf_counter() - t0
    timings_path.write_text(json.dumps(timings, indent=2))
    report = write_report(run_dir, r, summaries, timings, {s.name: run_dir / s.name for s in r.stages})
    console.print(f"report: {report}")
    return 0
