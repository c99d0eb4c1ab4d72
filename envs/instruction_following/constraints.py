"""Verifiable instruction constraints, in the spirit of IFEval: each one is checked by code.

A task's gold answer is a list of constraints as plain dicts (``{"kind": "no_commas"}``,
``{"kind": "word_count", "min_words": 3}``), so datasets stay JSON. They are validated by the
pydantic models below, which forbid unknown fields: a typo in a dataset fails loudly.

Limits: words are runs of letters, digits, apostrophes and hyphens; keyword matches are whole
words, case-insensitive; "bullets" are lines starting with ``-``, ``*`` or ``•``. Nothing here
judges meaning (a list of colours is checked against a fixed vocabulary, not understood).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_BULLET_RE = re.compile(r"^[ \t]*[-*\u2022][ \t]+(.*\S)[ \t]*$", re.MULTILINE)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def bullets(text: str) -> list[str]:
    return _BULLET_RE.findall(text)


def items(text: str) -> list[str]:
    """The items of a list answer: bullet texts if there are bullets, else the words."""
    found = bullets(text)
    return [i.strip(" .").lower() for i in found] if found else [w.lower() for w in words(text)]


class _Constraint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def check(self, text: str) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class WordCount(_Constraint):
    kind: Literal["word_count"] = "word_count"
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "WordCount":
        if self.min_words is None and self.max_words is None:
            raise ValueError("word_count needs min_words, max_words or both")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError("word_count: min_words is larger than max_words")
        return self

    def check(self, text: str) -> bool:
        n = len(words(text))
        return (self.min_words is None or n >= self.min_words) and (self.max_words is None or n <= self.max_words)

    def describe(self) -> str:
        if self.min_words == self.max_words:
            return f"exactly {self.min_words} words"
        if self.max_words is None:
            return f"at least {self.min_words} words"
        return f"between {self.min_words or 0} and {self.max_words} words"


class IncludeKeywords(_Constraint):
    kind: Literal["include_keywords"] = "include_keywords"
    keywords: list[str] = Field(min_length=1)

    def check(self, text: str) -> bool:
        present = {w.lower() for w in words(text)}
        return all(k.lower() in present for k in self.keywords)

    def describe(self) -> str:
        return f"mentions {', '.join(self.keywords)}"


class ForbiddenWords(_Constraint):
    kind: Literal["forbidden_words"] = "forbidden_words"
    words: list[str] = Field(min_length=1)

    def check(self, text: str) -> bool:
        present = {w.lower() for w in words(text)}
        return not any(w.lower() in present for w in self.words)

    def describe(self) -> str:
        return f"never says {', '.join(self.words)}"


class JsonFormat(_Constraint):
    """The whole answer is one JSON value (a ```json fence is allowed) with the required pairs."""

    kind: Literal["json_format"] = "json_format"
    required: dict[str, Any] = {}

    def check(self, text: str) -> bool:
        body = text.strip()
        fenced = _FENCE_RE.match(body)
        try:
            value = json.loads(fenced.group(1) if fenced else body)
        except ValueError:
            return False
        if not self.required:
            return True
        return isinstance(value, dict) and all(k in value and value[k] == v for k, v in self.required.items())

    def describe(self) -> str:
        return "valid JSON" + (f" with {json.dumps(self.required)}" if self.required else "")


class BulletCount(_Constraint):
    kind: Literal["bullet_count"] = "bullet_count"
    count: int = Field(ge=0)

    def check(self, text: str) -> bool:
        return len(bullets(text)) == self.count

    def describe(self) -> str:
        return f"exactly {self.count} bullet points"


class NoCommas(_Constraint):
    kind: Literal["no_commas"] = "no_commas"

    def check(self, text: str) -> bool:
        return "," not in text

    def describe(self) -> str:
        return "no commas"


class Lowercase(_Constraint):
    kind: Literal["lowercase"] = "lowercase"

    def check(self, text: str) -> bool:
        return any(c.isalpha() for c in text) and text == text.lower()

    def describe(self) -> str:
        return "all lowercase"


class Uppercase(_Constraint):
    kind: Literal["uppercase"] = "uppercase"

    def check(self, text: str) -> bool:
        return any(c.isalpha() for c in text) and text == text.upper()

    def describe(self) -> str:
        return "all uppercase"


class StartsWith(_Constraint):
    kind: Literal["starts_with"] = "starts_with"
    phrase: str = Field(min_length=1)

    def check(self, text: str) -> bool:
        return text.strip().lower().startswith(self.phrase.lower())

    def describe(self) -> str:
        return f"starts with '{self.phrase}'"


class EndsWith(_Constraint):
    """Trailing whitespace and a final ``.`` or ``!`` are ignored; case is not."""

    kind: Literal["ends_with"] = "ends_with"
    phrase: str = Field(min_length=1)

    def check(self, text: str) -> bool:
        return text.strip().rstrip(".!").lower().endswith(self.phrase.lower().rstrip(".!"))

    def describe(self) -> str:
        return f"ends with '{self.phrase}'"


class Quoted(_Constraint):
    kind: Literal["quoted"] = "quoted"

    def check(self, text: str) -> bool:
        t = text.strip()
        return len(t) >= 2 and t[0] == t[-1] == '"'

    def describe(self) -> str:
        return "wrapped in double quotes"


class RepeatWord(_Constraint):
    """Exactly ``count`` copies of ``word`` and nothing else, split by ``separator``."""

    kind: Literal["repeat_word"] = "repeat_word"
    word: str = Field(min_length=1)
    count: int = Field(ge=1)
    separator: str = ","

    def check(self, text: str) -> bool:
        parts = [p.strip().lower() for p in text.strip().rstrip(".").split(self.separator)]
        return len(parts) == self.count and all(p == self.word.lower() for p in parts)

    def describe(self) -> str:
        return f"'{self.word}' {self.count} times separated by '{self.separator}'"


class ItemsFrom(_Constraint):
    """Exactly ``count`` distinct items (bullets, else words), each one of ``options``."""

    kind: Literal["items_from"] = "items_from"
    options: list[str] = Field(min_length=1)
    count: int = Field(ge=1)

    def check(self, text: str) -> bool:
        found = items(text)
        allowed = {o.lower() for o in self.options}
        return len(found) == self.count and len(set(found)) == self.count and all(i in allowed for i in found)

    def describe(self) -> str:
        return f"{self.count} distinct items from {', '.join(self.options)}"


Constraint = Annotated[
    WordCount | IncludeKeywords | ForbiddenWords | JsonFormat | BulletCount | NoCommas | Lowercase | Uppercase
    | StartsWith | EndsWith | Quoted | RepeatWord | ItemsFrom,
    Field(discriminator="kind"),
]
CONSTRAINTS = TypeAdapter(list[Constraint])
KINDS: tuple[str, ...] = tuple(
    m.model_fields["kind"].default
    for m in (WordCount, IncludeKeywords, ForbiddenWords, JsonFormat, BulletCount, NoCommas, Lowercase, Uppercase,
              StartsWith, EndsWith, Quoted, RepeatWord, ItemsFrom)
)


def parse_constraints(raw: Any) -> list[_Constraint]:
    """Validate a task's gold answer (a list of constraint dicts)."""
    return CONSTRAINTS.validate_python(raw)


def score(text: str, constraints: list[_Constraint]) -> list[bool]:
    """Which constraints ``text`` meets; an empty answer meets none (``no_commas`` included)."""
    if not text.strip():
        return [False] * len(constraints)
    return [c.check(text) for c in constraints]
