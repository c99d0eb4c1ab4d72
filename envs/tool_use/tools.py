"""The tools of the ``tool_use`` environment and the parsing of calls to them.

A call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the OpenAI
function-calling shape; ``arguments`` may also be a JSON string of an object). Parsing never
raises: a malformed call becomes a :class:`ToolCall` with ``error`` set, which the environment
turns into an error observation and counts against the well-formed score.

- ``calculator(expression)``: arithmetic through a whitelist AST evaluator (never ``eval``):
  numbers, ``+ - * / // % **``, parentheses, ``abs round min max sqrt``. Exponents and
  intermediate results are bounded so ``9**9**9`` is an error, not a hung worker.
- ``lookup(key)``: a per-task key-value table (``task.meta["table"]``), case-insensitive keys.
- ``python(code)``: runs in the code sandbox (envs/code/sandbox.py); the observation is stdout,
  or the error's last line.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from align.reasoning import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

#: name -> the arguments it takes (all strings).
TOOL_ARGS: dict[str, tuple[str, ...]] = {"calculator": ("expression",), "lookup": ("key",), "python": ("code",)}

_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. ``error`` is None for a well-formed call to an available tool."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def has_tool_call(text: str) -> bool:
    return TOOL_CALL_OPEN in text


def parse_tool_calls(text: str, available: tuple[str, ...]) -> list[ToolCall]:
    """Every call in an assistant turn, in order; an unclosed ``<tool_call>`` is one malformed call."""
    calls = [_parse_one(body, available) for body in _CALL_RE.findall(text)]
    if text.count(TOOL_CALL_OPEN) > len(calls):
        calls.append(ToolCall(None, error=f"unclosed {TOOL_CALL_OPEN}: end the call with {TOOL_CALL_CLOSE}"))
    return calls


def _parse_one(body: str, available: tuple[str, ...]) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(None, error=f"bad JSON in tool call: {e.msg}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, error='a tool call is {"name": ..., "arguments": {...}}')
    name = obj["name"]
    if name not in available:
        return ToolCall(name, error=f"unknown tool {name!r}; available: {', '.join(available)}")
    args = obj.get("arguments", {})
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = None
    expected = TOOL_ARGS[name]
    signature = f"{name} takes {{{', '.join(repr(a) + ': str' for a in expected)}}}"
    if not isinstance(args, dict) or set(args) != set(expected) or not all(isinstance(args[a], str) for a in expected):
        return ToolCall(name, error=f"wrong arguments: {signature}")
    return ToolCall(name, dict(args))


def format_call(name: str, arguments: dict[str, str]) -> str:
    """The canonical text of a call, as demonstrations write it."""
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{TOOL_CALL_CLOSE}"


# ------------------------------------------------------------------------------------------
# calculator


class CalculatorError(ValueError):
    pass


_MAX_ABS = 10**30
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt}


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic safely.

    >>> calculate("37*41"), calculate("7/2"), calculate("2**10 - sqrt(16)")
    (1517, 3.5, 1020.0)
    """
    if len(expression) > 200:
        raise CalculatorError("expression too long (200 characters at most)")
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expression!r}") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise CalculatorError("exponent or base too large")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and not node.keywords
        and 1 <= len(node.args) <= 4
    ):
        try:
            return _bounded(_FUNCS[node.func.id](*(_eval(a) for a in node.args)))
        except (ValueError, TypeError) as e:
            raise CalculatorError(f"{node.func.id}: {e}") from None
    raise CalculatorError(f"unsupported syntax: {ast.unparse(node)!r} (numbers, + - * / // % **, abs round min max sqrt)")


def _bounded(x: Any) -> int | float:
    if isinstance(x, complex) or not isinstance(x, (int, float)):
        raise CalculatorError("result is not a real number")
    if (isinstance(x, float) and not math.isfinite(x)) or abs(x) > _MAX_ABS:
        raise CalculatorError("number too large")
    return x


def format_number(x: int | float) -> str:
    """Integers as integers (``6/3`` shows ``2``), other floats with 10 significant digits."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if isinstance(x, float):
        return f"{x:.10g}"
    return str(x)


def run_calculator(expression: str) -> str:
    try:
        return format_number(calculate(expression))
    except CalculatorError as e:
        return f"error: {e}"


def run_lookup(table: dict[str, str], key: str) -> str:
    wanted = key.strip().casefold()
    for k, v in table.items():
        if k.casefold() == wanted:
            return str(v)
    return f"not found: {key}"


# ------------------------------------------------------------------------------------------
# final answers

_BOXED = "\\boxed{"


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces allowed), or None.

    >>> extract_boxed("so \\\\boxed{1517}"), extract_boxed("\\\\boxed{\\\\frac{1}{2}}"), extract_boxed("1517")
    ('1517', '\\\\frac{1}{2}', None)
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?\d+/\d+$")


def answers_match(prediction: str, gold: str) -> bool:
    """Numbers compare as numbers (``1517.0`` = ``1517``, ``1,517`` = ``1517``, ``3/2`` = ``1.5``);
    anything else compares case-insensitively with spaces collapsed. Deliberately small: the
    tiny world's answers are integers, short decimals and names.

    >>> answers_match("1,517", "1517"), answers_match(" paris", "Paris"), answers_match("3", "4")
    (True, True, False)
    """

    def norm(s: str) -> str:
        return " ".join(s.strip().strip("$").split()).casefold()

    p, g = norm(prediction), norm(gold)
    pn, gn = p.replace(",", ""), g.replace(",", "")
    if _NUMBER.match(pn) and _NUMBER.match(gn):
        a, b = Fraction(pn), Fraction(gn)
        return a == b or abs(a - b) <= Fraction(1, 10**9) * max(Fraction(1), abs(b))
    return p == g
