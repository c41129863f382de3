"""Deciding whether a predicted math answer equals the reference answer.

The kit's extraction (:mod:`cogpo_kit.answers.extraction`) and normalisation (:mod:`math_normalize`) run
first; then, from cheapest to dearest:

1. equal normalised strings (spaces ignored);
2. exact numbers (``Fraction``) when both sides read as plain numbers, which also decides a
   mismatch without symbolic work;
3. text answers (``\\text{Evelyn}``, ``(C)``, ``odd``) compared as words;
4. math-verify (``parse`` + ``verify``) on every pair of readings, wrapped in ``$...$`` so bare LaTeX
   such as ``\\sqrt[3]{8}`` is parsed;
5. math-verify on the raw texts, with its own extraction, when the kit found no answer.

This module does no time limiting itself: :mod:`grading` runs it in a worker process with a
soft (signal) and a hard (kill) time limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from cogpo_kit.answers.extraction import extract_answer, find_boxed, is_bare_answer
from cogpo_kit.evaluation.math_normalize import Form, answer_forms, number_value, numbers_equal, strip_delimiters


@dataclass(frozen=True)
class MathCheck:
    """The outcome of one comparison."""

    correct: bool
    pred_answer: Optional[str]
    """What was taken as the prediction's answer (``None``: nothing found)."""
    gold_answer: Optional[str]
    method: str
    """Which step decided: ``string``, ``number``, ``text``, ``math_verify``, ``math_verify_raw``,
    ``no_answer``, ``mismatch`` (or ``timeout`` / ``error`` from :mod:`grading`)."""


def gold_answer_of(gold: str) -> Optional[str]:
    """The reference answer: a bare answer as given, else what extraction finds in the solution."""
    text = str(gold).strip()
    if not text:
        return None
    if not find_boxed(text) and is_bare_answer(strip_delimiters(text)):
        return text
    return extract_answer(text)


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s).rstrip(".")


_TEXT_ONLY = re.compile(r"^[\sA-Za-z()'.,\-]+$")


def _text_key(s: str) -> Optional[str]:
    """Lower-case letters of an answer that is words (or a choice letter), else ``None``."""
    if not _TEXT_ONLY.match(s) or re.search(r"\d", s):
        return None
    letters = re.sub(r"[^a-z ]", "", s.lower()).split()
    key = " ".join(letters)
    if not key:
        return None
    # single letters are variables unless written like a choice "(C)" / "C"
    if len(key) == 1 or any(len(w) >= 2 for w in letters):
        return key.replace(" ", "")
    return None


def _mv_parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(text, extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
                 parsing_timeout=None)


def _mv_verify(gold, pred) -> bool:
    from math_verify import verify

    return bool(verify(gold, pred, timeout_seconds=None))


def _wrap(s: str) -> str:
    return "$" + s.replace("$", "") + "$"


def compare_answers(pred_answer: str, gold_answer: str) -> tuple[bool, str]:
    """Compare two extracted answers; returns ``(equal, method)``."""
    pforms = answer_forms(pred_answer)
    gforms = answer_forms(gold_answer)
    if not pforms or not gforms:
        return False, "no_answer"
    # 1. strings
    gkeys = {_squash(g.text) for g in gforms}
    if any(_squash(p.text) in gkeys for p in pforms):
        return True, "string"
    # 2. numbers
    pnums = [(p, number_value(p.text)) for p in pforms]
    gnums = [(g, number_value(g.text)) for g in gforms]
    for p, pn in pnums:
        for g, gn in gnums:
            if pn is not None and gn is not None and not (p.percent_scaled and g.percent_scaled):
                if numbers_equal(pn, gn):
                    return True, "number"
    if pnums[0][1] is not None and gnums[0][1] is not None:
        return False, "number"
    # 3. words
    pk, gk = _text_key(pforms[0].text), _text_key(gforms[0].text)
    if pk is not None and gk is not None:
        return pk == gk, "text"
    # 4. math-verify on the readings
    gparsed = [(g, _mv_parse(_wrap(g.text))) for g in gforms]
    for p in pforms:
        pp = _mv_parse(_wrap(p.text))
        if not pp:
            continue
        for g, gp in gparsed:
            if gp and not (p.percent_scaled and g.percent_scaled) and _mv_verify(gp, pp):
                return True, "math_verify"
    return False, "mismatch"


def check_math(prediction: str, gold: str) -> MathCheck:
    """Extract, normalise and compare (no time limit here; see :func:`grading.grade`)."""
    gold_ans = gold_answer_of(gold)
    pred_ans = extract_answer(prediction)
    if gold_ans is None:
        return MathCheck(False, pred_ans, None, "no_gold")
    if pred_ans is None:
        ok = _mv_verify(_mv_parse(str(gold)), _mv_parse(str(prediction))) if str(prediction).strip() else False
        return MathCheck(ok, None, gold_ans, "math_verify_raw" if ok else "no_answer")
    ok, method = compare_answers(pred_ans, gold_ans)
    return MathCheck(ok, pred_ans, gold_ans, method)


def forms_of(answer: str) -> list[Form]:
    """The readings the grader considers for an answer (for inspection in notebooks)."""
    return answer_forms(answer)
