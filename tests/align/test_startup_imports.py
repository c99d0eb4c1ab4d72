"""What the actors' processes import at start-up: each costs CPU on a 2-core machine, on the path to an RL job's first step.

Each check imports one module in a fresh interpreter (``sys.modules`` of this test session
already holds everything) and looks at what came with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imported_with(statement: str) -> set[str]:
    """The modules of align, rollout, envs and rewards that ``statement`` imports in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('align', 'rollout', 'envs', 'rewards'))))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_engine_actor_imports_no_episode_code_and_no_recipe_loader() -> None:
    """A vLLM engine actor unpickles ``rollout.engine.VLLMEngine``; the rollout package's episode side
    (``rollout.collect``, which pulls in the recipe schema and loader) stays out of it."""
    mods = imported_with("import rollout.engine")
    assert "rollout.engine" in mods
    assert not mods & {"rollout.collect", "rollout.episode", "rollout.batcher", "align.config", "align.config.loader"}, sorted(mods)


def test_the_rollout_package_still_gives_its_names() -> None:
    mods = imported_with("import rollout\nfrom rollout import GenRequest, run_episode\nassert rollout.Batcher.__module__ == 'rollout.batcher'")
    assert {"rollout.types", "rollout.episode", "rollout.batcher"} <= mods
    assert "rollout.engine" not in mods  # asked for by name only


def test_the_schema_comes_without_the_recipe_loader() -> None:
    """A learner unpickles its ``LearnerConfig``: the schema alone, not the YAML loader and the recipe checks."""
    mods = imported_with("import align.config.schema")
    assert "align.config.schema" in mods
    assert not mods & {"align.config.loader", "align.config.checks", "align.config.recipes"}, sorted(mods)


def test_align_config_still_gives_its_names() -> None:
    mods = imported_with("from align.config import LoadedRecipe, RecipeError, dump_recipe, list_recipes, load_recipe\nimport align.config as c\nassert c.load_recipe is load_recipe")
    assert {"align.config.loader", "align.config.recipes"} <= mods


def test_the_workers_weight_transports_come_without_the_drivers_side() -> None:
    """Engines and learners import ``align.weight_sync.transports`` at weight-sync set-up; the driver's
    ``WeightSync`` (``align.cluster``, the recipe schema) stays out of them."""
    mods = imported_with("import align.weight_sync.transports")
    assert not mods & {"align.weight_sync.sync", "align.cluster", "align.config.schema"}, sorted(mods)
    assert "align.weight_sync.sync" in imported_with("from align.weight_sync import WeightSync")
