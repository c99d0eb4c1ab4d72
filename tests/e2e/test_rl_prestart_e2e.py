"""`align rl` from a checkpoint, through the early spawn (align/algorithms/rl/prestart.py): the
engines and learners start on Ray's start thread while the driver imports, and the job runs.

The other Ray e2e tests start from ``init_from=null`` (the job first builds ``<run>/init``), where
the actors start late as before; this one gives ``init_from``, as ``bench_vs_trl`` and every
stage after SFT do.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from align.config import load_recipe
from align.init_checkpoint import prepare_initial_checkpoint

from tests.e2e.test_rl_e2e import QUICK, ROOT

# QUICK without its init_from=null: the job starts from the fixture's checkpoint.
FROM_CHECKPOINT = [a for a in QUICK if a != "init_from=null"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = load_recipe("nano3-multienv-tiny", QUICK).recipe
    return prepare_initial_checkpoint(r.model, r.tokenizer, tmp_path_factory.mktemp("ckpt") / "init", seed=r.seed, say=lambda _: None)


def test_rl_from_a_checkpoint_spawns_its_actors_early_and_trains(tmp_path: Path, checkpoint: Path) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "align.cli", "rl", "--recipe", "nano3-multienv-tiny", *FROM_CHECKPOINT, f"init_from={checkpoint}",
            "grpo.max_steps=2", "grpo.eval_every_steps=100", "checkpoint.every_steps=100", f"output_dir={run_dir}"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # The start-up line says "engines S from T s" only when the engines began before the driver's
    # imports ended (align/startup.py), i.e. on Ray's start thread.
    line = next(l for l in proc.stdout.splitlines() if l.startswith("start-up"))
    spawned = re.search(r"engines [\d.]+ from ([\d.]+) s", line)
    imports = re.search(r"imports ([\d.]+)", line)
    assert spawned and imports, line
    assert float(spawned.group(1)) < float(imports.group(1)), line
    train = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert [r["step"] for r in train] == [1, 2]
    assert (run_dir / "final" / "config.json").is_file()
