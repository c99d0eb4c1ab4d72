"""Which RL recipes spawn their actors on Ray's start thread (align/algorithms/rl/prestart.py), and
that an error met while spawning reaches the driver. No Ray here: plan() reads the recipe only, and
the spawn below is refused by RolloutGroup's own check (routed experts asked of a model without
MoE layers) before any actor would start."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from align.algorithms.rl.prestart import Prestart, plan
from align.cluster import ClusterError
from align.config import load_recipe


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    return tmp_path / "ckpt"


def _recipe(tmp_path: Path, *overrides: str):
    return load_recipe("nano3-multienv-tiny", [f"output_dir={tmp_path / 'run'}", *overrides])


def test_an_rl_recipe_from_a_checkpoint_prestarts(tmp_path: Path, checkpoint: Path) -> None:
    assert isinstance(plan(_recipe(tmp_path, f"init_from={checkpoint}")), Prestart)


@pytest.mark.parametrize("extra", [["init_from=null"], ["init_from={missing}"], ["init_from={ckpt}", "grpo.kl_coef=0.1"],
                                   ["init_from={ckpt}", "envs=[{{name: math, data_path: {missing}/tasks.jsonl}}]"]])  # fmt: skip
def test_actors_start_where_they_always_did_when_a_cheap_check_cannot_pass_first(tmp_path: Path, checkpoint: Path, extra: list[str]) -> None:
    overrides = [e.format(missing=tmp_path / "nowhere", ckpt=checkpoint) for e in extra]
    assert plan(_recipe(tmp_path, *overrides)) is None


def test_a_spawn_error_is_raised_by_take_in_the_driver(tmp_path: Path, checkpoint: Path) -> None:
    pre = plan(_recipe(tmp_path, f"init_from={checkpoint}", "rollout.return_routed_experts=true"))
    assert pre is not None
    pre.import_modules()
    pre.spawn_engines()  # the checkpoint's config names no MoE layers: refused before any actor starts
    assert pre.rollout is None and pre.learners is None
    with pytest.raises(ClusterError, match="no MoE layers"):
        pre.take()


def test_the_engines_spawn_needs_no_torch_for_an_explicit_precision() -> None:
    """What the engines' spawn imports (the actor groups, the engine's class, the dtype) leaves torch
    unimported, so the spawn goes the moment Ray is up while the main thread imports torch; "auto"
    asks torch whether a bf16 GPU is there. In a fresh interpreter: this one has torch already."""
    script = (
        "import sys\n"
        "import align.cluster, rollout.engine\n"
        "from align.weights import inference_dtype\n"
        "print(inference_dtype('fp32'), inference_dtype('bf16'), 'torch' in sys.modules)\n"
        "print(inference_dtype('auto') in ('float32', 'bfloat16'), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == ["float32 bfloat16 False", "True True"], out.stderr[-2000:]
