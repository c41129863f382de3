"""Two grader fixes, tested through the public API that existed before them (so the tests run, and
fail, on the code before the fixes): a multiple-choice gold stored with its option text, and
thinking markers left inside an extracted answer (R1's ``</think>``, Bespoke's
``<|end_of_thought|>`` / ``<|begin_of_solution|>``)."""

from __future__ import annotations

import pytest

from cogpo_kit.evaluation.choice import grade_choice
from cogpo_kit.evaluation.grading import extract_answer, grade


# ---- gold letters given with their option text ----------------------------------------------------
@pytest.mark.parametrize("gold,letter", [
    ("(D) Alina", "D"), ("C Cecile", "C"), ("D. Alina", "D"), ("(b) 12 apples", "B"), ("C", "C"), ("(c)", "C"),
])
def test_choice_gold_with_option_text_is_read_as_its_letter(gold, letter):
    right = f"Comparing the options, the answer is ({letter})."
    wrong_letter = "A" if letter != "A" else "B"
    assert grade_choice(right, gold) is True
    assert grade_choice(f"The answer is ({wrong_letter}).", gold) is False
    assert grade(right, gold, kind="choice") is True


def test_choice_gold_without_any_letter_is_still_an_error():
    with pytest.raises(ValueError, match="letter"):
        grade_choice("The answer is (A).", "Alina")


# ---- no thinking marker inside an extracted answer ------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("<think>The sum is 3 + 4, so the answer is 7</think>", "7"),        # answer inside the thinking only
    ("<think>so the answer is 7.</think>", "7"),
    ("<think>so the answer is 5</think>\n\n", "5"),
    ("<|begin_of_thought|>so the answer is 5<|end_of_thought|>", "5"),  # Bespoke / OpenThoughts markers
    ("<|begin_of_thought|>\nTry x = 3: the answer is 3? No.\n<|end_of_thought|>\n\n<|begin_of_solution|>\n"
     "Hence x equals 4.\n<|end_of_solution|>", "4"),                               # the solution block, not the thought
    ("<|begin_of_thought|>maybe \\boxed{3}<|end_of_thought|>\n\n<|begin_of_solution|>\\boxed{9}", "9"),  # cut
    ("<think>maybe \\boxed{3}</think>The result is \\boxed{4}", "4"),
])
def test_no_thinking_marker_in_the_extracted_answer(text, expected):
    got = extract_answer(text)
    assert got == expected
    assert "</think>" not in got and "<|" not in got
