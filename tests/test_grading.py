"""The math and multiple-choice graders: extraction, normalisation, equivalence, time limits, and
accuracy on labelled cases from public evaluators' test suites (tests/data/grader_cases.jsonl)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from cogpo_kit.answers.extraction import boxed_answer, extract_answer, find_boxed
from cogpo_kit.evaluation.choice import CHOICE_EXTRACTORS, extract_choice, grade_choice
from cogpo_kit.evaluation.grading import GradeResult, MathGrader, choice_verdicts, grade, grade_detailed
from cogpo_kit.evaluation.math_equivalence import check_math
from cogpo_kit.evaluation.math_normalize import normalize_answer, number_value, numbers_equal

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "grader_cases.jsonl").open(encoding="utf-8")]
MATH = [c for c in CASES if c["kind"] == "math"]
# Known disagreements with the upstream labels, each a deliberate choice of the kit's grader:
KNOWN_MISSES = {
    "case0028": "an answer in $...$ spanning lines is still read (math-verify's spec rejects it)",
    "case0029": "the same with \\( ... \\)",
    "case0289": "bare comma lists compare as sets: the MATH grader's string test says '10, 4, -2' != '4, 10, -2', "
                "but every bare list answer in MATH-500 is a set of solutions",
    "case0296": "the same for '0.1, 4, 2' vs '4, .1, 2'",
}
CHOICE = [c for c in CASES if c["kind"] == "choice"]


@pytest.fixture(scope="module")
def grader():
    g = MathGrader(timeout_s=2.0, grace_s=1.0, workers=2)
    yield g
    g.close()


# ---- extraction ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} here", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{2}, and so on. Finally \\fbox{7}", "7"),
    ("roots are \\boxed{1} and \\boxed{-2}.", "1, -2"),
    ("\\boxed 5", "5"),
    ("Therefore, the final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("The answer is 42.", "42"),
    ("Answer: 17", "17"),
    ("She has 5 apples and buys 12 more, so 17 in total", "17"),
    ("We got \\boxed{200} first. ... Final Answer: The final answer is $10,455$.", "10,455"),
    ("<think>maybe \\boxed{3}</think>The result is \\boxed{4}", "4"),
    ("10\\text{ units}", "10\\text{ units}"),
    ("no numbers here at all", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_boxed_with_unbalanced_braces_takes_rest_of_line():
    assert find_boxed("x \\boxed{\\frac{1}{2} oops\nnext")[0][2] == "\\frac{1}{2} oops"
    assert boxed_answer("nothing boxed") is None


# ---- normalisation ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,expected", [
    ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "( 3, \\frac{\\pi}{2} )"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("15\\text{ cm}^2", "15"),
    ("125 miles", "125"),
    ("\\$32,\\!348", "32,348"),
    ("14{,}916", "14,916"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("x = 5.", "x = 5"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_number_value_reads_exactly():
    assert number_value("1,000").value == 1000
    assert number_value("-1,024").value == -1024
    assert number_value("1 000 4/9").value * 9 == 9004
    assert number_value("\\frac{3}{4}").value * 4 == 3
    assert number_value(".5").decimals == 1
    assert number_value("4 4/0") is None
    assert number_value("12,34") is None  # not a valid thousands grouping
    assert numbers_equal(number_value("0.333"), number_value("1/3"))      # 3 decimals round from 1/3
    assert not numbers_equal(number_value("0.33"), number_value("1/3"))   # 2 decimals are too few
    assert not numbers_equal(number_value("7425001"), number_value("7425000"))


# ---- equivalence --------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,gold,ok", [
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{x = 5}", "5", True),
    ("\\boxed{28\\%}", "28", True),
    ("\\boxed{28\\%}", "0.28", True),
    ("\\boxed{28}", "0.28", False),
    ("\\boxed{(1, -2)}", "1,-2", True),
    ("\\boxed{[2,5)}", "[2,5)", True),
    ("\\boxed{[2,6)}", "[2,5)", False),
    ("\\boxed{(4,2)}", "(2,4)", False),
    ("\\boxed{\\sqrt[3]{8}}", "2", True),
    ("\\boxed{\\text{(C)}}", "\\text{C}", True),
    ("\\boxed{east}", "\\text{west}", False),
    ("The answer is 4 4/9.", "40/9", True),
    ("The answer is 4 4/9.", "4", False),
    ("\\boxed{2x+4y-3=0}", "y=-\\frac{1}{2}x+\\frac{3}{4}", True),
])
def test_check_math(pred, gold, ok):
    assert check_math(pred, gold).correct is ok


def test_public_api_grade(grader):
    assert grade("so \\boxed{\\dfrac{3}{4}}", "0.75") is True
    assert grade("so \\boxed{5}", "6") is False
    assert grade("The answer is (B).", "B", kind="choice") is True
    with pytest.raises(ValueError):
        grade("1", "1", kind="code")
    r = grade_detailed("\\boxed{12}", "12")
    assert isinstance(r, GradeResult) and r.correct and r.extracted == "12"


def test_stratified_fixture_cases(grader):
    """One case per upstream test function (the full set is the slow test below)."""
    picked: dict[str, dict] = {}
    for c in MATH:
        key = c["source"].split(" (")[0].split("(line")[0]
        picked.setdefault(f"{key}:{c['expected']}", c)
    cases = list(picked.values())
    res = grader.check_many([(c["pred"], c["gold"]) for c in cases])
    wrong = {c["id"] for c, r in zip(cases, res) if r.correct != c["expected"]}
    assert len(cases) >= 40
    assert wrong <= set(KNOWN_MISSES), wrong - set(KNOWN_MISSES)


@pytest.mark.slow
def test_full_fixture_beats_math_verify_defaults():
    """The whole labelled set: the kit's grader against math-verify's defaults on the same cases."""
    from math_verify import parse, verify

    with MathGrader(timeout_s=5.0, workers=2) as g:
        res = g.check_many([(c["pred"], c["gold"]) for c in MATH])
    mine = sum(r.correct == c["expected"] for r, c in zip(res, MATH))
    wrong = {c["id"] for r, c in zip(res, MATH) if r.correct != c["expected"]}
    assert wrong <= set(KNOWN_MISSES), wrong - set(KNOWN_MISSES)

    def mv(c):
        try:
            return bool(verify(parse(c["gold"]), parse(c["pred"])))
        except Exception:
            return False

    base = sum(mv(c) == c["expected"] for c in MATH)
    by_repo = defaultdict(lambda: [0, 0])
    for r, c in zip(res, MATH):
        by_repo[c["repo"]][0] += 1
        by_repo[c["repo"]][1] += r.correct == c["expected"]
    assert len(MATH) >= 300 and len(by_repo) == 4
    assert mine / len(MATH) >= 0.97, (mine, base)
    assert mine - base >= 0.05 * len(MATH), (mine, base)


def test_fixture_cites_every_source():
    for c in CASES:
        assert c["source"] and c["repo"] and c["file"], c["id"]
        assert isinstance(c["expected"], bool)
    assert {c["repo"] for c in MATH} == {"huggingface/Math-Verify", "huggingface/lighteval",
                                         "EleutherAI/lm-evaluation-harness", "hendrycks/math"}


# ---- time limits --------------------------------------------------------------------------------
def test_soft_timeout_is_a_wrong_answer_and_grader_keeps_working(grader):
    grader.start()
    start = time.monotonic()
    r = grader.check("\\boxed{9^{9^{9}}}", "5")
    assert r.timed_out and not r.correct and r.method == "timeout"
    assert time.monotonic() - start < grader.hard_factor * grader.timeout_s + grader.grace_s + 1
    assert grader.check("\\boxed{72}", "72").correct


def test_hard_timeout_kills_a_stuck_worker_and_restarts():
    with MathGrader(timeout_s=0.5, grace_s=0.5, hard_factor=1.0) as g:
        g.start()
        pid = g.worker_pids[0]
        os.kill(pid, signal.SIGSTOP)  # stuck: no signal-based limit can help
        start = time.monotonic()
        res = g.check_many([("\\boxed{1}", "1"), ("\\boxed{2}", "2"), ("\\boxed{3}", "4")])
        assert time.monotonic() - start < 10
        assert res[0].timed_out and res[0].method == "timeout"
        assert [r.correct for r in res[1:]] == [True, False]
        assert g.restarts == 1 and g.worker_pids and g.worker_pids[0] != pid


def test_grading_from_threads(grader):
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(grader.check(f"\\boxed{{{i}}}", str(i)).correct))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == [True] * 6


def test_check_many_keeps_order_across_workers(grader):
    pairs = [(f"The answer is {i}.", str(i if i % 3 else i + 1)) for i in range(150)]
    res = grader.check_many(pairs, chunk=16)
    assert [r.correct for r in res] == [bool(i % 3) for i in range(150)]


# ---- multiple choice ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CHOICE, ids=lambda c: c["id"])
def test_choice_cases_from_public_suites(case):
    assert (extract_choice(case["pred"]) == case["gold"]) is case["expected"]


def test_choice_extractors_side_by_side():
    text = "It's not A because it doesn't fit, therefore I think it's B"
    assert extract_choice(text, "strict") is None
    assert extract_choice(text, "flexible") == "B"
    assert choice_verdicts(text, "B") == {"strict": False, "leading": False, "flexible": True, "default": True}
    assert extract_choice("A train leaves at noon. The answer is (D).", "leading") is None
    assert extract_choice("\\boxed{\\text{(C)}}", "strict") == "C"
    assert extract_choice("Answer: **E**", "strict", n_choices=5) == "E"
    assert extract_choice("Answer: E", "strict", n_choices=4) is None
    assert set(CHOICE_EXTRACTORS) == {"strict", "leading", "flexible", "default"}
    with pytest.raises(ValueError):
        extract_choice("A", "psychic")
    with pytest.raises(ValueError):
        grade_choice("A", "AB")


def test_boxed_letters_and_boxed_option_texts():
    choices = ("Alina", "Bert", "Cecile", "Dora")
    assert extract_choice("Thinking it over, \\boxed{C}", "strict") == "C"
    assert extract_choice("So it is \\boxed{Cecile}.", "strict", choices=choices) == "C"
    assert extract_choice("So it is \\boxed{\\text{dora}}", "strict", choices=choices) == "D"
    assert extract_choice("\\boxed{(B) Bert}", "strict") == "B"
    assert extract_choice("\\boxed{C Cecile}", "strict", choices=choices) == "C"
    assert extract_choice("\\boxed{Zed}", "strict", choices=choices) is None
    assert extract_choice("\\boxed{Cecile}", "strict") is None  # no option texts given: no mapping
    math = ("$\\frac{1}{2}$", "$2$", "$\\sqrt{2}$", "$0$")
    assert extract_choice("hence \\boxed{\\frac{1}{2}}", "strict", choices=math) == "A"
    assert extract_choice("<think>\\boxed{A}</think>The answer is \\boxed{B}", "strict") == "B"
    assert extract_choice("<|begin_of_thought|>maybe (A)<|end_of_thought|>\n<|begin_of_solution|>\\boxed{D}"
                          "<|end_of_solution|>", "default") == "D"
    assert grade_choice("\\boxed{Cecile}", "C", choices=choices)
    assert grade_choice("\\boxed{C}", "Cecile", choices=choices)  # a gold given as its option text


def test_choice_prompt_asks_for_a_boxed_letter():
    from cogpo_kit.evaluation.benchmarks import Problem, build_prompt, get_benchmark

    p = Problem(id="x", question="Who?", gold="C", kind="choice", choices=("Alina", "Bert", "Cecile", "Dora"))
    text = build_prompt(p, get_benchmark("mmlu"))
    assert "(A, B, C or D) within \\boxed{}" in text and "(C) Cecile" in text
