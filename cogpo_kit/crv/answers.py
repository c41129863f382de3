"""Final answers of reasoning processes, and the response a training row shows.

The answer a reasoning process reaches is read with the kit's grader
(:func:`cogpo_kit.evaluation.grading.extract_answer`) and compared with the gold answer by
:func:`cogpo_kit.evaluation.grading.grade`. A response is the reasoning followed by a final line
``The final answer is \\boxed{<answer the reasoning reaches>}``, unless its last line already holds
a boxed answer.
"""

from __future__ import annotations

import re
from typing import Optional

from cogpo_kit.evaluation.grading import extract_answer, grade

_FINAL_LINE = "The final answer is \\boxed{{{answer}}}"
_ARITHMETIC = re.compile(r"[\d\s+\-*/×÷^().,$=]+")


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
    """Whether ``prediction`` is the gold answer by the kit's grader."""
    if prediction is None:
        return False
    return bool(grade(prediction, gold, kind="math"))


def ends_with_boxed(text: str) -> bool:
    """Whether the last non-empty line of ``text`` holds a ``\\boxed{...}`` answer."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return bool(lines) and "\\boxed{" in lines[-1]


def final_response(reasoning: str, answer: str) -> str:
    """The reasoning, ending with the final-answer line for ``answer`` (the answer it reaches)."""
    body = reasoning.rstrip()
    if ends_with_boxed(body):
        return body
    return f"{body}\n\n{_FINAL_LINE.format(answer=answer)}"
