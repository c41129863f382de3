"""Label parsing, the Table 13 prompts and the response format."""

from __future__ import annotations

import pytest

from cogpo_kit.crv import prompts
from cogpo_kit.answers.response import FINAL_LINE, ends_with_boxed, format_response
from cogpo_kit.crv.parse import completion_label, parse_label
from cogpo_kit.engines.base import Completion

LEVELS = ("easy", "medium", "hard")
YN = ("YES", "NO")


@pytest.mark.parametrize("text, want", [
    ("medium", "medium"),
    ("Medium", "medium"),
    ("  HARD.\n", "hard"),
    ("**Easy**", "easy"),
    ("'medium'", "medium"),
    ("The reasoning process is medium.", "medium"),
    ("Answer: hard", "hard"),
    ("Rating - easy (it skips steps)", "easy"),
    ("It is not easy; I would say medium", "medium"),
    ("<think>Hmm, maybe easy, maybe hard. Let me decide.</think>\nmedium", "medium"),
    ("<think>The answer is hard to judge</think> Easy.", "easy"),
    ("I think it's hard", "hard"),
    ("", None),
    ("   ", None),
    ("I cannot decide.", None),
    ("easygoing mediums hardly", None),
    ("<think>clearly medium</think>", None),
])
def test_parse_levels(text, want):
    assert parse_label(text, LEVELS) == want


@pytest.mark.parametrize("text, want", [
    ("YES", "YES"), ("yes", "YES"), ("No.", "NO"), ("**NO**", "NO"),
    ("Output: yes", "YES"),
    ("The reasoning has no errors, so YES", "YES"),
    ("<think>yes... no wait</think>NO", "NO"),
    ("Yesterday", None), ("maybe", None),
])
def test_parse_yes_no(text, want):
    assert parse_label(text, YN) == want


def test_completion_label_prefers_constrained_choice_and_rejects_errors():
    assert completion_label(Completion(text="<think>x</think>hard", choice="hard"), LEVELS) == "hard"
    assert completion_label(Completion(text="medium", choice=None), LEVELS) == "medium"
    assert completion_label(Completion(text="", finish_reason="error", error="boom"), LEVELS) is None
    assert completion_label(Completion(text="", finish_reason="empty"), LEVELS) is None


def test_table13_prompts_are_the_papers():
    assert prompts.CRITIC.startswith("You are a highly capable evaluator.")
    assert prompts.CRITIC.endswith("You must output exactly one word: easy, medium, or hard.")
    assert "- Hard: The reasoning process is overly complex" in prompts.CRITIC
    assert "extend the reasoning process by adding necessary details and intermediate steps" in prompts.RETHINKER_EASY
    assert "You should remove redundancies or use simpler method on the basis of correct answer." in prompts.RETHINKER_HARD
    assert prompts.VERIFIER.endswith("You must output exactly one word: YES or NO.")
    assert "introducing logical fallacies and misleading steps" in prompts.RETHINKER_INCORRECT
    for text in prompts.SYSTEM_PROMPTS.values():
        assert "(easy)" not in text and "(hard)" not in text and "(incorrect)" not in text


def test_build_messages_and_overrides():
    msgs = prompts.build_messages("critic", problem=" 1+1? ", answer="2", reasoning="1+1=2 {not a field}")
    assert msgs[0] == {"role": "system", "content": prompts.CRITIC}
    assert msgs[1]["content"] == "Problem:\n1+1?\n\nCorrect answer:\n2\n\nReasoning process:\n1+1=2 {not a field}"
    student = prompts.build_messages("student", problem="p", answer="SECRET", reasoning="r")
    assert "SECRET" not in student[1]["content"] and "\\boxed{}" in student[0]["content"]
    own = prompts.build_messages("verifier", problem="p", answer="a", reasoning="r", system_prompt="S",
                                 user_template="{reasoning} => {answer}? ({problem})")
    assert own == ({"role": "system", "content": "S"}, {"role": "user", "content": "r => a? (p)"})
    with pytest.raises(ValueError, match="unknown field"):
        prompts.check_template("{problem} {reasoning} {gold}", role="critic")
    with pytest.raises(ValueError, match="must contain"):
        prompts.check_template("{problem} only", role="critic")
    with pytest.raises(ValueError, match="unknown CRV role"):
        prompts.build_messages("teacher", problem="p", answer="a", reasoning="r")


def test_agent_config_rejects_a_bad_template():
    from cogpo_kit.params import load_params
    from cogpo_kit.params.loader import ParamsError

    with pytest.raises(ParamsError, match="unknown field"):
        load_params([], ["crv.critic.user_template='{problem} {reasoning} {oops}'"])


def test_format_response_ends_with_the_reached_answer():
    assert format_response("2+2=4", "4") == "2+2=4\n\n" + FINAL_LINE.format(answer="4")
    already = "So we get 5.\nThe answer is $\\boxed{5}$."
    assert format_response(already + "\n\n", "5") == already
    assert ends_with_boxed(already) and not ends_with_boxed("\\boxed{3} then more text\nand more")


def test_reached_answer_of_a_stated_computation_is_its_result():
    from cogpo_kit.answers.response import reached_answer

    assert reached_answer("Ella has 40 and Marion 24. So, the answer is 40 + 24 = 64.") == "64"
    assert reached_answer("We need x. Solving gives the answer is $x = 5$.") == "x = 5"
    assert reached_answer("No number at all here, just words and more words to make it long enough.") is None
