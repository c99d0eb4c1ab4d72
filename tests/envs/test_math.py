"""The math environment: answer extraction, equivalence (fast path and math-verify), timeouts, the generator."""

from __future__ import annotations

import asyncio
import doctest
import json
import random
import threading
import time

import pytest

from align.plugins import PluginParamsError
from envs.base import Task
from envs.cli import play
from envs.math import misses
from envs.math import MathEnv, MathParams, compare, extract_answer, is_equivalent, load_examples
from envs.math.verify import plain_number
from envs.registry import make_env

# (prediction, gold, equivalent). Plain numbers take the fast path; the rest go to math-verify.
EQUIVALENCE = [
    # integers and signs
    ("68", "68", True),
    ("67", "68", False),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("+5", "5", True),
    ("0", "0", True),
    ("0", "-0", True),
    ("007", "7", True),
    ("70", "7", False),
    ("1000000", "1000001", False),
    ("123456789", "123456789", True),
    # thousands separators
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("12,345,678", "12345678", True),
    ("1,000", "100", False),
    # decimals
    ("0.5", "0.5", True),
    ("0.50", "0.5", True),
    (".5", "0.5", True),
    ("2.0", "2", True),
    ("2.01", "2", False),
    ("3.14", "3.14159", False),
    ("-0.25", "-0.25", True),
    ("0.25", "-0.25", False),
    ("1e3", "1000", True),
    # fractions, both notations, against decimals
    ("1/2", "0.5", True),
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\tfrac{3}{4}", "3/4", True),
    ("6/8", "3/4", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("\\frac{3}{4}", "-0.75", False),
    ("2/3", "0.666667", True),
    ("0.333333", "1/3", True),
    ("0.33", "1/3", False),
    ("1/3", "1/4", False),
    ("\\frac{10}{2}", "5", True),
    ("\\frac{7}{2}", "3", False),
    ("\\frac{1}{0}", "1", False),
    # percentages (a gold p% accepts p and p/100, as math-verify does)
    ("25%", "25%", True),
    ("25\\%", "25%", True),
    ("0.25", "25\\%", True),
    ("25", "25\\%", True),
    ("25 percent", "25%", True),
    ("2.5", "25\\%", False),
    ("75\\%", "\\frac{3}{4}", True),
    # assignments, units and wrappers
    ("x = 5", "5", True),
    ("x=5", "5", True),
    ("y = 6", "5", False),
    ("12 cm", "12", True),
    ("12cm", "12", True),
    ("12 \\text{ cm}", "12", True),
    ("12 \\mbox{apples}", "12", True),
    ("13 cm", "12", False),
    ("\\$1,250.50", "1250.5", True),
    ("$42$", "42", True),
    ("\\boxed{42}", "42", True),
    ("\\boxed{41}", "42", False),
    ("90^\\circ", "90", True),
    ("\\left( 3 \\right)", "3", True),
    ("5 dollars", "5", True),
    ("  8  ", "8", True),
    # expressions
    ("2^3", "8", True),
    ("2^3", "9", False),
    ("\\sqrt{16}", "4", True),
    ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", True),
    ("\\sqrt{2}", "1.41", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    ("2x+1", "1+2x", True),
    ("2x+1", "2x-1", False),
    ("\\pi", "3.14159265358979", True),
    ("\\pi/2", "\\frac{\\pi}{2}", True),
    ("\\pi", "3", False),
    ("3+4i", "4i+3", True),
    ("\\frac{a}{b}", "a/b", True),
    ("a/b", "b/a", False),
    ("\\log(8)", "3\\log(2)", True),
    ("e^{0}", "1", True),
    # intervals
    ("(1,2]", "(1, 2]", True),
    ("[1,2]", "(1,2)", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    ("[0,\\infty)", "[0, \\infty)", True),
    ("(-2,2)", "(-2,2)", True),
    ("(-2,3)", "(-2,2)", False),
    ("x \\in [1,2]", "[1,2]", True),
    # sets and tuples
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("\\{2,3\\}", "\\{3,2\\}", True),
    ("\\{2,4\\}", "\\{2,3\\}", False),
    ("(1,2)", "(1,2)", True),
    # equations
    ("y=2x+1", "y=1+2x", True),
    ("y=2x+1", "y=2x+2", False),
    ("x=2", "2", True),
    ("x=3", "2", False),
    # near misses
    ("12", "21", False),
    ("-68", "68", False),
    ("0.05", "0.5", False),
    ("5/2", "2/5", False),
    ("25%", "0.5", False),
    ("x = 4", "5", False),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("x^3", "x^2", False),
    ("\\{1\\}", "\\{1,2\\}", False),
    ("(1,2]", "[1,2]", False),
    ("y=x", "y=2x", False),
    ("2\\pi", "\\pi", False),
    # not an answer
    ("", "5", False),
    ("   ", "5", False),
    ("banana", "5", False),
    ("\\frac{1}{2}+1", "\\frac{1}{2}", False),
    ("(-2,2)+1", "(-2,2)", False),
]


@pytest.mark.parametrize("module", ["envs.math.verify", "envs.math.extract", "envs.math.steps"])
def test_docstring_examples(module: str) -> None:
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_equivalence_table_has_enough_cases() -> None:
    assert len(EQUIVALENCE) >= 100
    assert sum(expected for *_, expected in EQUIVALENCE) >= 40
    assert sum(not expected for *_, expected in EQUIVALENCE) >= 40


@pytest.mark.parametrize("prediction,gold,expected", EQUIVALENCE)
def test_equivalence(prediction: str, gold: str, expected: bool) -> None:
    verdict = compare(prediction, gold)
    assert verdict.equal is expected, verdict
    assert verdict.method != "timeout"


@pytest.mark.parametrize(
    "prediction,gold",
    [("68", "68"), ("1/2", "0.5"), ("x = 5", "5"), ("25", "25\\%"), ("12 cm", "12"), ("-\\frac{3}{4}", "-0.75")],
)
def test_plain_numbers_never_reach_math_verify(prediction: str, gold: str) -> None:
    assert compare(prediction, gold).method == "fast"


@pytest.mark.parametrize("text", ["x^2", "1,2", "(1,2)", "\\{1\\}", "2^3", "5x", "a=b=3", "", "1/0", "\\boxed{1}+\\boxed{2}"])
def test_plain_number_refuses_anything_more(text: str) -> None:
    assert plain_number(text) is None


EXTRACTION = [
    ("\\boxed{68}", "68"),
    ("so the sum is \\boxed{68}.", "68"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\fbox{7}", "7"),
    ("\\boxed 9", "9"),
    ("\\boxed{ 12 }", "12"),
    ("The answer is 12.", "12"),
    ("The answer is 12.5.", "12.5"),
    ("the answer is: $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("Answer: x = 5", "5"),
    ("I think 3, no wait, 4", "4"),
    ("we have 1,250 apples", "1250"),  # math-verify's normal form
    ("the result is -7 degrees", "-7"),
    ("3/4 of it", "3/4"),
    ("maybe 50%", "50"),  # the value is 50/100; the string drops the sign
    ("\\boxed{unclosed", None),
    ("truncated \\boxed{12", None),  # an unclosed box is no answer
    ("nothing here", None),
    ("", None),
    ("<think>\\boxed{4}</think>so \\boxed{5}", "5"),
    ("<think>it is 4</think>", None),
    ("AZYUK2A", None),
    ("The answer is 2x + 1", None),
    ("$\\frac{1+\\sqrt5}{2}$", "\\frac{1+\\sqrt{5}}{2}"),
    ("The answer is 0,111", "0.111"),  # a comma that is no thousands separator is a decimal comma
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_unclosed_box_does_not_swallow_the_rest() -> None:
    assert extract_answer("\\boxed{3 and \\boxed{4}") == "4"


def test_timeout_is_enforced_off_the_main_thread_and_the_pool_recovers() -> None:
    result: dict[str, object] = {}

    def work() -> None:
        compare("x+1", "1+x")  # a started worker, so the timing below is the timeout alone
        start = time.perf_counter()
        result["slow"] = compare("10000000!", "3", timeout_s=0.5)  # sympy runs for minutes on this
        result["elapsed"] = time.perf_counter() - start
        result["after"] = compare("x^2+2x+1", "(x+1)^2", timeout_s=30)

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert not t.is_alive()
    assert result["slow"].method == "timeout" and result["slow"].equal is False
    assert result["elapsed"] < 3
    assert result["after"].equal is True and result["after"].method == "math_verify"


def test_concurrent_math_verify_calls_from_threads() -> None:
    cases = [(f"\\frac{{{i}}}{{2}}+x", f"x+{i}/2", True) for i in range(6)] + [(f"x+{i}", f"x+{i + 1}", False) for i in range(6)]
    results: list[tuple[bool, bool]] = []

    def check(pred: str, gold: str, expected: bool) -> None:
        results.append((is_equivalent(pred, gold), expected))

    threads = [threading.Thread(target=check, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(cases)
    assert all(got == expected for got, expected in results)


def test_fast_path_rate_for_plain_numbers() -> None:
    n = 5000
    start = time.perf_counter()
    for i in range(n):
        is_equivalent(str(i), str(i + i % 2))
    rate = n / (time.perf_counter() - start)
    assert rate >= 1000, f"{rate:.0f} checks/s"


# ------------------------------------------------------------------ the environment


def _step(env: MathEnv, task: Task, action: str):
    return asyncio.run(env.step(task, env.reset(task), action))


def test_step_scores_single_turn_with_extracted_answer() -> None:
    env = MathEnv()
    task = Task(id="t", env="math", prompt=[{"role": "user", "content": "What is 23+45?"}], answer="68")
    good = _step(env, task, "<think>23+45: 3+5=8, 2+4=6. 68</think>\\boxed{68}")
    assert (good.done, good.reward, good.correct, good.info["extracted"]) == (True, 1.0, True, "68")
    bad = _step(env, task, "<think>3+5=8</think>\\boxed{69}")
    assert (bad.done, bad.reward, bad.correct, bad.info["extracted"]) == (True, 0.0, False, "69")


def test_a_wrong_answer_is_blamed_on_its_first_false_step() -> None:
    env = MathEnv()
    task = Task(id="t", env="math", prompt=[{"role": "user", "content": "What is 74+11-71?"}], answer="14")
    action = "<think>74+11: 4+1=5, 7+1=9. 95; 95-71: 5-1=4, 9-7=2. 24</think>\\boxed{24}"
    start, end = _step(env, task, action).info["blame"]
    assert action[start - 4 : end] == "7+1=9" and action[start:end] == "9"  # not 9-7=2, which only carries it on
    assert "blame" not in _step(env, task, "<think>74+11: 4+1=5, 7+1=8. 85; 85-71: 5-1=4, 8-7=1. 14</think>\\boxed{14}").info
    assert "blame" not in _step(env, task, "<think>85-71 is 14</think>\\boxed{13}").info  # wrong, but no false step to blame
    right_by_luck = "<think>74+11: 4+1=6. 14</think>\\boxed{14}"
    assert "blame" not in _step(env, task, right_by_luck).info  # only wrong answers are blamed


def test_misses_counts_wrong_answers_with_a_false_step(tmp_path, capsys) -> None:
    rows = [
        {"env": "math", "mode": "think", "correct": False, "completion": "<think>47+38: 7+8=15, 4+3+1=7. 75</think>\\boxed{75}"},
        {"env": "math", "mode": "think", "correct": False, "completion": "<think>47+38 is 84</think>\\boxed{84}"},  # no step
        {"env": "math", "mode": "think", "correct": True, "completion": "<think>47+38: 7+8=15, 4+3+1=8. 85</think>\\boxed{85}"},
        {"env": "math", "mode": "no_think", "correct": False, "completion": "3+4=9"},  # another mode: not read
        {"env": "code", "mode": "think", "correct": False, "completion": "<think>1+1=3</think>"},  # another env
    ]
    path = tmp_path / "eval_sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert misses.main([str(path)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # 3 answers, 2 wrong, 1 of them with a false step; 3 of 4 steps true (4+3+1=7 is false)
    assert line == f"| {path} | 3 | 2 | 1 | 0 | 3/4 = 0.750 |"
    step_after_think = {"env": "math", "mode": "think", "correct": False, "completion": "<think>2+2=4</think>2+2=5"}
    assert misses.summarize([step_after_think])["wrong_false_step"] == 0  # only the think block is read


def test_misses_names_an_unreadable_file_and_exits_2(tmp_path, capsys) -> None:
    assert misses.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: cannot read it" in capsys.readouterr().err
    bad = tmp_path / "report.md"
    bad.write_text("# report\n")
    assert misses.main([str(bad)]) == 2
    assert "report.md: line 1 is not JSON" in capsys.readouterr().err


def test_answer_inside_the_think_block_does_not_count() -> None:
    env = MathEnv()
    task = Task(id="t", env="math", prompt=[{"role": "user", "content": "What is 2+2?"}], answer="4")
    assert _step(env, task, "<think>\\boxed{4}</think>\\boxed{5}").correct is False
    unclosed = _step(env, task, "<think>it is \\boxed{4}")
    assert unclosed.correct is False and unclosed.info["extracted"] is None
    assert _step(env, task, "<think></think>\\boxed{4}").correct is True
    assert _step(env, task, "4").correct is True


def test_generate_is_deterministic_and_varied() -> None:
    env = MathEnv()
    a, b = env.generate(50, seed=7), env.generate(50, seed=7)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.prompt for t in a] != [t.prompt for t in env.generate(50, seed=8)]
    assert len({t.id for t in a}) == 50
    assert len({t.prompt[0]["content"] for t in a}) > 40
    assert {t.meta["level"] for t in a} == {t.meta["grade"] for t in a} == {1, 2, 3, 4}


def test_answers_are_right() -> None:
    tasks = {t.prompt[0]["content"]: t.answer for t in MathEnv().generate(400, seed=1)}
    for prompt, answer in tasks.items():
        body = prompt.removeprefix("What is ").removesuffix("?")
        if prompt.startswith("Solve"):
            lhs, c = prompt.removeprefix("Solve ").removesuffix(" for x.").split("=")
            a, b = lhs.split("x+")
            assert int(a) * int(answer) + int(b) == int(c), prompt
        else:
            assert eval(body) == int(answer), prompt  # noqa: S307 - our own arithmetic strings


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_demonstrations_are_correct_and_corruptions_wrong(level: int) -> None:
    env = MathEnv(MathParams(difficulty=(level,)))
    rng = random.Random(0)
    for task in env.generate(150, seed=level):
        demo, bad = env.demonstrate(task), env.corrupt(task, rng)
        assert len(demo) == len(bad) == 1 and demo[0]["role"] == bad[0]["role"] == "assistant"
        assert demo[0]["content"].startswith("<think>") and "</think>\\boxed{" in demo[0]["content"]
        assert bad[0]["content"].startswith("<think>") and "</think>\\boxed{" in bad[0]["content"]
        assert _step(env, task, demo[0]["content"]).correct is True, demo
        assert _step(env, task, bad[0]["content"]).correct is False, bad


def test_worked_traces_match_the_brief() -> None:
    env = MathEnv()
    task = Task(id="t", env="math", prompt=[], answer="68", meta={"level": 2, "op": "+", "a": 23, "b": 45})
    assert env.demonstrate(task)[0]["content"] == "<think>23+45: 3+5=8, 2+4=6. 68</think>\\boxed{68}"
    carry = {"level": 2, "op": "+", "a": 47, "b": 38}
    assert env.demonstrate(Task("t", "math", [], "85", carry))[0]["content"] == "<think>47+38: 7+8=15, 4+3+1=8. 85</think>\\boxed{85}"
    borrow = {"level": 2, "op": "-", "a": 52, "b": 27}
    assert env.demonstrate(Task("t", "math", [], "25", borrow))[0]["content"] == "<think>52-27: 12-7=5, 4-2=2. 25</think>\\boxed{25}"
    mul = {"level": 2, "op": "*", "a": 34, "b": 7}
    assert env.demonstrate(Task("t", "math", [], "238", mul))[0]["content"] == "<think>34*7: 4*7=28, 3*7+2=23. 238</think>\\boxed{238}"
    lin = {"level": 3, "op": "linear", "a": 3, "b": 4, "c": 19}
    assert env.demonstrate(Task("t", "math", [], "5", lin))[0]["content"] == "<think>3x=19-4=15, x=15/3=5</think>\\boxed{5}"
    two = {"level": 4, "op": "two_step", "a": 47, "b": 38, "op2": "-", "c": 19}
    expected = "<think>47+38: 7+8=15, 4+3+1=8. 85; 85-19: 15-9=6, 7-1=6. 66</think>\\boxed{66}"
    assert env.demonstrate(Task("t", "math", [], "66", two))[0]["content"] == expected


def test_prompts_and_traces_fit_the_tiny_policy() -> None:
    from align.tiny.tokenizer import train_tokenizer

    env = MathEnv()
    tasks = env.generate(600, seed=3)
    demos = [env.demonstrate(t)[0]["content"] for t in tasks]
    tok = train_tokenizer([t.prompt[0]["content"] for t in tasks] + demos, vocab_size=512)
    for task, demo in zip(tasks, demos):
        assert len(tok.encode(task.prompt[0]["content"], add_special_tokens=False)) < 25, task.prompt
        trace = demo.split("<think>", 1)[1].split("</think>", 1)[0]
        # levels 1-3 under 40 tokens; the two-step level 4 fits the ladder's 64 with its tags
        assert len(tok.encode(trace, add_special_tokens=False)) < (40 if task.meta["level"] < 4 else 62), trace


def test_params_are_validated_by_the_registry() -> None:
    env = make_env("math", {"difficulty": [3]})
    assert {t.meta["level"] for t in env.generate(20, seed=0)} == {3}
    with pytest.raises(PluginParamsError, match=r"environment 'math'[\s\S]*difficulty"):
        make_env("math", {"difficulty": [5]})
    with pytest.raises(PluginParamsError, match=r"difficulti: unknown field \(did you mean 'difficulty'\?\)"):
        make_env("math", {"difficulti": [1]})
    with pytest.raises(PluginParamsError, match="verify_timeout_s"):
        make_env("math", {"verify_timeout_s": 0})


def test_example_data_loads_and_self_checks_pass() -> None:
    examples = load_examples()
    assert len(examples) >= 5 and all(t.env == "math" for t in examples)
    env = MathEnv()
    checks = env.self_checks()
    assert any(c.expect_correct for c in checks) and any(not c.expect_correct for c in checks)

    async def run_all():
        return await asyncio.gather(*(play(env, c) for c in checks))

    results = asyncio.run(run_all())
    failed = [(c.note, r.info) for c, r in zip(checks, results) if r.correct is not c.expect_correct]
    assert not failed
