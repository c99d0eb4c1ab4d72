"""A pipeline's stages as it runs them: each stage's recipe with the pipeline's seed, its output
folder under the pipeline's, and ``${stage:NAME}`` replaced by that stage's final checkpoint.

Shared by the pipeline driver and everything that must see the same stage recipes (``align
eval`` on a pipeline recipe, the held-out selector's ``exclude`` set).
"""

from __future__ import annotations

import re
from pathlib import Path

from align.config.loader import LoadedRecipe, load_recipe
from align.config.schema import PipelineRecipe


def stage_overrides(r: PipelineRecipe, index: int, finals: dict[str, Path]) -> list[str]:
    stage = r.stages[index]
    out = [f"output_dir={Path(r.output_dir) / stage.name}", f"seed={r.seed}"]
    for text in stage.overrides:
        out.append(re.sub(r"\$\{stage:([^}]+)\}", lambda m: str(finals[m.group(1)]), text))
    return out


def load_stages(r: PipelineRecipe) -> tuple[list[LoadedRecipe], dict[str, Path]]:
    """Every stage's recipe as the pipeline runs it, and each stage's final checkpoint folder."""
    finals: dict[str, Path] = {}
    stages = []
    for i, stage in enumerate(r.stages):
        finals[stage.name] = Path(r.output_dir) / stage.name / "final"
        stages.append(load_recipe(stage.recipe, stage_overrides(r, i, finals)))
    return stages, finals
