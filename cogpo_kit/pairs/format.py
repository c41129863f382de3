"""How training examples look: the student's prompt and a response that ends with its own answer.

Every SFT row and every preference pair uses the same user turn (the problem followed by the kit's
standard instruction to reason step by step and box the final answer) and the same response shape:
the reasoning, ending with the answer *that reasoning reaches* in ``\\boxed{}``. A correct CoT
(verified to reach the gold answer) ends with the gold answer; an incorrect CoT ends with the answer
it reaches itself, never with the gold answer.
"""

from __future__ import annotations

import re
from typing import Optional

DEFAULT_PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
"""User turn of every training prompt; ``{problem}`` is replaced by the problem text."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def student_messages(problem: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> list[dict]:
    """The chat prompt of one problem: a single user turn."""
    return [{"role": "user", "content": template.format(problem=problem.strip())}]


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; ``None`` if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def _fallback_extract(text: str) -> Optional[str]:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = re.search(r"answer is[:\s]*\$?([^\n$]+)", text, flags=re.IGNORECASE)
    if m:
        return m.group(1).strip().rstrip(".")
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def extract_answer(text: str) -> Optional[str]:
    """The final answer a text reaches: the kit's grader when present, else boxed / "answer is" / last number."""
    try:
        from cogpo_kit.evaluation.grading import extract_answer as grader_extract
    except ImportError:
        return _fallback_extract(text)
    return grader_extract(text)


def _normalise(ans: str) -> str:
    s = ans.strip().strip("$").strip()
    s = re.sub(r"\\(?:text|mathrm|textbf)\{([^}]*)\}", r"\1", s)
    s = s.replace(",", "").replace(" ", "").rstrip(".")
    try:
        return repr(float(s))
    except ValueError:
        return s.lower()


def same_answer(prediction: Optional[str], gold: str) -> bool:
    """Whether ``prediction`` equals the gold answer (the kit's grader when present, else normalised equality)."""
    if prediction is None or not str(prediction).strip():
        return False
    try:
        from cogpo_kit.evaluation.grading import grade
    except ImportError:
        return _normalise(str(prediction)) == _normalise(str(gold))
    return bool(grade(str(prediction), str(gold)))


def format_response(reasoning: str, answer: Optional[str]) -> str:
    """The assistant response: ``reasoning``, then ``\\boxed{answer}`` unless the text already ends in a boxed answer.

    ``answer`` must be the answer this reasoning reaches (for incorrect CoTs: their own, never the gold one).
    With ``answer`` empty or ``None`` the reasoning is returned as it is. Idempotent.
    """
    text = reasoning.strip()
    if last_boxed(text) is not None or answer is None or not str(answer).strip():
        return text
    return f"{text}\n\nThe final answer is $\\boxed{{{str(answer).strip()}}}$."
