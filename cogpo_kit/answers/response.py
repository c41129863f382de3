"""How a training response looks, and the answer a reasoning process reaches.

Every writer of training text (D_SFT* rows, the plain-SFT rows, both sides of every preference pair,
the incorrect CoTs) builds its response with :func:`format_response`, so the two texts a pair or an
SFT comparison sets side by side can differ only in their reasoning:

- a **short-answer** problem (math, multiple choice): the reasoning, then one final line
  ``The final answer is $\\boxed{<answer>}$.`` with the answer *that reasoning reaches* (the gold answer
  for a verified CoT; its own answer for an incorrect one), unless the reasoning's last line already
  holds a boxed answer;
- a **code** or other **long-answer** problem (the gold "answer" is a whole program or text): the
  reasoning as it is (it carries its own solution), never a boxed line.

The answer a text reaches is read by the kit's one extractor
(:func:`cogpo_kit.answers.extraction.extract_answer`, the one evaluation uses too) and compared with a
gold answer by the kit's grader.
"""

from __future__ import annotations

import re
from typing import Literal, Optional

from cogpo_kit.answers.extraction import extract_answer, find_boxed

AnswerKind = Literal["short", "code", "long"]

PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
"""User turn of every training prompt; ``{problem}`` is replaced by the problem text."""

FINAL_LINE = "The final answer is $\\boxed{{{answer}}}$."
"""The last line of a short-answer response (``{answer}`` is the answer the reasoning reaches)."""

SHORT_ANSWER_CHARS = 200
"""A gold answer longer than this, or with a line break, is not a short final answer."""

_ARITHMETIC = re.compile(r"[\d\s+\-*/×÷^().,$=]+")
_CODE = re.compile(r"```|^\s*(?:def |class |import |from \S+ import |#include|public static)", re.MULTILINE)


def answer_kind(gold: str) -> AnswerKind:
    """What kind of gold answer ``gold`` is: ``short`` (a final answer the grader compares), ``code``
    (a program) or ``long`` (any other multi-line text, such as a proof or a whole solution)."""
    text = str(gold).strip()
    if _CODE.search(text):
        return "code"
    if "\n" in text or len(text) > SHORT_ANSWER_CHARS:
        return "long"
    return "short"


def student_messages(problem: str, template: str = PROMPT_TEMPLATE, kind: AnswerKind = "short") -> list[dict]:
    """The chat prompt of one problem: a single user turn. A code problem carries its own instruction
    (what program to write), so it is sent as it is; every other problem through ``template``."""
    content = problem.strip() if kind == "code" else template.format(problem=problem.strip())
    return [{"role": "user", "content": content}]


def reached_answer(text: str) -> Optional[str]:
    """The final answer ``text`` reaches (``None`` when it reaches none).

    A computation stated as the answer ("the answer is 40 + 24 = 64") reaches its result (``64``)."""
    ans = extract_answer(text)
    if ans and "=" in ans:
        lhs, rhs = ans.rsplit("=", 1)
        rhs = rhs.strip().rstrip(".").strip("$ ")
        if rhs and _ARITHMETIC.fullmatch(lhs):
            return rhs
    return ans


def same_answer(prediction: Optional[str], gold: str) -> bool:
    """Whether ``prediction`` is the gold answer by the kit's grader (``False`` for no prediction)."""
    if prediction is None or not str(prediction).strip():
        return False
    from cogpo_kit.evaluation.grading import grade

    return bool(grade(str(prediction), str(gold), kind="math"))


def ends_with_boxed(text: str) -> bool:
    """Whether the last non-empty line of ``text`` holds a ``\\boxed{...}`` answer."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return bool(lines) and bool(find_boxed(lines[-1]))


def format_response(reasoning: str, answer: Optional[str], kind: AnswerKind = "short") -> str:
    """The assistant response of a training row: ``reasoning`` (stripped), then :data:`FINAL_LINE` for
    ``answer`` when the problem has a short answer and the reasoning's last line holds no boxed answer.

    ``answer`` must be the answer this reasoning reaches (for an incorrect CoT its own, never the gold
    one); with ``answer`` empty or ``None``, or for ``code``/``long`` problems, the reasoning is returned
    as it is. Idempotent.
    """
    text = (reasoning or "").strip()
    if kind != "short" or answer is None or not str(answer).strip() or ends_with_boxed(text):
        return text
    return f"{text}\n\n{FINAL_LINE.format(answer=str(answer).strip())}"
