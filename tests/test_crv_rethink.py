"""The Rethinker / Verifier loop, the incorrect CoTs, ablations, Verifier modes and the Critic studies."""

from __future__ import annotations

from collections import defaultdict

import pytest

from cogpo_kit.answers.response import FINAL_LINE
from cogpo_kit.crv.agents import ROLES, agents_on
from cogpo_kit.crv.config import CRVParams
from cogpo_kit.crv.rethink import Rethink, incorrect_row, sft_row
from cogpo_kit.crv.scheduler import Scheduler
from cogpo_kit.crv.studies import ModelCoT, equal_level_subsets, rate_models
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.engines.scripted import ScriptedEngine

REC = CoTRecord(id="r1", problem="Tom has 3 apples and buys 4 more. How many?", answer="7",
                reasoning="3+4=7")


def reasoning_of(req) -> str:
    return req.messages[-1]["content"].rsplit("Reasoning process:\n", 1)[-1]


class Script:
    """Answers per role; each entry is ``f(reasoning, sample_index) -> str``. Records every request."""

    def __init__(self, **roles):
        self.roles = roles
        self.log = defaultdict(list)

    def __call__(self, req, i):
        self.log[req.tag].append((reasoning_of(req), i, req))
        return self.roles[req.tag](reasoning_of(req), i)


def run(script, crv, jobs_of):
    engine = ScriptedEngine(script)
    agents = agents_on(engine, crv, roles=ROLES)
    rt = Rethink(agents, crv)
    return Scheduler(agents).run(jobs_of(rt)), engine


def by_index(*outputs):
    return lambda reasoning, i: outputs[i]


def test_medium_is_verified_and_kept_or_discarded():
    for verdict, kept, reason in (("YES", True, None), ("NO", False, "medium_verifier_no")):
        script = Script(verifier=lambda r, i, v=verdict: v)
        (out,), _ = run(script, CRVParams(), lambda rt: [rt.example(REC, "medium")])
        assert out.kept is kept and out.reason == reason
        assert out.attempts[0]["verification"]["verdict"] == verdict
        assert [r for r, _, _ in script.log["verifier"]] == ["3+4=7"]
    script = Script()
    (out,), _ = run(script, CRVParams(verify_medium=False), lambda rt: [rt.example(REC, "medium")])
    assert out.kept and out.attempts[0]["outcome"] == "kept_unverified" and not script.log


def test_failed_attempt_goes_back_to_the_rethinker_with_a_new_sample_index():
    script = Script(
        expand=by_index("First 3, then 4: 3+4 = 7 apples", "Tom starts with 3. He buys 4. 3 + 4 = 7."),
        verifier=lambda r, i: "NO" if r.startswith("First") else "YES",
        critic=lambda r, i: "medium",
    )
    (out,), _ = run(script, CRVParams(), lambda rt: [rt.example(REC, "easy")])
    assert out.kept and out.origin == "easy*" and out.attempt == 2
    assert [i for _, i, _ in script.log["expand"]] == [0, 1]
    assert all(r == "3+4=7" for r, _, _ in script.log["expand"])  # always rewrites the original
    assert [a["outcome"] for a in out.attempts] == ["verifier_no", "kept"]
    assert out.attempts[1]["rerating"]["level"] == "medium"
    row = sft_row(REC, out)
    assert row["reasoning"] == "Tom starts with 3. He buys 4. 3 + 4 = 7."
    assert row["response"].endswith(FINAL_LINE.format(answer="7")) and row["origin"] == "easy*"
    # the Critic re-rated with early exit: two agreeing votes
    assert len(script.log["critic"]) == 2


def test_rerated_not_medium_and_wrong_answers_fail_until_discarded():
    script = Script(
        simplify=by_index("Long way: 3 plus 4 makes 7 apples.", "Short: 3 plus 4 makes 8 apples.",
                          "Long again: 3 plus 4 makes 7 apples."),
        verifier=lambda r, i: "YES",
        critic=lambda r, i: "hard" if "Long" in r else "medium",
    )
    (out,), _ = run(script, CRVParams(max_attempts=3, check_final_answer=True), lambda rt: [rt.example(REC, "hard")])
    assert not out.kept and out.reason == "max_attempts"
    assert [a["outcome"] for a in out.attempts] == ["rerated_hard", "wrong_final_answer", "rerated_hard"]
    # the wrong-answer rewrite never reached the Verifier
    assert [r[:10] for r, _, _ in script.log["verifier"]] == ["Long way: ", "Long again"]


def test_empty_and_error_rewrites_are_counted_attempts():
    from cogpo_kit.engines.base import Completion

    script = Script(expand=by_index("", Completion(text="", finish_reason="error", error="timeout"),
                                    "He has 3 + 4 = 7 apples."),
                    verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    (out,), _ = run(script, CRVParams(), lambda rt: [rt.example(REC, "easy")])
    assert [a["outcome"] for a in out.attempts] == ["empty_rewrite", "rethinker_error", "kept"]
    assert out.attempts[1]["error"] == "timeout"


def test_garbage_labels_are_reasked_then_fail_the_attempt():
    script = Script(expand=lambda r, i: "He has 3 + 4 = 7 apples.", verifier=lambda r, i: "Banana")
    crv = CRVParams(verifier=CRVParams().verifier.__class__(constrained=False, max_reasks=2), max_attempts=1)
    (out,), _ = run(script, crv, lambda rt: [rt.example(REC, "easy")])
    assert out.attempts[0]["outcome"] == "verifier_invalid" and out.reason == "max_attempts"
    assert [i for _, i, _ in script.log["verifier"]] == [0, 1, 2]


@pytest.mark.parametrize("ablation", ["C", "CR", "CRV"])
def test_ablations(ablation):
    script = Script(expand=lambda r, i: "He has 3 + 4 = 8 apples.", verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    crv = CRVParams(ablation=ablation, check_final_answer=True)
    outs, _ = run(script, crv, lambda rt: [rt.example(REC, "medium"), rt.example(REC, "easy")])
    medium, easy = outs
    assert medium.kept
    if ablation == "C":
        assert not easy.kept and easy.reason == "not_medium_ablation_C"
        assert not script.log  # no agent was asked anything
    elif ablation == "CR":
        # Table 6 "w. CR": the first rewrite, neither verified nor re-rated; its response ends with its own answer
        assert easy.kept and easy.attempt == 1 and "verifier" not in script.log and "critic" not in script.log
        assert sft_row(REC, easy)["response"].endswith(FINAL_LINE.format(answer="8"))
    else:
        assert not easy.kept and {a["outcome"] for a in easy.attempts} == {"wrong_final_answer"}
        assert len(script.log["verifier"]) == 1  # medium only


def test_student_solve_verifier_mode_follows_the_cot_without_the_answer():
    script = Script(
        expand=by_index("He has 3 + 4 = 7 apples (bad).", "He has 3 + 4 = 7 apples (good)."),
        student=lambda r, i: "Following it: \\boxed{7}" if "good" in r else "I get \\boxed{12}",
        critic=lambda r, i: "medium",
    )
    (out,), _ = run(script, CRVParams(verifier_mode="student_solve"), lambda rt: [rt.example(REC, "easy")])
    assert out.kept and out.attempt == 2
    v = out.attempts[0]["verification"]
    assert v["mode"] == "student_solve" and v["verdict"] == "NO" and v["student_answer"] == "12"
    req = script.log["student"][0][2]
    assert "Correct answer" not in req.messages[1]["content"] and req.choices is None
    assert "verifier" not in script.log


def test_incorrect_cot_must_not_reach_the_gold_answer():
    script = Script(corrupt=by_index("He has 3 + 4 = 7 apples.", "3*4 = 12, so the answer is 12", "unused"))
    (out,), _ = run(script, CRVParams(incorrect_check="answer_differs"), lambda rt: [rt.incorrect(REC)])
    assert out.found and out.attempt == 2 and out.reached == "12"
    assert [a["outcome"] for a in out.attempts] == ["reaches_gold", "kept"]
    row = incorrect_row(REC, out, "easy")
    assert row["reached_answer"] == "12" and row["answer"] == "7"
    assert row["response"].endswith(FINAL_LINE.format(answer="12")) and "boxed{7}" not in row["response"]


def test_incorrect_cot_as_the_paper_makes_it_is_not_checked():
    """Paper (Table 13 prompt, Tables 11-12): the corrupted CoT is kept as written, even when it reaches the gold."""
    script = Script(corrupt=by_index("He has 3 + 4 = 7 apples.", "unused"), verifier=lambda r, i: "YES")
    (out,), _ = run(script, CRVParams(), lambda rt: [rt.incorrect(REC)])
    assert out.found and out.attempt == 1 and out.reached == "7" and "verifier" not in script.log
    assert [a["outcome"] for a in out.attempts] == ["kept_unchecked"]
    assert incorrect_row(REC, out, "easy")["response"].endswith(FINAL_LINE.format(answer="7"))


def test_incorrect_cot_optional_verifier_no_and_exhaustion():
    script = Script(corrupt=by_index("He has 3 - 4 = -1 apples.", "Nothing numeric here", "He has 3 * 4 = 12 apples."),
                    verifier=lambda r, i: "YES" if "-1" in r else "NO")
    (out,), _ = run(script, CRVParams(incorrect_check="verifier_no"), lambda rt: [rt.incorrect(REC)])
    assert [a["outcome"] for a in out.attempts] == ["verifier_yes", "no_final_answer", "kept"]
    script = Script(corrupt=lambda r, i: "He has 3 + 4 = 7 apples.")
    (out,), _ = run(script, CRVParams(incorrect_max_attempts=2, incorrect_check="answer_differs"),
                    lambda rt: [rt.incorrect(REC)])
    assert not out.found and out.reason == "max_attempts" and len(out.attempts) == 2


def test_no_critic_label_is_a_counted_discard():
    (out,), engine = run(Script(), CRVParams(), lambda rt: [rt.example(REC, None, "no_majority")])
    assert not out.kept and out.reason == "critic_no_majority" and engine.calls == 0


def test_equal_level_subsets():
    recs = [CoTRecord(id=f"x{i}", problem=f"p{i}", answer=str(i), reasoning=f"r {i}") for i in range(12)]
    levels = {f"x{i}": ("easy", "medium", "hard", "medium")[i % 4] for i in range(12)}
    subsets, notes = equal_level_subsets(recs, levels, 2, seed=3)
    assert {k: len(v) for k, v in subsets.items()} == {"easy": 2, "medium": 2, "hard": 2} and not notes
    assert all(levels[r["id"]] == lv for lv, rows in subsets.items() for r in rows)
    assert subsets == equal_level_subsets(recs, levels, 2, seed=3)[0]
    big, notes = equal_level_subsets(recs, levels, 5)
    assert {len(v) for v in big.values()} == {3} and "not 5" in notes[0]
    assert big["hard"][0]["response"].endswith(FINAL_LINE.format(answer="2"))


def test_rate_models_tabulates_levels_per_model():
    def critic(r, i):
        return "hard" if "long" in r else ("easy" if "short" in r else "medium")

    engine = ScriptedEngine(lambda req, i: critic(reasoning_of(req), i))
    agents = agents_on(engine, CRVParams(), roles=("critic",))
    items = [ModelCoT("1.5B", "p1", "short"), ("1.5B", "p2", "short"), ("1.5B", "p3", "ok"),
             {"model": "32B", "problem": "p1", "cot": "long long"}, ("32B", "p2", "ok", "4")]
    out = rate_models(items, agents)
    assert out["table"] == {"1.5B": {"easy": 2, "medium": 1, "hard": 0, "none": 0},
                            "32B": {"easy": 0, "medium": 1, "hard": 1, "none": 0}}
    assert engine.calls == 10 and "| easy | 2 | 0 |" in out["markdown"]
    with pytest.raises(ValueError, match="item 0"):
        rate_models([("only", "two")], agents)


def test_truncated_or_unclosed_outputs_never_become_data():
    from cogpo_kit.engines.base import Completion

    cut = Completion(text="Tom has 3 apples and then he", finish_reason="length", completion_tokens=8)
    script = Script(expand=by_index(cut, "He has 3 + 4 = 7 apples."), corrupt=by_index(cut, "3 * 4 = 12."),
                    verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    outs, _ = run(script, CRVParams(), lambda rt: [rt.example(REC, "easy"), rt.incorrect(REC)])
    easy, inc = outs
    assert [a["outcome"] for a in easy.attempts] == ["truncated", "kept"] and easy.attempt == 2
    assert [a["outcome"] for a in inc.attempts] == ["truncated", "kept_unchecked"] and inc.reached == "12"
    assert "Tom has 3 apples and then he" not in (easy.reasoning, inc.reasoning)


def test_a_reasoning_agent_whose_thinking_never_closed_fails_its_attempt():
    from cogpo_kit.engines.config import EngineParams

    thinking = CRVParams().rethinker.__class__(engine=EngineParams(thinking_end="</think>"))
    crv = CRVParams(rethinker=thinking)
    script = Script(expand=by_index("<think>Let me expand this, 3 + 4", "<think>ok</think>He has 3 + 4 = 7 apples."),
                    verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    (out,), _ = run(script, crv, lambda rt: [rt.example(REC, "easy")])
    assert [a["outcome"] for a in out.attempts] == ["thinking_unclosed", "kept"]
    assert out.reasoning == "He has 3 + 4 = 7 apples."


# --- the final-answer gate by problem kind (Bespoke-Stratos code rows) ------------------------------
BESPOKE_CODE_PROBLEM = ("Generate an executable Python function generated from the given prompt. The function should "
                        "take stdin as input and print the output. Simply call the function after the definition."
                        "Read two integers a and b from one line and print their sum.")
CODE_SOLUTION = "```python\ndef main():\n    a, b = map(int, input().split())\n    print(a + b)\n\nmain()\n```"


def bespoke_code_record(tmp_path, **extra) -> CoTRecord:
    """A code row in Bespoke-Stratos' own format, read by the kit's loader."""
    import json

    from cogpo_kit.data.loaders import load_source

    row = {"system": "Your role as an assistant involves thoroughly exploring questions ...",
           "conversations": [
               {"from": "user", "value": BESPOKE_CODE_PROBLEM},
               {"from": "assistant", "value": "<|begin_of_thought|>\n\nWe split the line, convert, add.\n\n"
                                              "<|end_of_thought|>\n\n<|begin_of_solution|>\n\n" + CODE_SOLUTION
                                              + "\n\n<|end_of_solution|>"}],
           **extra}
    path = tmp_path / "bespoke.jsonl"
    path.write_text(json.dumps(row) + "\n")
    records, _ = load_source("bespoke_stratos", path=path)
    return records[0]


def test_code_rewrite_without_tests_is_kept_and_the_skipped_gate_counted(tmp_path):
    rec = bespoke_code_record(tmp_path)
    rewrite = "First read the two numbers, then add them.\n\n" + CODE_SOLUTION
    script = Script(expand=lambda r, i: rewrite, verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    crv = CRVParams(check_final_answer=True)
    (out,), _ = run(script, crv, lambda rt: [rt.example(rec, "easy")])
    assert out.kept and out.attempt == 1 and out.attempts[0]["gate"] == "skipped_code_without_tests"
    row = sft_row(rec, out)
    assert row["response"] == rewrite  # a code response carries its own solution: no boxed line
    from cogpo_kit.crv.funnel import rethink_funnel
    funnel = rethink_funnel({"easy": 1, "medium": 0, "hard": 0, "none": 0}, [out], [])
    assert funnel["answer_gate"]["rewrite"] == {"skipped_code_without_tests": 1}


def test_code_rewrite_runs_against_the_row_tests(tmp_path):
    import json

    tests = json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]})
    rec = bespoke_code_record(tmp_path, test_cases=tests)
    wrong = "Subtract them.\n\n" + CODE_SOLUTION.replace("a + b", "a - b")
    right = "Add them.\n\n" + CODE_SOLUTION
    script = Script(expand=by_index(wrong, right), verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    (out,), _ = run(script, CRVParams(check_final_answer=True), lambda rt: [rt.example(rec, "easy")])
    assert [a["outcome"] for a in out.attempts] == ["tests_failed", "kept"]
    assert out.attempts[1]["gate"] == "tests_passed" and out.reasoning == right
