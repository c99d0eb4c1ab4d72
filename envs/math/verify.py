"""Grading a math completion against a gold answer: final-answer extraction and equivalence.

:func:`grade` takes a whole completion: the answer is looked for only outside the thinking,
the last box wins, and otherwise math-verify's extraction reads the free text (the rules are in
:mod:`envs.math.extract`). :func:`compare` / :func:`is_equivalent` take an answer that is
already extracted. Both decide in one of two tiers:

* a fast path, in-process and exact, for plain numbers: integers, decimals, thousands
  separators (the comma rule in :mod:`envs.math.extract`: ``1,000`` yes, ``0,111`` never),
  fractions (``3/4``, ``\\frac{3}{4}``), percentages, ``x = 5`` and a trailing unit word.
  Numbers are compared as :class:`fractions.Fraction` after rounding to 6 decimals (math-
  verify's default ``float_rounding``), so ``0.333333`` matches ``1/3`` but ``0.33`` does not; a
  gold percentage ``p%`` matches ``p`` and ``p/100`` as in math-verify. A completion takes this
  path when its last box, or its whole final text, is a plain number and so is the gold.
* everything else (free text, expressions, intervals, sets, equations, LaTeX units, multiple
  choice) goes to math-verify and sympy in a small pool of worker processes. math-verify's own
  timeouts use ``signal.alarm`` and only work on the main thread, so they are switched off and
  the pool enforces the per-answer timeout instead: a worker that runs over is killed and
  replaced. That works from any thread (the rollout layer awaits ``step`` from an event loop,
  possibly inside a Ray actor) and really stops a runaway simplification, which a thread could not.

Limits: a timed-out comparison counts as not equivalent. A worker (a child Python process)
costs a process start and a math-verify import (about a second) the first time, and again
after a timeout kills it. If no worker can be started, comparisons run in the calling thread
without a timeout, and a warning says so once.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from envs.math.extract import answer_source, as_latex, boxes, final_text, mv_grade, said_number, unbold

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
_WORKER_START_TIMEOUT_S = 120.0
_WORKER_MEMORY_MB = 2048

# ---------------------------------------------------------------------------- fast path

_LATEX_NOISE_RE = re.compile(r"\\[,!;: ]|\\(?:left|right)|\\displaystyle|\\?\$")
_TEXT_UNIT_RE = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[A-Za-z ]*\}\s*$")
_ASSIGN_RE = re.compile(r"^[A-Za-z]\s*=\s*(.+)$")
_PERCENT_RE = re.compile(r"\s*(?:\\%|%|\s+percent)$")
_UNIT_WORD_RE = re.compile(r"(?<=\d)\s+[A-Za-z]+\.?$|(?<=\d)(?:cm|mm|km|kg|mg|ml|m|g|s|h|min|sec|hrs?|ft|in|lbs?)$")
_DEC = r"[-+]?(?:(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d{1,3})?"
# Longer strings go to the worker pool, where a timeout bounds the cost of huge numbers.
_MAX_PLAIN_CHARS = 200
_DEC_RE = re.compile(rf"^(?:{_DEC})$")
_SLASH_RE = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")
_FRAC_RE = re.compile(r"^([-+]?)\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}$")


@dataclass(frozen=True)
class PlainNumber:
    value: Fraction
    percent: bool


def plain_number(text: str) -> PlainNumber | None:
    r"""``text`` as an exact number, or None when it is anything more than a plain number.

    >>> plain_number(r"\$1{,}250.50").value == Fraction("1250.5")
    True
    >>> plain_number(r"-\frac{3}{4}"), plain_number("12 cm").value, plain_number("x^2") is None
    (PlainNumber(value=Fraction(-3, 4), percent=False), Fraction(12, 1), True)
    """
    if len(text) > _MAX_PLAIN_CHARS:
        return None
    s = _LATEX_NOISE_RE.sub("", text).replace("{,}", ",").strip()
    boxed = boxes(s)
    if boxed and boxed[0][0] == 0 and boxed[0][1] == len(s):
        s = boxed[0][2]
    m = _ASSIGN_RE.match(s)
    if m:
        s = m.group(1).strip()
    s = _TEXT_UNIT_RE.sub("", s).strip()
    percent = False
    m = _PERCENT_RE.search(s)
    if m:
        percent, s = True, s[: m.start()].strip()
    else:
        s = _UNIT_WORD_RE.sub("", s).strip()
    if _DEC_RE.match(s):
        return PlainNumber(Fraction(s.replace(",", "")), percent)
    m = _SLASH_RE.match(s) or _FRAC_RE.match(s)
    if m:
        groups = m.groups()
        sign = -1 if groups[0].startswith("-") else 1
        num, den = (int(groups[0].lstrip("+-") or 0), int(groups[1])) if len(groups) == 2 else (int(groups[1]), int(groups[2]))
        if den == 0:
            return None
        return PlainNumber(sign * Fraction(num, den), percent)
    return None


def _close(a: Fraction, b: Fraction) -> bool:
    return a == b or round(a, 6) == round(b, 6)


def _numbers_equal(pred: PlainNumber, gold: PlainNumber) -> bool:
    if pred.percent == gold.percent:
        return _close(pred.value, gold.value)
    pct, other = (gold, pred) if gold.percent else (pred, gold)
    return _close(other.value, pct.value) or _close(other.value, pct.value / 100)


# ---------------------------------------------------------------------------- math-verify workers


def serve_stdio() -> None:
    """Worker loop: one JSON request per stdin line, one JSON verdict per stdout line.

    The address-space cap turns a runaway expansion into a ``MemoryError`` (an ``error``
    verdict) instead of a machine that swaps.
    """
    import resource

    cap = _WORKER_MEMORY_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401 - imported before "ready", so timeouts exclude it

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            equal, extracted, note = mv_grade(req["text"], req["gold"])
            reply = {"equal": equal, "extracted": extracted, "note": note, "error": None}
        except Exception as e:  # noqa: BLE001 - sympy raises a zoo of exception types
            reply = {"equal": False, "extracted": None, "note": None, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


class _Worker:
    """One ``python -c serve_stdio()`` child process.

    A plain subprocess rather than multiprocessing: it does not re-import the caller's
    ``__main__`` (spawn/forkserver do), inherits no threads or locks (fork would), and can be
    started from daemonic processes.
    """

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from envs.math.verify import serve_stdio; serve_stdio()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        if self._read(_WORKER_START_TIMEOUT_S) is None:
            self.kill()
            raise RuntimeError("math-verify worker did not start")

    def _read(self, timeout_s: float) -> dict | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def ask(self, text: str, gold: str | None, timeout_s: float) -> dict | None:
        """The worker's reply, or None when it ran over ``timeout_s`` or died."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"text": text, "gold": gold}) + "\n")
            self.proc.stdin.flush()
            return self._read(timeout_s)
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class VerifierPool:
    """Up to ``max_workers`` math-verify processes shared by all threads of this process."""

    def __init__(self, max_workers: int = 2) -> None:
        self.max_workers = max_workers
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self._broken = False

    def _take(self) -> _Worker | None:
        """An idle worker, a new one while under ``max_workers``, else wait; None: run in-thread."""
        while True:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                if self._broken:
                    return None
                start = self._started < self.max_workers
                if start:
                    self._started += 1
            if start:
                try:
                    return _Worker()
                except Exception as e:  # noqa: BLE001 - no fork allowed, no python binary, ...
                    with self._lock:
                        self._started -= 1
                        if not self._broken:
                            log.warning("math-verify worker processes unavailable (%s): comparing in-thread without a timeout", e)
                        self._broken = True
                    return None
            try:
                return self._idle.get(timeout=0.05)
            except queue.Empty:
                continue

    def grade(self, text: str, gold: str | None, timeout_s: float) -> Verdict:
        """math-verify's verdict on a final text (see :func:`envs.math.extract.mv_grade`)."""
        worker = self._take()
        if worker is None:
            try:
                equal, extracted, note = mv_grade(text, gold)
                return Verdict(equal, extracted, "math_verify", note=note)
            except Exception as e:  # noqa: BLE001
                return Verdict(False, None, "error", f"{type(e).__name__}: {e}")
        answer = worker.ask(text, gold, timeout_s)
        if answer is None:
            exit_code = worker.proc.poll()
            worker.kill()
            with self._lock:
                self._started -= 1
            if exit_code is not None:
                return Verdict(False, None, "error", f"math-verify worker died (exit code {exit_code})")
            return Verdict(False, None, "timeout", f"math-verify ran over {timeout_s:g}s")
        self._idle.put(worker)
        error = answer["error"]
        return Verdict(bool(answer["equal"]), answer["extracted"], "error" if error else "math_verify", error, answer["note"])

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break
        with self._lock:
            self._started = 0


_POOL = VerifierPool()
atexit.register(_POOL.close)


@dataclass(frozen=True)
class Verdict:
    """Whether an answer equals the gold one, the answer that was used, and the tier that decided."""

    equal: bool
    extracted: str | None
    method: Literal["fast", "math_verify", "timeout", "error", "no_answer"]
    error: str | None = None
    note: str | None = None  # why an extracted answer was refused

    @property
    def reason(self) -> str:
        """One line for a person debugging a reward."""
        if self.method == "no_answer":
            return "no final answer outside the thinking"
        if self.method in ("timeout", "error"):
            return f"{self.method}: {self.error}"
        if self.extracted is None:
            return "math-verify found no answer in the final text"
        if self.note:
            return f"answer {self.extracted!r} refused: {self.note}"
        return f"answer {self.extracted!r} {'equals' if self.equal else 'differs from'} the gold answer ({self.method})"


def fast_compare(prediction: str | None, gold: str) -> Verdict | None:
    """The verdict when it needs no math-verify (no answer, or two plain numbers), else None."""
    if prediction is None or not prediction.strip():
        return Verdict(False, None, "no_answer")
    p, g = plain_number(prediction), plain_number(str(gold))
    if p is not None and g is not None:
        return Verdict(_numbers_equal(p, g), prediction.strip(), "fast")
    return None


def compare(prediction: str | None, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Equivalence of an extracted answer and the gold answer, with the tier that decided.

    Blocks for up to ``timeout_s`` (plus a worker start on first use) on the math-verify tier;
    async callers should run it in a thread after trying :func:`fast_compare`.
    """
    return fast_compare(prediction, gold) or _POOL.grade(as_latex(str(prediction)), str(gold), timeout_s)


def fast_grade(completion: str, gold: str) -> Verdict | None:
    """:func:`grade` when the fast path can decide it (no answer, plain numbers), else None."""
    text = final_text(completion)
    if not text:
        return Verdict(False, None, "no_answer")
    box, text = answer_source(text)
    if box is not None:
        return fast_compare(box, gold)
    said = said_number(text)  # before plain_number(text): cheaper, and they never both match
    return fast_compare(unbold(text) if said is None else said, gold)


def grade(completion: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    r"""Whether a whole completion's final answer equals ``gold``, and the answer it used.

    Blocks like :func:`compare`; async callers try :func:`fast_grade` first.

    >>> grade(r"<think>so \boxed{4}</think>Hence \boxed{5}.", "5").equal, grade("<think>it is 5", "5").method
    (True, 'no_answer')
    """
    return fast_grade(completion, gold) or _POOL.grade(final_text(completion), str(gold), timeout_s)


def extract_answer(completion: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    r"""The final answer of a completion (as :func:`grade` reads it), or None when there is none.

    >>> extract_answer(r"<think>\boxed{1}</think>first \boxed{2} then \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_answer("AZYUK2A"), extract_answer("The answer is 2x + 1")
    (None, None)
    """
    text = final_text(completion)
    if not text:
        return None
    box, text = answer_source(text)
    if box is not None:
        return box
    if plain_number(text) is not None:
        return text
    said = said_number(text)
    if said is not None:
        return said
    verdict = _POOL.grade(text, None, timeout_s)
    return None if verdict.note else verdict.extracted
def is_equivalent(prediction: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    r"""Whether the answer ``prediction`` means the same as ``gold`` (not symmetric: gold is the reference).

    >>> is_equivalent("68", "68"), is_equivalent("0.5", r"\frac{1}{2}"), is_equivalent("x = 5", "5")
    (True, True, True)
    >>> is_equivalent("67", "68"), is_equivalent("0.33", "1/3")
    (False, False)
    """
    return compare(prediction, gold, timeout_s).equal
