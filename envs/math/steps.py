"""The first false arithmetic step of a worked trace, for step-level credit (``info["blame"]``).

A wrong answer is blamed on the first step written as ``a op b = r`` (``op`` one of ``+ - * /``,
optionally ``a op b op c = r`` as in a column with its carry, ``4+3+1=8``) whose ``r`` is false.
The span is that ``r``'s characters in the action text: the tokens that made the mistake. GRPO's
``grpo.credit: blamed_step`` trains a wrong sample's negative advantage from them to its end,
not on the correct steps before them.

Only whole-number steps are read; a trace that states none, or none false, is not blamed (the
whole sample keeps its advantage).

>>> first_false_step("47+38: 7+8=15, 4+3+1=7. 75")
(21, 22)
>>> first_false_step("5x=59-14=45, x=45/5=9") is None
True
>>> first_false_step("2+3*4=14, 1.5+2=3, (2+3)*4=21") is None  # not whole-number steps of their own
True
"""

from __future__ import annotations

import re
from fractions import Fraction

# Not inside a longer expression (2+3*4=14 is true; 3*4=14 must not be read out of it) nor a decimal.
STEP = re.compile(r"(?<![\d+\-*/^(])(?<!\d\.)(\d+)([+\-*/])(\d+)(?:([+\-])(\d+))?=(\d+)(?![\d+\-*/^)]|\.\d)")


def _value(a: int, op: str, b: int) -> Fraction | None:
    if op == "/":
        return Fraction(a, b) if b else None
    return Fraction({"+": a + b, "-": a - b, "*": a * b}[op])


def first_false_step(text: str) -> tuple[int, int] | None:
    """(start, end) of the result of the first false step in ``text``, else None."""
    for m in STEP.finditer(text):
        a, op, b, op2, c, r = m.groups()
        value = _value(int(a), op, int(b))
        if value is not None and op2:
            value = value + int(c) if op2 == "+" else value - int(c)
        if value is not None and value != int(r):
            return m.start(6), m.end(6)
    return None
