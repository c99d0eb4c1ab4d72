"""Grading free-text completions: public-style cases, agreement with math-verify, false positives.

The cases in data/math_grading_cases.jsonl are modelled on public sets (GSM8K "####" and "The
answer is" solutions, MATH boxed LaTeX, AIME integers, multiple choice, intervals, sets,
percentages, units) plus adversarial ones: answers inside the thinking, several boxes (one answer
when joined by "and" or commas, else the last), an answer stated after the last box or followed
by a check with other numbers, numbers that are pieces of a larger expression. Each row: gold,
completion, expected verdict, kind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path

import pytest

from envs.base import Task
from envs.math import MathEnv, MathParams, grade, is_equivalent
from envs.math.extract import as_latex
from envs.math.verify import plain_number

CASES_PATH = Path(__file__).parent / "data" / "math_grading_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text().splitlines() if line.strip()]


def _env_verdicts(cases: list[dict]) -> list[bool]:
    """The math environment's own verdicts (``step``), as a rollout would get them."""
    env = MathEnv()

    async def run() -> list[bool]:
        tasks = [Task(id=f"case-{i}", env="math", prompt=[], answer=c["gold"]) for i, c in enumerate(cases)]
        results = await asyncio.gather(*(env.step(t, [], c["completion"]) for t, c in zip(tasks, cases)))
        return [bool(r.correct) for r in results]

    return asyncio.run(run())


def test_case_file_is_large_varied_and_adversarial() -> None:
    kinds = {c["kind"] for c in CASES}
    assert len(CASES) >= 60
    assert sum(c["expected"] for c in CASES) >= 25 and sum(not c["expected"] for c in CASES) >= 25
    assert {"gsm8k", "math", "aime", "mc", "pct", "units", "sep", "think", "fragment", "bare", "boxes", "stated"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['kind']}" for i, c in enumerate(CASES)])
def test_expected_verdict(case: dict) -> None:
    verdict = grade(case["completion"], case["gold"])
    assert verdict.equal is case["expected"], verdict.reason
    assert verdict.method not in ("timeout", "error"), verdict


def test_environment_agrees_with_math_verify_except_where_math_verify_is_wrong(capsys) -> None:
    """math-verify's default verdict, ``verify(parse(gold), parse(completion))``, as the reference.

    The gold is boxed first (a bare ``(0,9)`` is no answer to math-verify). Disagreements are
    allowed only where math-verify contradicts the expected verdict (thinking, several boxes,
    fragments, multiple choice without a box).
    """
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    ours = _env_verdicts(CASES)
    reference = [bool(verify(parse(as_latex(c["gold"])), parse(c["completion"]))) for c in CASES]
    agree = sum(o == r for o, r in zip(ours, reference))
    ours_right = sum(o == c["expected"] for o, c in zip(ours, CASES))
    mv_right = sum(r == c["expected"] for r, c in zip(reference, CASES))
    with capsys.disabled():
        print(f"\n{len(CASES)} cases: env==math-verify {agree} ({agree / len(CASES):.1%}), env==expected {ours_right}, math-verify==expected {mv_right}")
    wrongly_different = [c for o, r, c in zip(ours, reference, CASES) if o != r and o != c["expected"]]
    assert not wrongly_different
    assert ours_right == len(CASES)
    assert mv_right >= 0.8 * len(CASES)  # the reference reads the golds: it is no constant False


@pytest.mark.parametrize(
    "gold,completion",
    [
        ("2", "AZYUK2A"),
        ("2", r"$\frac{1+\sqrt5}{2}$"),
        ("(0,9)", "[0,9)"),
        ("(0,9)", r"The answer is $[0,9)$."),
        ("111", "0,111"),
        ("4", r"<think>\boxed{4}</think>"),
        ("4", r"<think>\boxed{4}</think>\boxed{5}"),
        ("3", r"\boxed{3} or maybe \boxed{4}"),
        ("2", "The answer is 2x + 1"),
        ("A", "A total of 5 students came, so the answer is (B)."),
    ],
)
def test_no_fallback_scores_a_number_that_is_not_the_final_answer(gold: str, completion: str) -> None:
    assert grade(completion, gold).equal is False


def test_comma_rule() -> None:
    assert is_equivalent("111", "0,111") is False
    assert plain_number("0,111") is None and plain_number("1,2345") is None
    assert plain_number("12,345,678").value == 12345678
    assert grade("There are 1,234 of them.", "1234").equal is True
    assert grade("The answer is 3,5", "3.5").equal is True  # decimal comma in running text
    assert grade(r"\boxed{3,5}", r"\{3,5\}").equal is True  # a list inside a box
    assert grade(r"\boxed{3,5}", "3.5").equal is False


def test_info_carries_the_extracted_answer_and_a_reason() -> None:
    env = MathEnv()
    task = Task(id="t", env="math", prompt=[], answer=r"\frac{3}{4}")
    good = asyncio.run(env.step(task, [], "<think>1/2+1/4</think>So the answer is $\\frac{3}{4}$."))
    assert good.correct is True and good.info["extracted"] == r"\frac{3}{4}" and "equals" in good.info["reason"]
    none = asyncio.run(env.step(task, [], "<think>it is \\boxed{3/4}"))
    assert none.correct is False and none.info["extracted"] is None and "thinking" in none.info["reason"]
    fragment = asyncio.run(env.step(Task(id="u", env="math", prompt=[], answer="2"), [], "The answer is 2x + 1"))
    assert fragment.correct is False and "larger expression" in fragment.info["reason"]


@pytest.mark.parametrize("level", [1, 2, 3])
def test_tiny_world_completions_stay_on_the_fast_path(level: int) -> None:
    env, rng = MathEnv(MathParams(difficulty=(level,))), random.Random(level)
    for task in env.generate(100, seed=level):
        demo, bad = env.demonstrate(task)[0]["content"], env.corrupt(task, rng)[0]["content"]
        good_v, bad_v = grade(demo, str(task.answer)), grade(bad, str(task.answer))
        assert (good_v.equal, good_v.method) == (True, "fast"), demo
        assert (bad_v.equal, bad_v.method) == (False, "fast"), bad


FREE_TEXT_FORMS = [
    "We add them.\nThe answer is {n}.",
    "So the answer is {n}",
    "Thus, the final answer is {n} apples.",
    "Answer: {n}",
    "She pays 3 * 4 = 12 dollars, then more.\n#### {n}",
    "The answer is ${n}.",
    "{n}",
    "x = {n}",
    "<think>maybe 7</think>The answer is {n}.",
    "The answer is {n} square meters",
    "First 3+4=7 and 7*2=14. So the answer is {n}.",
    "It costs 5 dollars. Answer: {n}",
]
NUMBERS = ["42", "-3", "1,250", "0.5", "25%", "007", "12,345,678", "3.0"]
GOLDS = ["42", "-3", "1250", "0.5", "25", "25\\%", "0.25", "7", "12345678", "3", "\\frac{1}{2}"]


def test_fast_path_agrees_with_math_verify_on_free_text_numbers() -> None:
    """Whatever the in-process fast path decides, math-verify's default reading decides the same."""
    from math_verify import parse, verify

    from envs.math.extract import final_text
    from envs.math.verify import fast_grade

    logging.getLogger("math_verify").setLevel(logging.ERROR)

    decided = equal = 0
    for form in FREE_TEXT_FORMS:
        for n in NUMBERS:
            completion = form.format(n=n)
            for gold in GOLDS:
                fast = fast_grade(completion, gold)
                if fast is None:
                    continue
                decided += 1
                equal += fast.equal
                reference = verify(parse(as_latex(gold)), parse(final_text(completion)))
                assert fast.equal == reference, (completion, gold, fast)
    assert decided >= 0.8 * len(FREE_TEXT_FORMS) * len(NUMBERS) * len(GOLDS)
    assert 50 <= equal <= decided - 50


LATEX_ANSWERS = [
    ("\\frac{3}{4}", ["\\dfrac34", "0.75", "\\frac{4}{3}", "\\frac{6}{8}"]),
    ("\\sqrt{2}", ["\\sqrt 2", "2^{1/2}", "\\sqrt{3}"]),
    ("(-\\infty, 2]", ["(-\\infty,2]", "(-\\infty,2)", "x \\le 2"]),
    ("\\{1,3\\}", ["\\{3, 1\\}", "1, 3", "\\{1\\}"]),
    ("x^2-4", ["(x-2)(x+2)", "x^2+4"]),
    ("-\\frac{10}{9}", ["\\frac{-10}{9}", "\\frac{10}{9}", "-10/9"]),
    ("5\\%", ["5%", "0.05", "50\\%"]),
    ("\\text{(B)}", ["B", "(B)", "C"]),
]
LATEX_FORMS = [
    "The answer is ${x}$.",
    "So we get \\[{x}\\]",
    "Final Answer: The final answer is ${x}$. I hope it is correct.",
    "Thus the solution is ${x}$ as required.",
    "<think>hmm maybe $7$</think>the result is \\({x}\\).",
]


def test_agrees_with_math_verify_on_latex_answers_in_running_text() -> None:
    """Ordinary phrasings, no trap: the environment must read them exactly as math-verify does."""
    from math_verify import parse, verify

    from envs.math.extract import final_text

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verdicts = []
    for gold, predictions in LATEX_ANSWERS:
        for x in predictions:
            for form in LATEX_FORMS:
                completion = form.format(x=x)
                ours = grade(completion, gold)
                reference = verify(parse(as_latex(gold)), parse(final_text(completion)))
                assert ours.equal == reference, (gold, completion, ours.reason)
                verdicts.append(ours.equal)
    assert 30 <= sum(verdicts) <= len(verdicts) - 30
