"""Reading the chosen letter of a multiple-choice answer, with several named extractors.

- ``strict``: only an explicit statement — a boxed letter ``\\boxed{C}`` / ``\\boxed{\\text{(C)}}`` /
  ``\\boxed{(C) Alina}``, a boxed option text (``\\boxed{Alina}`` -> the letter of that option), or
  "The answer is (C)", "answer: C", "Answer: **C**", "réponse est C", "答案是 C";
- ``leading``: a letter that opens the response ("D. because ...", "(B)", "B。不是 A");
- ``flexible``: the last standalone option letter anywhere ("... therefore I think it's B"),
  skipping "A" used as an article ("A train leaves ...");
- ``default``: strict, then leading, then flexible.

Every extractor reads the final part of a reasoning model's output (after ``</think>`` or
``<|end_of_thought|>``, see :func:`~cogpo_kit.answers.extraction.final_segment`). Results report
each extractor side by side, so a model that only fails the strict format is visible as such.

Gold answers are letters, but some datasets store them with their option text (``(D) Alina``,
``C Cecile``): :func:`gold_letter` reads the letter as evaluators do.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

from cogpo_kit.answers.extraction import final_segment, find_boxed

LETTERS = "ABCDEFGHIJ"


def _letters(n_choices: int) -> str:
    return LETTERS[: max(2, min(n_choices, len(LETTERS)))]


def _plain(text: str) -> str:
    """Box content without LaTeX text wrappers, math delimiters and emphasis."""
    t = text
    for _ in range(3):
        t = re.sub(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", t)
    t = t.replace("$", "").replace("**", "").replace("\\,", " ").replace("\\ ", " ")
    return re.sub(r"\s+", " ", t).strip()


def _norm_option(text: str) -> str:
    """Option text compared loosely: case, spaces, math delimiters and end punctuation ignored."""
    return re.sub(r"[\s.;:,!]+$", "", re.sub(r"\s+", "", _plain(text).lower()))


def _option_index(text: str, choices: Sequence[str]) -> Optional[int]:
    want = _norm_option(text)
    if not want:
        return None
    hits = [i for i, c in enumerate(choices) if _norm_option(str(c)) == want]
    return hits[0] if len(hits) == 1 else None


def _box_letter(content: str, letters: str, choices: Sequence[str]) -> Optional[str]:
    """The option a box names: its letter (``C``, ``(C)``, ``C.``, ``(C) Alina``) or its option text."""
    c = _plain(content)
    cls = f"[{letters}]"
    m = re.fullmatch(r"\(?\s*(" + cls + r")\s*\)?\s*[.:]?", c)
    if m:
        return m.group(1)
    m = re.match(r"\(\s*(" + cls + r")\s*\)\s*\S|(" + cls + r")\s*[.:)]\s+\S", c)
    if m:  # "(C) Alina", "C. Alina", "C) Alina"
        return m.group(1) or m.group(2)
    if choices:
        m = re.match(r"(" + cls + r")\s+(.+)$", c)
        if m and LETTERS.index(m.group(1)) < len(choices) and \
                _norm_option(m.group(2)) == _norm_option(str(choices[LETTERS.index(m.group(1))])):
            return m.group(1)  # "C Cecile"
        idx = _option_index(c, choices)
        if idx is not None and idx < len(letters):
            return letters[idx]
    return None


def _strict(text: str, letters: str, choices: Sequence[str] = ()) -> Optional[str]:
    cls = f"[{letters}]"
    found: list[tuple[int, str]] = []
    pattern = re.compile(
        r"(?:answer\s*(?:is|:)|answer\s+would\s+be|correct\s+(?:option|choice)\s+is|réponse\s+est|réponse\s*:|答案[是为：:]?)"
        r"[^.\n]{0,20}?(?<![A-Za-z])\(?\**\s*(" + cls + r")\s*\**\)?(?![A-Za-z])",
        re.IGNORECASE)
    for m in pattern.finditer(text):
        letter = m.group(1)
        if letter.upper() == letter:  # a capital letter, not the word "a"
            found.append((m.start(1), letter))
    for start, _, content in find_boxed(text):
        letter = _box_letter(content, letters, choices)
        if letter:
            found.append((start, letter))
    if not found:
        return None
    return max(found)[1]


def _leading(text: str, letters: str, choices: Sequence[str] = ()) -> Optional[str]:
    m = re.match(r"\s*(?:\*\*)?\(?([" + letters + r"])\)?(?:\*\*)?(?:[.:)。，,\s]|$|(?=[\u3040-\u9fff]))", text)
    if not m:
        return None
    # "A train leaves" / "I think": a capital letter opening a sentence is not an answer
    rest = text[m.end():]
    if m.group(1) in "AI" and not text.lstrip().startswith("(") and re.match(r"[a-z]", rest.lstrip()) and not re.match(r"\s*[.:)]", text[m.end() - 1:]):
        return None
    return m.group(1)


def _flexible(text: str, letters: str, choices: Sequence[str] = ()) -> Optional[str]:
    last = None
    for m in re.finditer(r"(?<![A-Za-z'])\(?([" + letters + r"])\)?(?![A-Za-z'])", text):
        letter = m.group(1)
        after = text[m.end():m.end() + 12]
        if letter in "AI" and not m.group(0).startswith("(") and re.match(r"\s+[a-z]", after):
            continue  # article / pronoun
        last = letter
    return last


def _default(text: str, letters: str, choices: Sequence[str] = ()) -> Optional[str]:
    return _strict(text, letters, choices) or _leading(text, letters) or _flexible(text, letters)


CHOICE_EXTRACTORS: dict[str, Callable[..., Optional[str]]] = {
    "strict": _strict,
    "leading": _leading,
    "flexible": _flexible,
    "default": _default,
}
"""Named letter extractors; each takes ``(text, letters, choices=())`` and returns a letter or ``None``."""


def extract_choice(text: Optional[str], extractor: str = "default", n_choices: int = 4,
                   choices: Sequence[str] = ()) -> Optional[str]:
    """The option letter a response chose (``None``: none found). ``choices`` (the option texts, in
    letter order) lets a boxed option text count as its letter."""
    if text is None:
        return None
    if extractor not in CHOICE_EXTRACTORS:
        raise ValueError(f"unknown choice extractor '{extractor}' (known: {', '.join(CHOICE_EXTRACTORS)})")
    n = max(n_choices, len(choices))
    return CHOICE_EXTRACTORS[extractor](final_segment(text), _letters(n), tuple(choices))


def gold_letter(gold: str, n_choices: int = 4, choices: Sequence[str] = ()) -> str:
    """The letter of a multiple-choice gold answer: ``C``, ``(C)``, ``c``, ``C.``, or the letter given
    with its option text (``(D) Alina``, ``C Cecile``, ``D. Alina``), or an option text itself when
    ``choices`` are given. Raises ``ValueError`` when no letter can be read."""
    g = str(gold).strip()
    m = re.fullmatch(r"\(?\s*([A-Ja-j])\s*\)?\s*[.:]?", g)
    if m:
        return m.group(1).upper()
    m = re.match(r"\(\s*([A-Ja-j])\s*\)\s*\S|([A-J])\s*[.:)]?\s+\S", g)
    if m:  # the letter the text starts with, as evaluators read it
        return (m.group(1) or m.group(2)).upper()
    if choices:
        idx = _option_index(g, choices)
        if idx is not None:
            return LETTERS[idx]
    stated = _strict(g, LETTERS[: max(n_choices, len(choices), 4)], choices)
    if stated:
        return stated
    raise ValueError(f"choice gold must name one option letter, got {gold!r}")


def grade_choice(prediction: str, gold: str, extractor: str = "default", n_choices: int = 4,
                 choices: Sequence[str] = ()) -> bool:
    """Whether the extracted letter equals the gold letter (``"C"``, ``"(C)"``, ``"c"``, ``"(C) Alina"``)."""
    g = gold_letter(gold, n_choices, choices)
    n = max(n_choices, len(choices), LETTERS.index(g) + 1)
    return extract_choice(prediction, extractor, n_choices=n, choices=choices) == g
