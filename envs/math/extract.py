r"""Where the final answer is in a free-text completion, and reading it with math-verify.

A completion's answer is searched only in its *final text*: everything outside the thinking
(:func:`final_text`). In that text:

1. the last ``\boxed{...}`` / ``\fbox{...}`` (nested braces fine; ``\boxed 5`` too) is the
   answer whenever there is one: earlier boxes and any other text are ignored;
2. a final text that is nothing but math, with no words (``(1,2]``, ``y=2x+1``), is read as if
   boxed (:func:`is_bare_math`);
3. if the gold answer is a multiple-choice letter (``A``-``E``, ``(B)``, ``\text{(C)}``), the
   answer is a letter: a box or the whole final text that is one letter, else
   ``StringExtractionConfig`` anchored on "answer" / "choice" / "option" (an article such as
   "A total of" never counts), else a letter that math-verify reads in math (``$B$``);
4. otherwise math-verify's own extraction reads the text (``LatexExtractionConfig`` and
   ``ExprExtractionConfig``, its defaults): "final answer is", "answer:" / "answer is",
   the last ``$...$`` / ``\(...\)`` / ``\[...\]`` block, then the last number or expression that
   starts a token (preceded by a space, ``=`` or the start of the text, so ``AZYUK2A`` holds
   no number), with units, currency signs, percentages and thousands separators. A plain
   number it reads that is a piece of a larger expression, or that the text never wrote, is
   refused (:func:`refusal`).

Numbers follow one comma rule: a comma between digits is a thousands separator when the first
group has 1-3 digits and does not start with 0 and every later group has exactly three digits
(``1,000``, ``12,345,678``, ``1{,}000``). No other comma is a thousands separator, so ``0,111``
never means 111. Such a comma keeps math-verify's meaning: in running text a decimal comma
(``3,5`` is 3.5, ``0,111`` is 0.111), inside a box or ``$...$`` a list separator
(``\boxed{3,5}`` is {3, 5}) except after a leading 0 (``\boxed{0,111}`` is 0.111).

``mv_grade`` imports math-verify and can run for a long time on hostile input: callers run it
in a worker process with a timeout (see :mod:`envs.math.verify`).
"""

from __future__ import annotations

import re
from fractions import Fraction

from align.reasoning import THINK_CLOSE, THINK_OPEN

_THINK_BLOCK_RE = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.DOTALL)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE_RE = re.compile(r"\\boxed\s+([^\s${}]+)")
_LETTERS = ("A", "B", "C", "D", "E")
_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$")
_LETTER_RE = re.compile(r"^\(?([A-E])\)?[.:]?$")
_PAREN_LETTER_RE = re.compile(r"(?<![A-Za-z])\(?([A-E])\)")
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")
_WORD_RE = re.compile(r"(?<![A-Za-z])(?!(?:sin|cos|tan|log|ln|exp|sqrt|pi|inf|or|and)(?![A-Za-z]))[A-Za-z]{3,}|[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)(?:\{,\}|\\,|,\\!)(?=\d{3})")
_NUMBER_THEN_UNIT_RE = re.compile(r"^-?[\d.,]+\s+[A-Za-z]")
_CHOICE_WORD_RE = re.compile(r"\b(?:choice|option)\b", re.IGNORECASE)
# A number in running text, and what around it makes it a piece of a larger expression.
_NUMBER_TOKEN_RE = re.compile(r"(?<![\w.])-?(?:[1-9]\d{0,2}(?: \d{3})+(?!\d)(?:\.\d+)?|\d+(?:[.,]\d+)*|\.\d+)")
_PLAIN_DECIMAL_RE = re.compile(r"^-?\d+(?:\.\d+)?$")
_THOUSANDS_RE = re.compile(r"^-?[1-9]\d{0,2}(?:(?:,\d{3})+|(?: \d{3})+)(?:\.\d+)?$")
# A bare final text that is one number with separators ("1 000", "1000,99") is running text.
_SEPARATED_NUMBER_RE = re.compile(r"^-?\d+(?:[ ,]\d+)+(?:\.\d+)?$")
# Between two boxes that together are one answer ("\boxed{1} and \boxed{2}"): separators only.
_BOX_GAP_RE = re.compile(r"(?:\s|[,;$&]|\\[][()]|\\q?quad(?![A-Za-z])|\\[,;:! ]|\\text\{\s*(?:and|or)?\s*,?\s*\}|\b(?:and|or)\b)*")
# An answer stated in words ("The final answer is", "Answer:"), with the answer right after it.
# It starts a sentence or follows "so"/"thus"/..., so "check if the answer is 12" is no statement.
_STATEMENT_RE = re.compile(
    r"(?:^|[.!?:]\s+|\n|\b(?:so|thus|therefore|hence)\b,?\s+)[*#\s]*(?:the\s+|my\s+)?(?:correct\s+)?"
    r"(?:final\s+answer|answer\s*(?:is\b|:))[\s:*]*(?:is\b[\s:]*)?(?=\$?\\?\(?-?(?:[\d\\(\[{]|[A-Za-z](?![A-Za-z])))",
    re.IGNORECASE,
)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s)|\n")
_BOLD_RE = re.compile(r"^\*\*([^*]+)\*\*\.?$")
_UNITS = r"(?:cm|mm|km|kg|mg|ml|m|g|s|h|min|sec|hrs?|ft|in|lbs?|st|nd|rd|th)(?![A-Za-z])"
_FRAGMENT_AFTER_RE = re.compile(
    rf"^(?!{_UNITS})[A-Za-z^!(_{{]|^\s*\\(?!text|mbox|mathrm|quad|[%$,;! ])[A-Za-z]|^\s*[-+*/^×·]\s*(?:[\d\\(]|[A-Za-z](?![A-Za-z]))"
)
# "5 or 7", "5, 6 or 7": a hedge, which would score whenever one of them is right.
_ALTERNATIVE_AFTER_RE = re.compile(r"\s*(?:,\s*|\s+or\s+)(?:\$\s*)?-?\d")
_FRAGMENT_BEFORE_RE = re.compile(r"(?:[\w)}]\s*[-+*/^×·]|[\^_/])\s*$|\{$")


def final_text(completion: str) -> str:
    """The completion without its thinking; empty when the thinking never closed.

    Closed ``<think>...</think>`` blocks are removed; a ``</think>`` with no opening tag (chat
    templates that open the block in the prompt) makes everything before it thinking; an
    unclosed ``<think>`` means the completion has no final text at all.

    >>> final_text(r"<think>\\boxed{4}</think>So \\boxed{5}."), final_text("4 <think>hmm"), final_text("hmm</think>7")
    ('So \\\\boxed{5}.', '', '7')
    """
    text = _THINK_BLOCK_RE.sub(" ", completion)
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return ""
    return text.strip()


def boxes(text: str) -> list[tuple[int, int, str]]:
    r"""(start, end, stripped contents) of every closed ``\boxed{...}``; unclosed ones are skipped."""
    out = []
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), i, text[m.end() : i - 1].strip()))
    return out


def last_box(text: str) -> str | None:
    r"""The contents of the last box in ``text``, or None.

    >>> last_box(r"\boxed{\{1, \{2\}\}} then \fbox{68}"), last_box(r"\boxed 9."), last_box("9")
    ('68', '9', None)
    """
    found = boxes(text)
    if found:
        return found[-1][2]
    bare = _BOX_BARE_RE.findall(text)
    return bare[-1].rstrip(".,;:") if bare else None


def answer_source(text: str) -> tuple[str | None, str]:
    r"""Where a final text's answer is: ``(box contents, text)`` or ``(None, the text to read)``.

    The last box is the answer, with two exceptions. Boxes joined only by separators
    (``\boxed{1} and \boxed{2}``, ``\boxed{a} \quad \text{and} \quad \boxed{b}``) are one answer:
    the text to read is that run of boxes. An answer stated in words after the last box
    ("... \boxed{255} ... Final Answer: The final answer is $10,455$.") replaces it: the text
    to read is what follows the box. Without a box, the text is cut after the last sentence
    that states an answer (:func:`stated`).

    >>> answer_source(r"try \boxed{5}, but it is \boxed{7}.")[0], answer_source(r"\boxed{1} and \boxed{2}.")
    ('7', (None, '\\boxed{1} and \\boxed{2}'))
    """
    found = boxes(text)
    if not found:
        box = last_box(text)
        return (box, text) if box is not None else (None, stated(text))
    start, end, contents = found[-1]
    tail = text[end:]
    if _STATEMENT_RE.search(tail):
        return None, stated(tail)
    first = len(found) - 1
    while first > 0 and _BOX_GAP_RE.fullmatch(text[found[first - 1][1] : found[first][0]]):
        first -= 1
    if first < len(found) - 1:
        return None, text[found[first][0] : end]
    return contents, text


def stated(text: str) -> str:
    """``text`` up to the end of its last sentence that states an answer ("The answer is 15.").

    math-verify reads "answer ... = N" up to 100 characters on, across sentences, so a check
    after the answer ("The answer is 15. (Check: 15 + 5 = 20.)") would give 20.

    >>> stated("The answer is 15. (Check: 15 + 5 = 20.)"), stated("So 2 + 3 = 5. Answer: 5")
    ('The answer is 15.', 'So 2 + 3 = 5. Answer: 5')
    """
    statements = list(_STATEMENT_RE.finditer(text))
    if not statements:
        return text
    end = _SENTENCE_END_RE.search(text, statements[-1].end())
    if end is None or not any(ch.isdigit() for ch in text[end.end() :]):
        return text
    return text[: end.end()].strip()


def choice_letter(answer: str) -> str | None:
    r"""The letter when ``answer`` is a multiple-choice letter: ``B``, ``(B)``, ``\text{(B)}``.

    >>> choice_letter(r"\text{(C)}"), choice_letter("b"), choice_letter("x")
    ('C', None, None)
    """
    s = answer.strip().strip("$").strip()
    m = _TEXT_WRAP_RE.match(s)
    if m:
        s = m.group(1).strip()
    m = _LETTER_RE.match(s)
    return m.group(1) if m else None


def _chosen_letter(text: str) -> str | None:
    """The letter a multiple-choice completion picks: a box, the whole text, after "answer", in math."""
    from math_verify import StringExtractionConfig, parse

    box, text = answer_source(text)
    if box is not None:
        return choice_letter(box)
    whole = choice_letter(text.strip("* "))
    if whole is not None:
        return whole
    config = StringExtractionConfig(strings=_LETTERS, try_extract_without_anchor=False, lowercase=False)
    anchored = _CHOICE_WORD_RE.sub("answer", _PAREN_LETTER_RE.sub(r" \1 ", text))
    found = parse(anchored, [config], fallback_mode="no_fallback", parsing_timeout=None)
    if found:
        return found[0]
    latex = [p for p in parse(text, parsing_timeout=None) if isinstance(p, str)]  # "$B$", "\(\text{(B)}\)"
    return choice_letter(latex[0]) if latex else None


def _number_value(token: str) -> Fraction | None:
    """A number token's value under the comma rule (thousands groups, else a decimal comma)."""
    if _THOUSANDS_RE.match(token):
        return Fraction(token.replace(",", "").replace(" ", ""))
    if token.count(",") + token.count(".") > 1:
        return None
    return Fraction(token.replace(",", "."))


def refusal(text: str, number: str) -> str | None:
    r"""Why math-verify's plain number ``number``, read from running ``text``, is no final answer.

    math-verify's plain-text extraction takes a number that starts a token, so it reads ``2``
    out of "2x + 1", "x = 2 + y", "2^n", "10!", "3 \sqrt{2}" or an unclosed ``\boxed{12``, and
    ``1234`` out of ``1,2345``.
    The last occurrence of the number in the text decides; None when it stands on its own
    (or ``number`` is no plain decimal).

    >>> refusal("The answer is 2x + 1", "2"), refusal("It is 12 cm.", "12"), refusal("so 1,2345", "1234")
    ('the number is part of a larger expression', None, 'the number is not written as such in the text')
    >>> refusal("The answer is 5 or 7.", "5")
    'the number is one of several alternatives'
    """
    if not _PLAIN_DECIMAL_RE.match(number):
        return None
    value = Fraction(number)
    text = text.replace("{,}", ",")
    for m in reversed(list(_NUMBER_TOKEN_RE.finditer(text))):
        if _number_value(m.group()) == value:
            after = text[m.end() : m.end() + 40]
            if _ALTERNATIVE_AFTER_RE.match(after):
                return "the number is one of several alternatives"
            fragment = _FRAGMENT_AFTER_RE.search(after) or _FRAGMENT_BEFORE_RE.search(text[: m.start()])
            return "the number is part of a larger expression" if fragment else None
    return "the number is not written as such in the text"


_SAID_RE = re.compile(
    r"(?:^|\n|[.!?][ \t]+)[ \t]*(?:(?:(?:the|so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?|####)[ \t]*"
    r"(\$?)(-?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?%?)(?:[ \t]+[A-Za-z]+){0,2}[ \t]*\.?[ \t]*$",
    re.IGNORECASE,
)


def said_number(text: str) -> str | None:
    """The number in a last sentence "The answer is N." / "Answer: N" / "#### N", read in-process.

    Only where math-verify would read the same number: no LaTeX (no backslash or second
    dollar sign) and no other "answer" in the text; otherwise None and math-verify decides.

    >>> said_number("3*4=12.\\nThe answer is $1,250."), said_number("So 9. The answer is 9."), said_number("#### 72")
    ('1,250', '9', '72')
    >>> said_number("The answer is 2x + 1."), said_number("I think the answer is 5."), said_number("Answer: 1 or 2")
    (None, None, None)
    """
    m = _SAID_RE.search(text)
    if m is None or "\\" in text or text.count("$") != len(m.group(1)) or text.lower().count("answer") > 1:
        return None
    return m.group(2)


def is_bare_math(text: str) -> bool:
    r"""Whether a final text is nothing but a math answer written without delimiters.

    math-verify reads only delimited LaTeX (``$...$``, a box) from running text, so it finds
    nothing in ``(1,2]`` and a fragment in ``y=2x+1``; such a text is read as if boxed. A text
    with words in it (three letters or more, other than function names) is running text.

    >>> is_bare_math(r"(1,2]"), is_bare_math(r"\frac{\pi}{2}"), is_bare_math("AZYUK2A"), is_bare_math("It is 5"), is_bare_math("45 km/h")
    (True, True, False, False, False)
    """
    if len(text) > 100 or "\n" in text or "$" in text or "\\(" in text or "\\[" in text or text.count("{") != text.count("}"):
        return False
    if "\\boxed" in text or _SEPARATED_NUMBER_RE.match(text):  # boxes joined; "1 000", "1000,99": running text
        return False
    if _NUMBER_THEN_UNIT_RE.match(text):  # "45 km/h", "12 m^2": a number and its unit
        return False
    return _WORD_RE.search(_LATEX_COMMAND_RE.sub(" ", text)) is None


def unbold(text: str) -> str:
    """``text`` without a Markdown bold around all of it (``**42**``, ``**42.**``)."""
    m = _BOLD_RE.match(text.strip())
    return m.group(1).strip() if m else text


def as_latex(answer: str) -> str:
    r"""``answer`` in a form math-verify parses as a whole: boxed unless already delimited."""
    s = answer.strip()
    if "\\boxed" in s or s.startswith("$"):
        return s
    return "\\boxed{" + s + "}"


def mv_grade(text: str, gold: str | None) -> tuple[bool, str | None, str | None]:
    """(equal to ``gold``, the extracted answer, a note) for a final text; math-verify, no timeouts.

    With ``gold`` None only the extraction is done (and ``equal`` is False). The note says why
    an extracted answer was refused.
    """
    from math_verify import parse, verify

    letter = choice_letter(gold) if gold is not None else None
    if letter is not None:
        chosen = _chosen_letter(text)
        return chosen == letter, chosen, None
    box, text = answer_source(text)
    if box is None and is_bare_math(text):
        box = unbold(text).rstrip(".").strip()
    text = _LATEX_THOUSANDS_RE.sub(",", text)  # 1{,}000, 1\\,000: LaTeX spellings of 1,000
    if box is None and _UNESCAPED_DOLLAR_RE.search(text) is None:
        text = text.replace("\\$", " $")  # no math mode: "\$18.90" is a currency sign
    pred = parse(text if box is None else "\\boxed{" + box + "}", parsing_timeout=None)
    if not pred:
        return False, None, None
    extracted = next((p for p in pred if isinstance(p, str)), str(pred[0]))
    note = refusal(text, extracted) if box is None and "\\boxed" not in text else None  # joined boxes: no fragment
    if note is not None:
        return False, extracted, note
    if gold is None:
        return False, extracted, None
    gold_parsed = parse(as_latex(gold), parsing_timeout=None)
    if not gold_parsed:
        raise ValueError(f"math-verify cannot read the gold answer {gold!r}")
    return bool(verify(gold_parsed, pred, timeout_seconds=None)), extracted, None
