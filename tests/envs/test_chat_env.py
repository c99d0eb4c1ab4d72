"""The chat task family: prompts from the single-turn generators, pairs whose truth is known,
and the judgement SFT rows built from them (both orders)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from align.reasoning import split_thinking
from envs.chat import ChatEnv, ChatParams
from rewards.genrm.data import judgement_rows, response_text
from rewards.genrm.verdict import parse_verdict, quote, strip_thinking


def test_generate_is_deterministic_and_mixes_sources_and_kinds() -> None:
    env = ChatEnv()
    tasks = env.generate(200, seed=3)
    assert [t.id for t in tasks] == [t.id for t in env.generate(200, seed=3)]
    assert len({t.id for t in tasks}) == 200
    sources = Counter(t.meta["source_task"]["env"] for t in tasks)
    assert sources == {"math": 100, "instruction_following": 100}
    kinds = Counter(t.meta["pair_kind"] for t in tasks)
    assert 70 < kinds["padded"] < 130 and kinds["padded"] + kinds["wrong"] == 200
    only_wrong = ChatEnv(ChatParams(padded_fraction=0.0)).generate(20, seed=3)
    assert {t.meta["pair_kind"] for t in only_wrong} == {"wrong"}


def test_pairs_have_the_known_truth_and_reward_is_the_judges() -> None:
    env = ChatEnv()
    graded = ChatEnv(ChatParams(verifier_reward=True))
    for task in env.generate(40, seed=0):
        good = env.demonstrate(task)[-1]["content"]
        bad = env.corrupt(task, random.Random(task.id))[-1]["content"]
        ok = asyncio.run(env.step(task, [], good))
        assert ok.correct is True and ok.reward == 0.0 and ok.info["verifier_reward"] == 1.0
        assert asyncio.run(graded.step(task, [], good)).reward == 1.0
        if task.meta["pair_kind"] == "padded":
            assert strip_thinking(bad).startswith(strip_thinking(good)) and len(bad) > len(good)
        else:
            assert asyncio.run(env.step(task, [], bad)).correct is False


def test_judgement_rows_both_orders() -> None:
    env = ChatEnv()
    pairs = []
    for task in env.generate(20, seed=1):
        pairs.append({"prompt": env.reset(task), "chosen": env.demonstrate(task), "rejected": env.corrupt(task, random.Random(0)),
                      "env": "chat", "id": task.id, "pair_kind": task.meta["pair_kind"]})  # fmt: skip
    rows = judgement_rows(pairs)
    assert len(rows) == 40
    for pair, (first, second) in zip(pairs, zip(rows[::2], rows[1::2]), strict=True):
        assert (first["order"], second["order"]) == ("chosen_a", "chosen_b")
        assert (first["label"], second["label"]) == (1, -1) and first["id"] == pair["id"]
        v1 = parse_verdict(first["messages"][-1]["content"])
        v2 = parse_verdict(second["messages"][-1]["content"])
        assert v1 is not None and v2 == v1.swapped() and v1.a > v1.b
        assert (v1.a - v1.b, first["messages"][-1]["content"].count("filler")) == ((2, 1) if pair["pair_kind"] == "padded" else (4, 0))
        # The judge first works the question out (the chosen answer's thinking), then compares.
        trace = split_thinking(pair["chosen"][-1]["content"])[0]
        assert first["messages"][-1]["content"].startswith(f"<think>{trace}. B ")
        assert second["messages"][-1]["content"].startswith(f"<think>{trace}. A ")
        # The judge sees the answers, quoted, in the order of the row.
        prompt = first["messages"][0]["content"]
        chosen_answer = strip_thinking(response_text(pair["chosen"]))
        assert prompt.index("Answer A:") < prompt.index(quote(chosen_answer)) < prompt.index("Answer B:")
        assert second["messages"][0]["content"].rindex(quote(chosen_answer)) > second["messages"][0]["content"].index("Answer B:")


def test_generated_preference_rows_carry_the_pair_kind() -> None:
    from align.config.schema import GeneratedData
    from align.data.generated import generated_rows
    from envs.registry import ENVS, register_env

    register_env(ChatEnv)  # the same class as the entry point; explicit so the test runs before a reinstall
    try:
        train, evals = generated_rows(GeneratedData(envs={"chat": 1.0}, num_train=30, num_eval=10), "preference")
    finally:
        ENVS.unregister("chat")
    assert {r["pair_kind"] for r in train} == {"wrong", "padded"} and all("pair_kind" in r for r in evals)
    padded = [r for r in train if r["pair_kind"] == "padded"]
    assert all(r["rejected"][-1]["content"].startswith(r["chosen"][-1]["content"] + " ") for r in padded)


def test_source_params_reach_the_sources() -> None:
    """tiny-rlhf draws the easy grades more often through source_params; bad source params fail at validation."""
    easy = {"math": {"grade_weights": {1: 1}}, "instruction_following": {"grade_weights": {1: 1}}}
    tasks = ChatEnv(ChatParams(source_params=easy)).generate(60, seed=0)
    assert {t.meta["source_task"]["meta"]["grade"] for t in tasks} == {1}
    assert len({t.meta["source_task"]["meta"]["grade"] for t in ChatEnv().generate(60, seed=0)}) > 1
    with pytest.raises(ValueError, match=r"grade_weights names grades \[9\]"):
        ChatParams(source_params={"math": {"grade_weights": {9: 1}}})


def test_source_params_are_validated_without_building_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """ChatParams checks each source's params with its params model; the env builds each source once, when used."""
    from envs.registry import ENVS

    math_cls, built = ENVS.get_class("math"), []
    init = math_cls.__init__

    def counting_init(self, *args, **kwargs) -> None:
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(math_cls, "__init__", counting_init)
    params = ChatParams(source_params={"math": {"grade_weights": {1: 1}}})
    assert built == []
    env = ChatEnv(params)
    env.generate(4, seed=0)
    env.generate(4, seed=1)
    assert built == [1]
