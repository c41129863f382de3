"""The Rethinker / Verifier loop, the incorrect CoTs, ablations, Verifier modes and the Critic studies."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from cogpo_kit.crv.agents import ROLES, agents_on
from cogpo_kit.crv.config import CRVConfig
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
        (out,), _ = run(script, CRVConfig(), lambda rt: [rt.example(REC, "medium")])
        assert out.kept is kept and out.reason == reason
        assert out.attempts[0]["verification"]["verdict"] == verdict
        assert [r for r, _, _ in script.log["verifier"]] == ["3+4=7"]
    script = Script()
    (out,), _ = run(script, CRVConfig(verify_medium=False), lambda rt: [rt.example(REC, "medium")])
    assert out.kept and out.attempts[0]["outcome"] == "kept_unverified" and not script.log


def test_failed_attempt_goes_back_to_the_rethinker_with_a_new_sample_index():
    script = Script(
        expand=by_index("First 3, then 4: 3+4 = 7 apples", "Tom starts with 3. He buys 4. 3 + 4 = 7."),
        verifier=lambda r, i: "NO" if r.startswith("First") else "YES",
        critic=lambda r, i: "medium",
    )
    (out,), _ = run(script, CRVConfig(), lambda rt: [rt.example(REC, "easy")])
    assert out.kept and out.origin == "easy*" and out.attempt == 2
    assert [i for _, i, _ in script.log["expand"]] == [0, 1]
    assert all(r == "3+4=7" for r, _, _ in script.log["expand"])  # always rewrites the original
    assert [a["outcome"] for a in out.attempts] == ["verifier_no", "kept"]
    assert out.attempts[1]["rerating"]["level"] == "medium"
    row = sft_row(REC, out)
    assert row["reasoning"] == "Tom starts with 3. He buys 4. 3 + 4 = 7."
    assert row["response"].endswith("The final answer is \\boxed{7}") and row["origin"] == "easy*"
    # the Critic re-rated with early exit: two agreeing votes
    assert len(script.log["critic"]) == 2


def test_rerated_not_medium_and_wrong_answers_fail_until_discarded():
    script = Script(
        simplify=by_index("Long way: 3 plus 4 makes 7 apples.", "Short: 3 plus 4 makes 8 apples.",
                          "Long again: 3 plus 4 makes 7 apples."),
        verifier=lambda r, i: "YES",
        critic=lambda r, i: "hard" if "Long" in r else "medium",
    )
    (out,), _ = run(script, CRVConfig(max_attempts=3), lambda rt: [rt.example(REC, "hard")])
    assert not out.kept and out.reason == "max_attempts"
    assert [a["outcome"] for a in out.attempts] == ["rerated_hard", "wrong_final_answer", "rerated_hard"]
    # the wrong-answer rewrite never reached the Verifier
    assert [r[:10] for r, _, _ in script.log["verifier"]] == ["Long way: ", "Long again"]


def test_empty_and_error_rewrites_are_counted_attempts():
    from cogpo_kit.engines.base import Completion

    script = Script(expand=by_index("", Completion(text="", finish_reason="error", error="timeout"),
                                    "He has 3 + 4 = 7 apples."),
                    verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    (out,), _ = run(script, CRVConfig(), lambda rt: [rt.example(REC, "easy")])
    assert [a["outcome"] for a in out.attempts] == ["empty_rewrite", "rethinker_error", "kept"]
    assert out.attempts[1]["error"] == "timeout"


def test_garbage_labels_are_reasked_then_fail_the_attempt():
    script = Script(expand=lambda r, i: "He has 3 + 4 = 7 apples.", verifier=lambda r, i: "Banana")
    crv = CRVConfig(verifier=CRVConfig().verifier.__class__(constrained=False, max_reasks=2), max_attempts=1)
    (out,), _ = run(script, crv, lambda rt: [rt.example(REC, "easy")])
    assert out.attempts[0]["outcome"] == "verifier_invalid" and out.reason == "max_attempts"
    assert [i for _, i, _ in script.log["verifier"]] == [0, 1, 2]


@pytest.mark.parametrize("ablation", ["C", "CR", "CRV"])
def test_ablations(ablation):
    script = Script(expand=lambda r, i: "He has 3 + 4 = 8 apples.", verifier=lambda r, i: "YES", critic=lambda r, i: "medium")
    outs, _ = run(script, CRVConfig(ablation=ablation), lambda rt: [rt.example(REC, "medium"), rt.example(REC, "easy")])
    medium, easy = outs
    assert medium.kept
    if ablation == "C":
        assert not easy.kept and easy.reason == "not_medium_ablation_C"
        assert not script.log  # no agent was asked anything
    elif ablation == "CR":
        # rewrites without verification: the wrong answer is not checked, and the response ends with it
        assert easy.kept and "verifier" not in script.log
        assert sft_row(REC, easy)["response"].endswith("\\boxed{8}")
    else:
        assert not easy.kept and {a["outcome"] for a in easy.attempts} == {"wrong_final_answer"}
        assert len(script.log["verifier"]) == 1  # medium only


def test_student_solve_verifier_mode_follows_the_cot_without_the_answer():
    script = Script(
        expand=by_index("He has 3 + 4 = 7 apples (bad).", "He has 3 + 4 = 7 apples (good)."),
        student=lambda r, i: "Following it: \\boxed{7}" if "good" in r else "I get \\boxed{12}",
        critic=lambda r, i: "medium",
    )
    (out,), _ = run(script, CRVConfig(verifier_mode="student_solve"), lambda rt: [rt.example(REC, "easy")])
    assert out.kept and out.attempt == 2
    v = out.attempts[0]["verification"]
    assert v["mode"] == "student_solve" and v["verdict"] == "NO" and v["student_answer"] == "12"
    req = script.log["student"][0][2]
    assert "Correct answer" not in req.messages[1]["content"] and req.choices is None
    assert "verifier" not in script.log


def test_incorrect_cot_must_not_reach_the_gold_answer():
    script = Script(corrupt=by_index("He has 3 + 4 = 7 apples.", "3*4 = 12, so the answer is 12", "unused"))
    (out,), _ = run(script, CRVConfig(), lambda rt: [rt.incorrect(REC)])
    assert out.found and out.attempt == 2 and out.reached == "12"
    assert [a["outcome"] for a in out.attempts] == ["reaches_gold", "kept"]
    row = incorrect_row(REC, out, "easy")
    assert row["reached_answer"] == "12" and row["answer"] == "7"
    assert row["response"].endswith("The final answer is \\boxed{12}") and "boxed{7}" not in row["response"]


def test_incorrect_cot_optional_verifier_no_and_exhaustion():
    script = Script(corrupt=by_index("He has 3 - 4 = -1 apples.", "Nothing numeric here", "He has 3 * 4 = 12 apples."),
                    verifier=lambda r, i: "YES" if "-1" in r else "NO")
    (out,), _ = run(script, CRVConfig(incorrect_require_verifier_no=True), lambda rt: [rt.incorrect(REC)])
    assert [a["outcome"] for a in out.attempts] == ["verifier_yes", "no_final_answer", "kept"]
    script = Script(corrupt=lambda r, i: "He has 3 + 4 = 7 apples.")
    (out,), _ = run(script, CRVConfig(incorrect_max_attempts=2), lambda rt: [rt.incorrect(REC)])
    assert not out.found and out.reason == "max_attempts" and len(out.attempts) == 2


def test_no_critic_label_is_a_counted_discard():
    (out,), engine = run(Script(), CRVConfig(), lambda rt: [rt.example(REC, None, "no_majority")])
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
    assert big["hard"][0]["response"].endswith("\\boxed{2}")


def test_rate_models_tabulates_levels_per_model():
    def critic(r, i):
        return "hard" if "long" in r else ("easy" if "short" in r else "medium")

    engine = ScriptedEngine(lambda req, i: critic(reasoning_of(req), i))
    agents = agents_on(engine, CRVConfig(), roles=("critic",))
    items = [ModelCoT("1.5B", "p1", "short"), ("1.5B", "p2", "short"), ("1.5B", "p3", "ok"),
             {"model": "32B", "problem": "p1", "cot": "long long"}, ("32B", "p2", "ok", "4")]
    out = rate_models(items, agents)
    assert out["table"] == {"1.5B": {"easy": 2, "medium": 1, "hard": 0, "none": 0},
                            "32B": {"easy": 0, "medium": 1, "hard": 1, "none": 0}}
    assert engine.calls == 10 and "| easy | 2 | 0 |" in out["markdown"]
    with pytest.raises(ValueError, match="item 0"):
        rate_models([("only", "two")], agents)
