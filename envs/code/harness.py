"""Turning a completion and a task's tests into programs for the sandbox, and reading results.

Three kinds of tests, named in ``task.meta["tests"]["kind"]``:

- ``check`` (HumanEval): ``{"test": "def check(candidate): ...", "entry_point": "name"}``; one test.
- ``asserts`` (MBPP, the tiny world): ``{"asserts": ["assert f(1) == 4", ...], "setup": ""}``;
  each assert is one test, all run in one sandbox execution, each in its own ``try``.
- ``io`` (competitive programming): ``{"cases": [{"stdin": "...", "stdout": "..."}, ...]}``;
  each case is one execution of the program, compared on stdout (trailing spaces ignored).

For ``check`` and ``asserts`` the harness reads a random nonce from stdin *before* the solution
runs and reports each test as ``<nonce> <index> <0|1>`` on a private copy of stdout; the
solution's own prints go to stderr. So ``sys.exit(0)``, ``os._exit(0)`` or printing "PASS" do
not pass tests. Limit: the solution runs in the same interpreter, so a program written to dig
the nonce out of the harness's frames could still forge results; the nonce stops accidents and
casual reward hacks, not a determined adversary.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from align.reasoning import split_thinking

_BLOCK_RE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_OPEN_BLOCK_RE = re.compile(r"```([^\n`]*)\n(.*)$", re.DOTALL)
_PY_TAGS = {"", "python", "py", "python3"}


def extract_code(completion: str) -> str | None:
    """The program in a completion: the last ```python block of the answer (after the think
    block), else an unclosed trailing block, else the whole answer. None when there is nothing
    (empty answer, or the thinking never closed).

    >>> extract_code("<think>add</think>```python\\ndef f(x):\\n    return x+3\\n```")
    'def f(x):\\n    return x+3\\n'
    >>> extract_code("def f(x): return x")
    'def f(x): return x'
    >>> extract_code("<think>still thinking") is None
    True
    """
    _, answer = split_thinking(completion)
    if not answer.strip():
        return None
    blocks = [(lang.strip().lower(), body) for lang, body in _BLOCK_RE.findall(answer)]
    python_blocks = [body for lang, body in blocks if lang in _PY_TAGS]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    m = _OPEN_BLOCK_RE.search(answer)
    if m and m.group(1).strip().lower() in _PY_TAGS:
        return m.group(2)
    return answer


@dataclass(frozen=True)
class Run:
    """One sandbox execution to make: the program, its stdin, and how to read the result."""

    program: str
    stdin: str
    nonce: str | None  # harness runs: results are nonce lines on stdout
    expected_stdout: str | None = None  # io runs: compare stdout
    n_tests: int = 1


def _harness(code: str, body: str, nonce_needed: bool = True) -> str:
    return (
        "import os as _os, sys as _sys\n"
        "_nonce = _sys.stdin.readline().strip()\n"
        "_out = _os.fdopen(_os.dup(1), 'w')\n"
        "_os.dup2(2, 1)\n"
        "def _emit(i, ok):\n"
        "    _out.write(f'{_nonce} {i} {int(ok)}\\n'); _out.flush()\n"
        "_g = {'__name__': '__main__', '__builtins__': __builtins__}\n"
        f"exec(compile({code!r}, 'solution.py', 'exec'), _g)\n"
        f"{body}"
    )


def build_runs(code: str, tests: dict[str, Any]) -> list[Run]:
    """The executions that score ``code`` against ``tests`` (see the module docstring)."""
    kind = tests.get("kind")
    if kind == "check":
        nonce = secrets.token_hex(16)
        body = (
            f"exec(compile({tests['test']!r}, 'test.py', 'exec'), _g)\n"
            f"_g['check'](_g[{tests['entry_point']!r}])\n"
            "_emit(0, True)\n"
        )
        return [Run(_harness(code, body), nonce + "\n", nonce)]
    if kind == "asserts":
        asserts = list(tests["asserts"])
        nonce = secrets.token_hex(16)
        setup = tests.get("setup") or ""
        body = (
            f"exec(compile({setup!r}, 'setup.py', 'exec'), _g)\n"
            f"for _i, _src in enumerate({asserts!r}):\n"
            "    try:\n"
            "        exec(compile(_src, f'test_{_i}.py', 'exec'), _g)\n"
            "        _emit(_i, True)\n"
            "    except BaseException as _e:\n"
            "        print(f'test {_i} failed: {type(_e).__name__}: {_e}', file=_sys.stderr)\n"
            "        _emit(_i, False)\n"
        )
        return [Run(_harness(code, body), nonce + "\n", nonce, n_tests=len(asserts))]
    if kind == "io":
        return [Run(code, str(c.get("stdin", "")), None, expected_stdout=str(c["stdout"])) for c in tests["cases"]]
    raise ValueError(f"unknown test kind {kind!r}: expected 'check', 'asserts' or 'io' in task.meta['tests']")


def _normalize_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def count_passed(run: Run, status: str, stdout: str) -> int:
    """How many of ``run``'s tests passed, given the sandbox's status and stdout."""
    if run.nonce is None:
        return int(status == "ok" and _normalize_output(stdout) == _normalize_output(run.expected_stdout or ""))
    passed = set()
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == run.nonce and parts[2] == "1":
            passed.add(parts[1])
    return min(len(passed), run.n_tests)


_FAILED_RE = re.compile(r"^test (\d+) failed: (.*)$", re.MULTILINE)


def failure_reason(tests: dict[str, Any], status: str, stderr: str) -> str:
    """The first failing test in words: the assert line and its error, else the error's last line.

    >>> failure_reason({"kind": "asserts", "asserts": ["assert f(1) == 2"]}, "ok", "test 0 failed: AssertionError: ")
    'assert f(1) == 2 failed (AssertionError)'
    """
    m = _FAILED_RE.search(stderr)
    if m and tests.get("kind") == "asserts" and int(m.group(1)) < len(tests.get("asserts", [])):
        return f"{tests['asserts'][int(m.group(1))]} failed ({m.group(2).strip().rstrip(':')})"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if last:
        return f"{status}: {last}"
    if status != "ok":
        return status
    if tests.get("kind") == "io":
        return "wrong output on a stdin/stdout case"
    return "the tests did not report (the program exited before they ran)"


def corrupt_program(code: str, entry_point: str) -> str:
    """``code`` with ``entry_point`` wrapped to return a wrong value of the same kind.

    Used for preference pairs and as the known-bad twin of a known-good program in tests: the
    original logic runs, then its result is nudged (numbers +1, strings and sequences extended,
    booleans flipped, None becomes 0), so the tests see real but wrong outputs.
    """
    return (
        f"{code}\n\n"
        f"_align_orig = {entry_point}\n"
        "def _align_nudge(r):\n"
        "    if isinstance(r, bool):\n"
        "        return not r\n"
        "    if isinstance(r, (int, float)):\n"
        "        return r + 1.5 if isinstance(r, float) else r + 1\n"
        "    if isinstance(r, str):\n"
        "        return r + 'x'\n"
        "    if isinstance(r, list):\n"
        "        return r + [None]\n"
        "    if isinstance(r, tuple):\n"
        "        return r + (None,)\n"
        "    if r is None:\n"
        "        return 0\n"
        "    return None\n"
        f"def {entry_point}(*args, **kwargs):\n"
        "    return _align_nudge(_align_orig(*args, **kwargs))\n"
    )
