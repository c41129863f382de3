"""Reading the chosen letter of a multiple-choice answer, with several named extractors.

- ``strict``: only an explicit statement — "The answer is (C)", "answer: C", "Answer: **C**",
  "réponse est C", "答案是 C", or a boxed letter ``\\boxed{C}`` / ``\\boxed{\\text{(C)}}``;
- ``leading``: a letter that opens the response ("D. because ...", "(B)", "B。不是 A");
- ``flexible``: the last standalone option letter anywhere ("... therefore I think it's B"),
  skipping "A" used as an article ("A train leaves ...");
- ``default``: strict, then leading, then flexible.

Results report each extractor side by side, so a model that only fails the strict format is
visible as such.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from cogpo_kit.evaluation.answer_extraction import find_boxed

LETTERS = "ABCDEFGHIJ"


def _letters(n_choices: int) -> str:
    return LETTERS[: max(2, min(n_choices, len(LETTERS)))]


def _strict(text: str, letters: str) -> Optional[str]:
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
    for _, _, content in find_boxed(text):
        m = re.fullmatch(r"\s*(?:\\text(?:bf)?\s*\{)?\s*\(?\s*(" + cls + r")\s*\)?\s*\}?\s*(?:[.:].*)?", content, re.DOTALL)
        if m:
            found.append((text.rfind(content), m.group(1)))
    if not found:
        return None
    return max(found)[1]


def _leading(text: str, letters: str) -> Optional[str]:
    m = re.match(r"\s*(?:\*\*)?\(?([" + letters + r"])\)?(?:\*\*)?(?:[.:)。，,\s]|$|(?=[\u3040-\u9fff]))", text)
    if not m:
        return None
    # "A train leaves" / "I think": a capital letter opening a sentence is not an answer
    rest = text[m.end():]
    if m.group(1) in "AI" and not text.lstrip().startswith("(") and re.match(r"[a-z]", rest.lstrip()) and not re.match(r"\s*[.:)]", text[m.end() - 1:]):
        return None
    return m.group(1)


def _flexible(text: str, letters: str) -> Optional[str]:
    last = None
    for m in re.finditer(r"(?<![A-Za-z'])\(?([" + letters + r"])\)?(?![A-Za-z'])", text):
        letter = m.group(1)
        after = text[m.end():m.end() + 12]
        if letter in "AI" and not m.group(0).startswith("(") and re.match(r"\s+[a-z]", after):
            continue  # article / pronoun
        last = letter
    return last


def _default(text: str, letters: str) -> Optional[str]:
    return _strict(text, letters) or _leading(text, letters) or _flexible(text, letters)


CHOICE_EXTRACTORS: dict[str, Callable[[str, str], Optional[str]]] = {
    "strict": _strict,
    "leading": _leading,
    "flexible": _flexible,
    "default": _default,
}
"""Named letter extractors; each takes ``(text, letters)`` and returns a letter or ``None``."""


def extract_choice(text: Optional[str], extractor: str = "default", n_choices: int = 4) -> Optional[str]:
    """The option letter a response chose (``None``: none found)."""
    if text is None:
        return None
    if extractor not in CHOICE_EXTRACTORS:
        raise ValueError(f"unknown choice extractor '{extractor}' (known: {', '.join(CHOICE_EXTRACTORS)})")
    idx = text.rfind("</think>")
    if idx >= 0 and text[idx + 8:].strip():
        text = text[idx + 8:]
    return CHOICE_EXTRACTORS[extractor](text, _letters(n_choices))


def grade_choice(prediction: str, gold: str, extractor: str = "default", n_choices: int = 4) -> bool:
    """Whether the extracted letter equals the gold letter (``"C"``, ``"(C)"`` or ``"c"``)."""
    g = re.sub(r"[^A-Za-z]", "", str(gold)).upper()
    if len(g) != 1:
        raise ValueError(f"choice gold must be one letter, got {gold!r}")
    return extract_choice(prediction, extractor, n_choices=max(n_choices, LETTERS.index(g) + 1)) == g
