"""``align envs list|sample|test``: see what is installed, what it generates, and whether it works.

Handlers take the parsed ``argparse`` namespace from :mod:`align.cli` and return an exit code:
0 on success, 1 when a self-check fails, 2 for an unknown or unusable environment name.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from align.plugins import PluginError
from envs.base import Environment, NoTaskSourceError, SelfCheck, SelfChecking, StepResult, safe_step, task_source
from envs.registry import available_envs, make_env

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _env_or_none(name: str) -> Environment | None:
    try:
        return make_env(name)
    except PluginError as e:
        err.print("[bold red]error:[/]", escape(str(e)))
        return None


def cmd_list(args: argparse.Namespace) -> int:
    table = Table(title="environments", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("source")
    table.add_column("package")
    table.add_column("description", overflow="fold")
    for name, info in available_envs().items():
        desc = escape(info.description) if info.ok else f"[red]unavailable: {escape(str(info.error))}[/]"
        table.add_row(name, escape(info.source), escape(info.package), desc)
    out.print(table)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    env = _env_or_none(args.name)
    if env is None:
        return EXIT_BAD_INPUT
    try:
        source = task_source(env)
    except NoTaskSourceError as e:
        err.print("[bold red]error:[/]", escape(str(e)))
        return EXIT_BAD_INPUT
    for task in source.generate(args.n, args.seed):
        out.rule(f"[bold]{escape(task.id)}[/]")
        for message in env.reset(task):
            out.print(f"[cyan]{message['role']}:[/]", escape(str(message["content"])))
        out.print("[green]gold:[/]", escape(json.dumps(task.answer)))
        demo = source.demonstrate(task)
        out.print("[magenta]demonstration:[/]", escape(json.dumps(demo[-1]["content"])))
    return 0


async def play(env: Environment, check: SelfCheck) -> StepResult:
    """Play a self-check's actions in order (through ``safe_step``) and return the last result."""
    history = env.reset(check.task)
    result = StepResult(reward=0.0, done=True, correct=False, info={"error": "self-check has no actions"})
    for action in check.actions:
        result = await safe_step(env, check.task, history, action)
        history = [*history, {"role": "assistant", "content": action}, *result.observation]
        if result.done:
            break
    return result


async def _run_checks(env: SelfChecking) -> list[tuple[SelfCheck, StepResult]]:
    checks = env.self_checks()
    results = await asyncio.gather(*(play(env, c) for c in checks))
    return list(zip(checks, results))


def cmd_test(args: argparse.Namespace) -> int:
    env = _env_or_none(args.name)
    if env is None:
        return EXIT_BAD_INPUT
    if not isinstance(env, SelfChecking):
        err.print("[bold red]error:[/]", escape(f"{args.name} has no self_checks(); add one that returns known-good and known-bad examples (envs.base.SelfCheck)"))
        return EXIT_FAILED
    try:
        outcomes = asyncio.run(_run_checks(env))
    except Exception as e:  # noqa: BLE001 - self_checks() itself is plugin code
        err.print("[bold red]error:[/]", escape(f"{args.name}.self_checks() raised {type(e).__name__}: {e}"))
        return EXIT_FAILED
    table = Table(title=f"self-checks: {args.name}", title_justify="left")
    for col in ("", "check", "task", "expected", "got", "reward"):
        table.add_column(col)
    failures = 0
    for check, result in outcomes:
        passed = result.correct == check.expect_correct and "error" not in result.info
        failures += not passed
        got = "error: " + result.info["error"] if "error" in result.info else ("correct" if result.correct else "wrong")
        table.add_row(
            "[green]PASS[/]" if passed else "[red]FAIL[/]",
            escape(check.note),
            escape(check.task.id),
            "correct" if check.expect_correct else "wrong",
            escape(got),
            f"{result.reward:.2f}",
        )
    out.print(table)
    if not outcomes:
        err.print("[bold red]error:[/]", escape(f"{args.name} has no self-checks; add known-good and known-bad examples"))
        return EXIT_FAILED
    summary = f"{len(outcomes) - failures}/{len(outcomes)} self-checks passed"
    out.print(f"[bold {'green' if not failures else 'red'}]{summary}[/]")
    return EXIT_FAILED if failures else 0


__all__ = ["cmd_list", "cmd_sample", "cmd_test", "play"]
