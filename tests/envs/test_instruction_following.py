"""The instruction-following environment: each constraint kind, the reward, the generator."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from align.plugins import PluginParamsError
from envs.base import Task
from envs.cli import play
from envs.instruction_following import KINDS, InstructionFollowingEnv, InstructionFollowingParams, load_examples, parse_constraints
from envs.instruction_following.generator import TEMPLATES
from envs.registry import make_env

# (constraint, text, met)
CASES = [
    ({"kind": "word_count", "min_words": 3, "max_words": 3}, "one two three", True),
    ({"kind": "word_count", "min_words": 3, "max_words": 3}, "one two", False),
    ({"kind": "word_count", "min_words": 3}, "one, two, three, four!", True),
    ({"kind": "word_count", "max_words": 2}, "don't stop now", False),
    ({"kind": "word_count", "max_words": 2}, "well-known fact", True),
    ({"kind": "include_keywords", "keywords": ["cat", "Dog"]}, "A dog and a CAT.", True),
    ({"kind": "include_keywords", "keywords": ["cat"]}, "concatenate", False),
    ({"kind": "forbidden_words", "words": ["apple"]}, "I like pears.", True),
    ({"kind": "forbidden_words", "words": ["apple"]}, "An Apple a day", False),
    ({"kind": "forbidden_words", "words": ["apple"]}, "pineapple", True),
    ({"kind": "json_format"}, '{"a": 1}', True),
    ({"kind": "json_format"}, "[1, 2]", True),
    ({"kind": "json_format"}, "a: 1", False),
    ({"kind": "json_format", "required": {"name": "bob"}}, '```json\n{"name": "bob", "x": 2}\n```', True),
    ({"kind": "json_format", "required": {"name": "bob"}}, '{"name": "Bob"}', False),
    ({"kind": "json_format", "required": {"age": 3}}, '{"age": "3"}', False),
    ({"kind": "json_format", "required": {"age": 3}}, "[3]", False),
    ({"kind": "bullet_count", "count": 2}, "- a\n- b", True),
    ({"kind": "bullet_count", "count": 2}, "* a\n  * b\nnot a bullet", True),
    ({"kind": "bullet_count", "count": 2}, "- a\n- b\n- c", False),
    ({"kind": "bullet_count", "count": 2}, "-a\n-b", False),
    ({"kind": "bullet_count", "count": 1}, "-\n- a", True),
    ({"kind": "no_commas"}, "a b c", True),
    ({"kind": "no_commas"}, "a, b", False),
    ({"kind": "lowercase"}, "hello world 42", True),
    ({"kind": "lowercase"}, "Hello world", False),
    ({"kind": "lowercase"}, "123", False),
    ({"kind": "uppercase"}, "HELLO, WORLD!", True),
    ({"kind": "uppercase"}, "HELLO world", False),
    ({"kind": "starts_with", "phrase": "Dear"}, "  dear Ana, hi", True),
    ({"kind": "starts_with", "phrase": "Dear"}, "Hi dear", False),
    ({"kind": "ends_with", "phrase": "bye"}, "ok then, bye.", True),
    ({"kind": "ends_with", "phrase": "bye"}, "bye then", False),
    ({"kind": "quoted"}, '"hi there"', True),
    ({"kind": "quoted"}, '"hi there', False),
    ({"kind": "quoted"}, '"', False),
    ({"kind": "repeat_word", "word": "cat", "count": 3}, "cat, cat, cat", True),
    ({"kind": "repeat_word", "word": "cat", "count": 3}, "Cat,cat ,CAT.", True),
    ({"kind": "repeat_word", "word": "cat", "count": 3}, "cat, cat", False),
    ({"kind": "repeat_word", "word": "cat", "count": 3}, "cat cat cat", False),
    ({"kind": "repeat_word", "word": "cat", "count": 3}, "cat, dog, cat", False),
    ({"kind": "items_from", "options": ["red", "blue", "green"], "count": 2}, "red blue", True),
    ({"kind": "items_from", "options": ["red", "blue", "green"], "count": 2}, "- Red\n- green.", True),
    ({"kind": "items_from", "options": ["red", "blue", "green"], "count": 2}, "red red", False),
    ({"kind": "items_from", "options": ["red", "blue", "green"], "count": 2}, "red pink", False),
    ({"kind": "items_from", "options": ["red", "blue", "green"], "count": 2}, "red blue green", False),
]


def test_every_constraint_kind_is_covered_both_ways() -> None:
    for kind in KINDS:
        outcomes = {met for c, _, met in CASES if c["kind"] == kind}
        assert outcomes == {True, False}, kind


@pytest.mark.parametrize("constraint,text,met", CASES)
def test_constraint(constraint: dict, text: str, met: bool) -> None:
    (c,) = parse_constraints([constraint])
    assert c.check(text) is met
    assert c.describe()


@pytest.mark.parametrize(
    "raw,field",
    [
        ([{"kind": "no_comas"}], "no_comas"),
        ([{"kind": "no_commas", "strict": True}], "strict"),
        ([{"kind": "word_count"}], "min_words"),
        ([{"kind": "word_count", "min_words": 5, "max_words": 2}], "larger"),
        ([{"kind": "bullet_count"}], "count"),
    ],
)
def test_bad_constraints_fail_loudly(raw: list, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        parse_constraints(raw)


def _task(constraints: list[dict]) -> Task:
    return Task(id="t", env="instruction_following", prompt=[{"role": "user", "content": "x"}], answer=constraints)


def _step(task: Task, action: str, **params):
    env = InstructionFollowingEnv(InstructionFollowingParams(**params))
    return asyncio.run(env.step(task, env.reset(task), action))


def test_reward_is_the_fraction_met_and_correct_means_all() -> None:
    task = _task([{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "include_keywords", "keywords": ["sun"]}])
    all_met = _step(task, "<think>lowercase</think>the sun is up")
    assert (all_met.reward, all_met.correct, all_met.done) == (1.0, True, True)
    two = _step(task, "<think>x</think>the sun, up")
    assert two.reward == pytest.approx(2 / 3) and two.correct is False
    assert two.info["failed"] == ["no commas"]
    assert [m["ok"] for m in two.info["met"]] == [True, False, True]


def test_reward_all_pays_only_an_answer_that_meets_every_constraint() -> None:
    task = _task([{"kind": "word_count", "min_words": 4, "max_words": 4}, {"kind": "include_keywords", "keywords": ["27"]}])
    keyword_only = _step(task, "<think>four words with 27</think>sun 27 moon", reward="all")
    assert (keyword_only.reward, keyword_only.correct) == (0.0, False)
    assert _step(task, "<think>x</think>sun 27 moon", reward="fraction").reward == 0.5
    right = _step(task, "<think>x</think>sun 27 moon tree", reward="all")
    assert (right.reward, right.correct) == (1.0, True)
    with pytest.raises(ValidationError):
        InstructionFollowingParams(reward="most")


def test_answer_is_the_text_after_the_think_block() -> None:
    task = _task([{"kind": "no_commas"}, {"kind": "lowercase"}])
    assert _step(task, "<think>Plan, With Commas</think>fine").correct is True
    unclosed = _step(task, "<think>fine")
    assert unclosed.reward == 0.0 and unclosed.correct is False
    assert _step(task, "<think>x</think>   ").reward == 0.0


def test_generate_is_deterministic_and_covers_every_template() -> None:
    env = InstructionFollowingEnv()
    a = env.generate(200, seed=5)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in env.generate(200, seed=5)]
    assert [t.prompt for t in a] != [t.prompt for t in env.generate(200, seed=6)]
    assert {t.meta["template"] for t in a} == set(TEMPLATES)
    assert len({t.id for t in a}) == 200


def test_demonstrations_meet_all_constraints_and_corruptions_do_not() -> None:
    env = InstructionFollowingEnv()
    rng = random.Random(1)
    for task in env.generate(300, seed=2):
        parse_constraints(task.answer)
        demo = env.demonstrate(task)[0]["content"]
        assert demo.startswith("<think>") and "</think>" in demo
        assert _step(task, demo).correct is True, (task.prompt, demo)
        for bad in task.meta["corruptions"]:
            result = _step(task, f"<think>p</think>{bad}")
            assert result.correct is False and result.reward < 1.0, (task.prompt, bad)
        assert _step(task, env.corrupt(task, rng)[0]["content"]).correct is False


def test_prompts_and_traces_fit_the_tiny_policy() -> None:
    from align.tiny.tokenizer import train_tokenizer

    env = InstructionFollowingEnv()
    tasks = env.generate(500, seed=3)
    demos = [env.demonstrate(t)[0]["content"] for t in tasks]
    tok = train_tokenizer([t.prompt[0]["content"] for t in tasks] + demos, vocab_size=512)
    for task, demo in zip(tasks, demos):
        assert len(tok.encode(task.prompt[0]["content"], add_special_tokens=False)) < 25, task.prompt
        trace = demo.split("<think>", 1)[1].split("</think>", 1)[0]
        assert len(tok.encode(trace, add_special_tokens=False)) < 40, trace


def test_templates_param() -> None:
    env = make_env("instruction_following", {"templates": ["json"]})
    assert {t.meta["template"] for t in env.generate(10, seed=0)} == {"json"}
    assert isinstance(env.params, InstructionFollowingParams)
    with pytest.raises(PluginParamsError, match=r"instruction_following[\s\S]*templates"):
        make_env("instruction_following", {"templates": ["haiku"]})
    with pytest.raises(PluginParamsError, match="templates"):
        make_env("instruction_following", {"templates": []})


def test_demonstrate_needs_meta_for_loaded_tasks() -> None:
    with pytest.raises(ValueError, match="meta.demonstration"):
        InstructionFollowingEnv().demonstrate(_task([{"kind": "no_commas"}]))


def test_example_data_and_self_checks() -> None:
    examples = load_examples()
    assert len(examples) >= 3
    env = InstructionFollowingEnv()
    checks = env.self_checks()
    assert any(c.expect_correct for c in checks) and any(not c.expect_correct for c in checks)

    async def run_all():
        return await asyncio.gather(*(play(env, c) for c in checks))

    results = asyncio.run(run_all())
    failed = [(c.note, r.info) for c, r in zip(checks, results) if r.correct is not c.expect_correct]
    assert not failed


def test_what_the_answer_copies_from_the_prompt_is_a_number() -> None:
    """Repeated words, first and last words, word-count keywords and modifiers are two-digit
    numbers from the prompt (issue 20: the tiny policy copies digits, not words); the case
    templates change a single word."""
    copied_kinds = {"repeat_word": "word", "starts_with": "phrase", "ends_with": "phrase"}
    for task in InstructionFollowingEnv().generate(300, seed=11):
        prompt = task.prompt[0]["content"]
        for c in task.answer:
            if c["kind"] in copied_kinds:
                value = c[copied_kinds[c["kind"]]]
                assert value.isdigit() and value in prompt, (prompt, c)
            if c["kind"] == "include_keywords":
                if task.meta["template"] in ("lowercase", "uppercase"):
                    assert len(c["keywords"]) == 1 and c["keywords"][0].lower() in prompt.lower()
                else:
                    assert all(k.isdigit() and k in prompt for k in c["keywords"]), (prompt, c)
