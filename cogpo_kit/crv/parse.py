"""Reading a label (easy/medium/hard, YES/NO) out of an agent's answer.

Constrained decoding gives the label directly (``Completion.choice``). Free text is parsed:

1. Reasoning models think first: only the text after the last ``</think>`` is read when present.
2. Case, surrounding punctuation and markdown are ignored (``"**Medium.**"`` -> ``medium``).
3. An explicit statement wins (``"Answer: hard"``, ``"the rating is easy"``, ``"Output: YES"``).
4. Otherwise the last label word in the text (``"Not easy, I think medium"`` -> ``medium``).

Anything else (no label word, empty text) is ``None``: the caller re-asks and counts it.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

THINK_END = "</think>"

_STATEMENT = re.compile(
    r"(?:answer|rating|label|level|output|verdict|classification|complexity|difficulty|final answer)"
    r"\s*(?:is|:|=|-)\s*[*_`\"'(\[]*\s*([a-z]+)", re.IGNORECASE)


def answer_part(text: str, think_end: str = THINK_END) -> str:
    """The text after the last end-of-thinking marker (all of it when there is none)."""
    if think_end and think_end in text:
        return text.rsplit(think_end, 1)[1]
    return text


def _canonical(word: str, choices: Sequence[str]) -> Optional[str]:
    lw = word.lower()
    for c in choices:
        if c.lower() == lw:
            return c
    return None


def parse_label(text: Optional[str], choices: Sequence[str], *, think_end: str = THINK_END) -> Optional[str]:
    """The label ``text`` gives, spelled as in ``choices``, or ``None`` when it gives none."""
    if not text:
        return None
    part = answer_part(text, think_end)
    stripped = re.sub(r"[^a-z]+", " ", part.lower()).strip()
    if not stripped:
        return None
    exact = _canonical(stripped, choices)
    if exact:
        return exact
    for m in reversed(list(_STATEMENT.finditer(part))):
        hit = _canonical(m.group(1), choices)
        if hit:
            return hit
    words = stripped.split()
    for w in reversed(words):
        hit = _canonical(w, choices)
        if hit:
            return hit
    return None


def completion_label(completion, choices: Sequence[str], *, think_end: str = THINK_END) -> Optional[str]:
    """The label of a :class:`~cogpo_kit.engines.base.Completion`: its constrained ``choice`` when it
    is one of ``choices``, else the parsed text; ``None`` for errors and empty answers."""
    if completion.finish_reason == "error":
        return None
    if completion.choice is not None:
        hit = _canonical(completion.choice, choices)
        if hit:
            return hit
    return parse_label(completion.text, choices, think_end=think_end)
