"""Math-Verify's own test cases as a case file for ``bench_math_grading.py``: public cases no test of ours holds.

Usage: ``.venv/bin/python bench/math_verify_suite_cases.py CHECKOUT OUT.jsonl``, where CHECKOUT is
a clone of https://github.com/huggingface/Math-Verify (measured at commit 5d148cf). Every
``@pytest.mark.parametrize`` over ``gold``, ``pred`` (and ``expected``) in its ``tests/*.py`` becomes
one row: ``gold``, ``completion`` (the prediction), ``expected`` (or ``result``) and ``kind`` (``file:test``). Those
expected verdicts were written for the test's own extraction settings (boxed first, expressions
only, strict or not), so math-verify's *default* verdict misses a few of them. Tuples that are not
literals are skipped and named on stderr. Nothing is copied into this repository.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path


def cases(checkout: Path) -> list[dict]:
    out = []
    for path in sorted((checkout / "tests").glob("test_*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for dec in fn.decorator_list:
                if not (isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize")):
                    continue
                names = ast.literal_eval(dec.args[0])
                names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
                if not {"gold", "pred"} <= set(names):
                    continue
                try:
                    values = ast.literal_eval(dec.args[1])
                except ValueError:
                    print(f"skipped {path.name}:{fn.name} (not literals)", file=sys.stderr)
                    continue
                for v in values:
                    row = dict(zip(names, v))
                    out.append({"kind": f"{path.stem}:{fn.name}", "gold": row["gold"], "completion": row["pred"], "expected": bool(row.get("expected", row.get("result", 1)))})
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    rows = cases(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} cases -> {sys.argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
