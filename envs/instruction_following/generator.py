"""The tiny world's instruction-following tasks: short orders with constraints a tiny model can learn.

Every template gives a prompt under 25 tokens, a list of constraints (the gold), a one-line
plan for the think block, a correct answer and a wrong one. Wrong answers break one or two
constraints the way a careless model would (one item too few, commas where none were allowed,
the case left unchanged), so preference pairs differ in what the constraint checks.

Grades (``meta["grade"]``, envs/grades.py) count the constraints stacked on a template: grade 1
is the template alone; grades 2 and 3 add one and two modifiers (start with a word, end with a
word, wrap the reply in quotes), each with its own constraint, a longer plan, and one more
wrong answer (the reply without that modifier). Every stacked spec is checked on the spot: its
answer meets all constraints and each wrong one breaks at least one, else another draw is made.

What is copied from the prompt into the answer is a two-digit number (the word to repeat, the
words to say first and last, the keyword of a word count, a modifier's start or end), never a
word: after SFT the 2-attention-layer tiny policy wrote the same few words whatever the prompt
named ("Say snow and end with the word tree." -> "sun tree"; 0.00 held-out, pass@8 0.00, issue
20), while it copies digits from prompts everywhere else (code constants, calculator calls). The
case templates change one word ("Reply in lowercase: HAT" -> "hat").
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

Template = Literal["repeat", "lowercase", "uppercase", "bullets", "no_commas", "json", "ends_with", "forbidden", "word_count"]
TEMPLATES: tuple[str, ...] = get_args(Template)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "colors": ("red", "blue", "green", "pink", "black", "white", "gray"),
    "animals": ("cat", "dog", "cow", "pig", "fox", "owl", "hen"),
    "fruits": ("apple", "pear", "plum", "lime", "fig", "kiwi", "mango"),
}
SINGULAR = {"colors": "color", "animals": "animal", "fruits": "fruit"}
NUMBERS = tuple(str(n) for n in range(10, 100))  # what a task asks to be copied
WORDS = ("sun", "moon", "tree", "book", "cup", "hat", "car", "bird", "rain", "snow", "hello", "world", "good", "night", "day")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
JSON_KEYS = {"color": CATEGORIES["colors"], "pet": CATEGORIES["animals"], "fruit": CATEGORIES["fruits"]}


@dataclass(frozen=True)
class Spec:
    """One generated task: prompt text, constraints (dicts), plan, right and wrong answers."""

    template: str
    prompt: str
    constraints: list[dict[str, Any]]
    plan: str
    good: str
    bad: tuple[str, ...]  # wrong answers; each breaks at least one constraint


def _other(rng: random.Random, pool: tuple[str, ...], not_this: str) -> str:
    return rng.choice([p for p in pool if p != not_this])


def make_spec(template: str, rng: random.Random) -> Spec:
    if template == "repeat":
        word, n = rng.choice(NUMBERS), rng.randint(2, 4)
        bad_n = n + rng.choice([-1, 1])
        return Spec(
            template,
            f"Write {word} {NUMBER_WORDS[n]} times, separated by commas.",
            [{"kind": "repeat_word", "word": word, "count": n, "separator": ","}],
            f"{word}, {NUMBER_WORDS[n]} times, commas",
            ", ".join([word] * n),
            (", ".join([word] * bad_n), " ".join([word] * n)),
        )
    if template in ("lowercase", "uppercase"):
        word = rng.choice(WORDS)
        lower = template == "lowercase"
        shown = word.upper() if lower else word
        good = word if lower else word.upper()
        return Spec(
            template,
            f"Reply in {template}: {shown}",
            [{"kind": template}, {"kind": "include_keywords", "keywords": [word]}],
            template,
            good,
            (shown, good.capitalize() if lower else word.title()),
        )
    if template in ("bullets", "no_commas"):
        cat = rng.choice(list(CATEGORIES))
        n = rng.randint(2, 4)
        chosen = rng.sample(CATEGORIES[cat], n)
        fewer = chosen[: n - 1]
        if template == "bullets":
            return Spec(
                template,
                f"List {NUMBER_WORDS[n]} {cat} as bullets.",
                [{"kind": "bullet_count", "count": n}, {"kind": "items_from", "options": list(CATEGORIES[cat]), "count": n}],
                f"{NUMBER_WORDS[n]} {cat}, one per bullet",
                "\n".join(f"- {c}" for c in chosen),
                ("\n".join(f"- {c}" for c in fewer), ", ".join(chosen)),
            )
        return Spec(
            template,
            f"Name {NUMBER_WORDS[n]} {cat} without commas.",
            [{"kind": "no_commas"}, {"kind": "items_from", "options": list(CATEGORIES[cat]), "count": n}],
            f"{NUMBER_WORDS[n]} {cat}, spaces not commas",
            " ".join(chosen),
            (", ".join(chosen), " ".join(fewer)),
        )
    if template == "json":
        key = rng.choice(list(JSON_KEYS))
        value = rng.choice(JSON_KEYS[key])
        return Spec(
            template,
            f'Reply in JSON with "{key}" set to "{value}".',
            [{"kind": "json_format", "required": {key: value}}],
            f"JSON, {key} is {value}",
            json.dumps({key: value}),
            (json.dumps({key: _other(rng, JSON_KEYS[key], value)}), f"{key}: {value}"),
        )
    if template == "ends_with":
        say, end = rng.sample(NUMBERS, 2)
        return Spec(
            template,
            f"Say {say} and end with {end}.",
            [{"kind": "include_keywords", "keywords": [say]}, {"kind": "ends_with", "phrase": end}],
            f"{say} first, {end} last",
            f"{say} {end}",
            (f"{end} {say}", say),
        )
    if template == "forbidden":
        cat = rng.choice(list(CATEGORIES))
        banned = rng.choice(CATEGORIES[cat])
        return Spec(
            template,
            f"Name one {SINGULAR[cat]} that is not {banned}.",
            [{"kind": "forbidden_words", "words": [banned]}, {"kind": "items_from", "options": list(CATEGORIES[cat]), "count": 1}],
            f"{'an' if SINGULAR[cat][0] in 'aeiou' else 'a'} {SINGULAR[cat]}, not {banned}",
            _other(rng, CATEGORIES[cat], banned),
            (banned, f"{banned} {_other(rng, CATEGORIES[cat], banned)}"),
        )
    if template == "word_count":
        n, key = rng.randint(3, 5), rng.choice(NUMBERS)
        fill = [rng.choice(WORDS) for _ in range(n)]
        good = fill[: n - 1] + [key]
        rng.shuffle(good)
        return Spec(
            template,
            f"Write exactly {NUMBER_WORDS[n]} words, one of them {key}.",
            [{"kind": "word_count", "min_words": n, "max_words": n}, {"kind": "include_keywords", "keywords": [key]}],
            f"{NUMBER_WORDS[n]} words with {key}",
            " ".join(good),
            (" ".join(fill), " ".join(good + [rng.choice(WORDS)])),
        )
    raise ValueError(f"unknown instruction_following template {template!r}; known: {', '.join(TEMPLATES)}")


GRADES: tuple[int, ...] = (1, 2, 3)
# The modifiers each template can take without breaking its own constraints (an extra word breaks
# item and word counts, quotes break JSON, bullets and a leading/trailing word).
MODIFIERS: dict[str, tuple[str, ...]] = {
    "lowercase": ("starts_with", "ends_with", "quoted"),
    "uppercase": ("starts_with", "ends_with", "quoted"),
    "ends_with": ("starts_with",),
    "no_commas": ("quoted",),
    "forbidden": ("quoted",),
    "word_count": ("quoted",),
}


def templates_of_grade(grade: int, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """The templates of ``templates`` that reach ``grade`` (grade 1: all)."""
    return [t for t in templates if grade == 1 or len(MODIFIERS.get(t, ())) >= grade - 1]


def _modify(spec: Spec, modifier: str, rng: random.Random) -> Spec:
    """``spec`` with one more constraint; the unmodified answer becomes one more wrong answer."""
    word = rng.choice(NUMBERS)

    def apply(text: str) -> str:
        return {"starts_with": f"{word} {text}", "ends_with": f"{text} {word}", "quoted": f'"{text}"'}[modifier]

    extra = {
        "starts_with": (f" Start with {word}.", {"kind": "starts_with", "phrase": word}, f"start with {word}"),
        "ends_with": (f" End with {word}.", {"kind": "ends_with", "phrase": word}, f"end with {word}"),
        "quoted": (" Use quotes.", {"kind": "quoted"}, "in quotes"),
    }[modifier]
    return Spec(spec.template, spec.prompt + extra[0], [*spec.constraints, extra[1]], f"{spec.plan}; {extra[2]}",
                apply(spec.good), (*(apply(b) for b in spec.bad), spec.good))  # fmt: skip


def _valid(spec: Spec) -> bool:
    from envs.instruction_following.constraints import parse_constraints, score

    constraints = parse_constraints(spec.constraints)
    return all(score(spec.good, constraints)) and not any(all(score(b, constraints)) for b in spec.bad)


def make_graded_spec(template: str, grade: int, rng: random.Random) -> Spec:
    """A spec of ``template`` with ``grade - 1`` modifiers stacked (redrawn until it checks out)."""
    if template not in templates_of_grade(grade):
        raise ValueError(f"instruction_following: template {template!r} has no grade {grade} (grades are {GRADES})")
    for _ in range(100):
        spec = make_spec(template, rng)
        for modifier in rng.sample(MODIFIERS.get(template, ()), grade - 1):
            spec = _modify(spec, modifier, rng)
        if _valid(spec):
            return replace(spec, bad=tuple(dict.fromkeys(spec.bad)))
    raise RuntimeError(f"instruction_following: no valid grade-{grade} spec of template {template!r} in 100 draws")
