"""bench/bench_vs_trl.py finds its start checkpoint where align's own commands write one (issue 21,
item 9: it looked only for `runs/tiny-sft/final`, which `make demo` does not write), and the
command it runs when there is none writes it where it looks first."""

import importlib.util
import shlex
import sys
from pathlib import Path

from align.config import load_recipe
from align.config.stages import load_stages

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", ROOT / "bench" / "bench_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_candidates_are_what_align_sft_and_make_demo_write() -> None:
    bench = _bench()
    standalone, demo = (p.relative_to(ROOT) for p in bench.START_CANDIDATES)
    # The command that builds a missing one: `align sft --recipe tiny-sft` writes <output_dir>/final.
    command = [Path(bench.START_COMMAND[0]).name, *bench.START_COMMAND[1:]]
    assert command[:2] == ["align", "sft"], command
    recipe = load_recipe(command[command.index("--recipe") + 1]).recipe
    assert Path(recipe.output_dir) / "final" == standalone, shlex.join(command)
    # `make demo` runs `align pipeline --recipe tiny`: its sft stage's final folder.
    makefile = (ROOT / "Makefile").read_text()
    assert "align pipeline --recipe tiny\n" in makefile
    _, finals = load_stages(load_recipe("tiny").recipe)
    assert finals["sft"] == demo


def test_the_first_candidate_that_exists_is_used(tmp_path, monkeypatch) -> None:
    bench = _bench()
    monkeypatch.chdir(tmp_path)
    assert bench.find_start(tmp_path) is None
    demo = tmp_path / "runs" / "tiny" / "sft" / "final"
    demo.mkdir(parents=True)
    assert bench.find_start(tmp_path) is None  # a folder without config.json is not a checkpoint
    (demo / "config.json").write_text("{}")
    assert bench.find_start(tmp_path) == demo
    standalone = tmp_path / "runs" / "tiny-sft" / "final"
    standalone.mkdir(parents=True)
    (standalone / "config.json").write_text("{}")
    assert bench.find_start(tmp_path) == standalone
