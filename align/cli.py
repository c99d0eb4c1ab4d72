"""The ``align`` command line. ``main(argv) -> int`` is callable from tests.

Argument parsing lives here; each command's work lives in its package and is imported only
when that command runs, so ``align --help`` and recipe errors stay fast.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from align.algorithms.jobs import STAGE_JOBS, JobFn
from align.config import LoadedRecipe, dump_recipe, list_recipes, load_recipe
from align.errors import AlignError, RunStopped
from align.io_checks import check_output_dir
from align.learner.ds_build import check_lock, use_align_cache
from align.quiet import configure as configure_logs
from align.quiet import kernel_note

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3  # a guard stopped a running job (align/guards.py)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _run_pipeline(loaded: LoadedRecipe, resume: bool) -> int:
    from align.algorithms import pipeline

    return pipeline.run(loaded, resume=resume)


# `align <job> --recipe NAME`: the job's function (each imports its driver when called).
JOBS: dict[str, JobFn] = {**STAGE_JOBS, "pipeline": _run_pipeline}


def _eval(args: argparse.Namespace) -> int:
    from align.evaluate import cmd_eval

    return cmd_eval(args)


def _envs(args: argparse.Namespace) -> int:
    from envs import cli, data_cli

    if getattr(args, "data", None):  # dataset checks and scoring (--data) live in envs.data_cli
        return {"test": data_cli.cmd_test, "score": data_cli.cmd_score}[args.action](args)
    return {"list": cli.cmd_list, "sample": cli.cmd_sample, "test": cli.cmd_test}[args.action](args)


def _sandbox(args: argparse.Namespace) -> int:
    from envs.sandbox.cli import cmd_exec

    return {"exec": cmd_exec}[args.action](args)


def _export(args: argparse.Namespace) -> int:
    from align.export import cmd_export

    return cmd_export(args)


# The other commands, likewise.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"eval": _eval, "envs": _envs, "sandbox": _sandbox, "export": _export}


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="align", description="Post-training and RL alignment for LLMs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = sub.add_parser("recipes", help="list shipped recipes or show one fully resolved")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    rec_sub.add_parser("list", help="list shipped recipes")
    show = rec_sub.add_parser("show", help="print a recipe with every default filled in")
    show.add_argument("name", help="recipe name or path to a .yaml file")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-4")

    for job in JOBS:
        j = sub.add_parser(job, help=f"run a {job} job from a recipe")
        j.add_argument("--recipe", required=True, help="recipe name or path to a .yaml file")
        j.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-4")
        j.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
        j.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else embedded)")
        j.add_argument("--verbose", action="store_true", help="show every library's log lines (vLLM, transformers, warnings)")
        if job == "rl":
            j.add_argument("--in-process", action="store_true",
                           help="run the learner and the vLLM engine in this process, without Ray (one of each, CPU): a faster start on a small machine")  # fmt: skip

    ev = sub.add_parser("eval", help="evaluate a model: accuracy per environment, toggle and budget control")
    ev.add_argument("--model", required=True, help="HF checkpoint folder")
    ev.add_argument("--recipe", required=True)
    ev.add_argument("overrides", nargs="*")
    ev.add_argument("--verbose", action="store_true", help="show every library's log lines (vLLM, transformers, warnings)")

    exp = sub.add_parser("export", help="copy a checkpoint's Hugging Face folder out (for transformers, vLLM, TRL)")
    exp.add_argument("checkpoint", help="a checkpoint folder (runs/x/checkpoints/step_000050) or a run folder (its latest)")
    exp.add_argument("out", help="a new folder to write")

    envs = sub.add_parser("envs", help="environment plugins: list, sample tasks, run self-checks")
    env_sub = envs.add_subparsers(dest="action", required=True)
    env_sub.add_parser("list", help="name, source package and description of every environment")
    sample = env_sub.add_parser("sample", help="print generated tasks")
    sample.add_argument("name")
    sample.add_argument("-n", type=int, default=5)
    sample.add_argument("--seed", type=int, default=0)
    test = env_sub.add_parser("test", help="run an environment's self-checks, or check a dataset's references (--data)")
    test.add_argument("name")
    score = env_sub.add_parser("score", help="verdict and reason for each row of a completions file, as JSONL and a table")
    score.add_argument("name")
    score.add_argument("--completions", required=True, help='JSONL: {"id": ..., "completion": "..."} per row')
    score.add_argument("--output", default="-", help="JSONL verdicts to this file (default: stdout)")
    for p_ in (test, score):
        p_.add_argument("--data", required=p_ is score, help="a .jsonl/.parquet file, a save_to_disk folder or a hub id")
        p_.add_argument("--columns", nargs="+", metavar="FIELD=COLUMN", help="map the environment's fields to the data's columns")
        p_.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (counted) instead of stopping at the first")

    sb = sub.add_parser("sandbox", help="run untrusted Python in the code sandbox")
    sb_sub = sb.add_subparsers(dest="action", required=True)
    ex = sb_sub.add_parser("exec", help="run FILE.py and print one JSON result")
    ex.add_argument("file")
    ex.add_argument("--timeout-s", type=float, default=10.0)
    ex.add_argument("--memory-mb", type=int, default=512)
    ex.add_argument("--allow-rlimits-only", action="store_true", help="run without bwrap if it cannot start (weaker)")
    return p


def _run_job(args: argparse.Namespace) -> int:
    loaded = load_recipe(args.recipe, args.overrides, job=args.command)
    check_output_dir(Path(loaded.recipe.output_dir))  # before Ray, learners or engines start
    cluster = getattr(loaded.recipe, "cluster", None)
    if cluster is None or not cluster.gpus_per_learner:
        check_lock()  # a stale DeepSpeed build lock would hang CPU learners forever: refuse it now
    if args.ray_address:
        os.environ["RAY_ADDRESS"] = args.ray_address
    args.output_dir = loaded.recipe.output_dir  # for the resume hint after Ctrl-C
    model = getattr(loaded.recipe, "model", None)  # a pipeline's stages are tiny hybrids
    if (model is None or model.arch == "nemotron_h") and (note := kernel_note()):
        err.print(f"[dim]{escape(note)}[/]")
    if getattr(args, "in_process", False):
        from align.algorithms.jobs import in_process_refusal, run_rl_in_process

        if why := in_process_refusal(loaded, args.ray_address):
            raise AlignError(why)
        return run_rl_in_process(loaded, args.resume)
    return int(JOBS[args.command](loaded, args.resume))


def _interrupted(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """After Ctrl-C: one line saying how to go on, not a ``KeyboardInterrupt`` traceback."""
    if args.command not in JOBS:
        err.print("[bold yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    from align.runlog import Checkpoints

    out = getattr(args, "output_dir", None)
    latest = Checkpoints(Path(out), keep_last=1).latest() if out else None
    where = f"from its last checkpoint ({latest})" if latest else "(from its last checkpoint, if one was written)"
    cmd = shlex.join(["align", *(a for a in argv if a != "--resume"), "--resume"])
    err.print(f"[bold yellow]interrupted.[/] To continue the run {escape(where)}, run:\n  {escape(cmd)}")
    return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    use_align_cache()  # one DeepSpeed op build per user, however align is started (align.learner.ds_build)
    configure_logs(getattr(args, "verbose", False))  # before torch, transformers or vLLM is imported
    try:
        if args.command == "recipes":
            if args.action == "list":
                for name, path in list_recipes().items():
                    loaded = load_recipe(str(path))
                    print(f"{name:28s} {loaded.recipe.job:9s} {loaded.recipe.description}")
                return 0
            loaded = load_recipe(args.name, args.overrides)
            print(f"# recipe: {loaded.name} (from {', '.join(str(f) for f in loaded.files)})")
            print(dump_recipe(loaded.recipe), end="")
            return 0
        if args.command in JOBS:
            return _run_job(args)
        return int(COMMANDS[args.command](args))
    except AlignError as e:
        err.print("[bold red]error:[/]", escape(str(e)))
        return EXIT_BAD_INPUT
    except RunStopped as e:
        err.print("[bold red]run stopped:[/]", escape(str(e)))
        return EXIT_STOPPED
    except KeyboardInterrupt:
        return _interrupted(args, argv)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
