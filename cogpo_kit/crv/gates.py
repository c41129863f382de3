"""Checks a rewritten or corrupted CoT passes before it may become data, by the kind of problem.

- :func:`output_problem`: an output cut at ``max_tokens``, or whose thinking never closed, is not a
  finished reasoning process (outcomes ``truncated`` and ``thinking_unclosed``).
- :func:`answer_gate`: does a reasoning process reach the gold answer? Where the gold is a short final
  answer (math, multiple choice) the kit's grader compares the answer the text reaches; for a code
  problem the program in the text runs against the row's tests when the row has them; otherwise
  (code without tests, long free-form answers) nothing can be checked and the gate says so
  (``skipped_*``), so the funnel counts how often the gate did not apply.

Tests of a code row come from its ``meta``: ``test_cases`` or ``input_output`` (a JSON object with
``inputs``, ``outputs`` and optionally ``fn_name``, as in APPS, TACO and OpenThoughts), or a list of
LiveCodeBench-style test dicts (``input``, ``output``, ``testtype``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from cogpo_kit.answers.response import answer_kind, reached_answer, same_answer
from cogpo_kit.data.records import CoTRecord

CODE_TEST_FIELDS = ("test_cases", "input_output")
"""``meta`` fields a code row's tests are read from, first found wins."""


@dataclass(frozen=True)
class GateResult:
    """What the answer gate found for one text."""

    correct: Optional[bool]
    """``True``: reaches the gold answer (or passes every test); ``False``: does not; ``None``: not checkable."""
    outcome: str
    """``answer_matches``, ``wrong_final_answer``, ``no_final_answer``, ``tests_passed``, ``tests_failed``,
    ``no_code``, ``skipped_code_without_tests`` or ``skipped_long_answer``."""
    reached: Optional[str] = None
    """The answer the text reaches (short-answer problems)."""
    detail: dict = field(default_factory=dict)


def output_problem(text: str, finish_reason: Optional[str], think_end: Optional[str], *,
                   thinks: bool) -> Optional[str]:
    """Why an agent's output is not a finished text (``None`` when it is): ``truncated`` (cut at
    ``max_tokens``) or ``thinking_unclosed`` (a reasoning agent whose end-of-thinking marker never came)."""
    if finish_reason == "length":
        return "truncated"
    if thinks and think_end and think_end not in text:
        return "thinking_unclosed"
    return None


def row_tests(rec: CoTRecord) -> tuple[list, Optional[str]]:
    """``(tests, function name)`` of a code row from its ``meta``; ``([], None)`` when it has none."""
    from cogpo_kit.evaluation.code_tests import CodeTest

    for name in CODE_TEST_FIELDS:
        value = rec.meta.get(name)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"row '{rec.id}': meta field '{name}' is not JSON ({exc})") from None
        if isinstance(value, dict):
            ins, outs = value.get("inputs") or [], value.get("outputs") or []
            if len(ins) != len(outs):
                raise ValueError(f"row '{rec.id}': meta field '{name}' has {len(ins)} inputs and {len(outs)} outputs")
            fn = value.get("fn_name")
            kind = "functional" if fn else "stdin"
            tests = [CodeTest(_as_text(i, fn), _as_text(o, fn), kind) for i, o in zip(ins, outs)]
            return tests, fn
        if isinstance(value, list):
            tests = [CodeTest(str(t["input"]), str(t["output"]), t.get("testtype", "stdin")) for t in value]
            return tests, rec.meta.get("fn_name")
        raise ValueError(f"row '{rec.id}': meta field '{name}' must be an object or a list, got {type(value).__name__}")
    return [], None


def _as_text(value: Any, functional: Optional[str]) -> str:
    if functional:  # one JSON argument per line, as the functional runner reads them
        args = value if isinstance(value, list) else [value]
        return "\n".join(json.dumps(a) for a in args) if value is not None else ""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def answer_gate(rec: CoTRecord, text: str) -> GateResult:
    """Whether ``text`` reaches ``rec``'s gold answer, checked as the problem's kind allows."""
    kind = answer_kind(rec.answer)
    if kind == "short":
        reached = reached_answer(text)
        if reached is None:
            return GateResult(False, "no_final_answer")
        ok = same_answer(reached, rec.answer)
        return GateResult(ok, "answer_matches" if ok else "wrong_final_answer", reached)
    if kind == "code":
        tests, fn = row_tests(rec)
        if not tests:
            return GateResult(None, "skipped_code_without_tests")
        from cogpo_kit.evaluation.code_tests import extract_code, run_tests

        code = extract_code(text)
        if code is None:
            return GateResult(False, "no_code")
        verdicts = run_tests(code, tests, func_name=fn)
        ok = all(v.verdict == "pass" for v in verdicts)
        return GateResult(ok, "tests_passed" if ok else "tests_failed",
                          detail={"tests": len(tests), "verdicts": [v.verdict for v in verdicts]})
    return GateResult(None, "skipped_long_answer")
