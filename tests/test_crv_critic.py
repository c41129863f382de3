"""The Critic's vote: early exit gives the labels of full votes on the same samples; re-asks; width."""

from __future__ import annotations

import random

import pytest

from cogpo_kit.crv.agents import agents_on
from cogpo_kit.crv.config import AgentParams, CRVParams
from cogpo_kit.crv.critic import ask_label, decide, full_vote_label
from cogpo_kit.crv.scheduler import CRVError, Scheduler, gather
from cogpo_kit.engines.base import Completion, Request
from cogpo_kit.engines.cache import CachedEngine
from cogpo_kit.engines.scripted import ScriptedEngine

OUTPUTS = ["easy", "medium", "hard", "Medium.", "I'd say hard", "no idea", ""]


def table_responder(table):
    """Sample ``i`` of question ``q`` answers ``table[(q, i)]`` (the question is the user message)."""
    def respond(req: Request, i: int) -> str:
        return table[(req.messages[1]["content"], i)]
    return respond


def run_questions(engine, questions, *, votes, early_exit, constrained=True, max_reasks=2):
    crv = CRVParams(critic=AgentParams(constrained=constrained, max_reasks=max_reasks), votes=votes)
    agents = agents_on(engine, crv, roles=("critic",))
    critic = agents.role("critic")
    jobs = [ask_label(critic, ({"role": "system", "content": "S"}, {"role": "user", "content": q}),
                      votes=votes, early_exit=early_exit) for q in questions]
    return Scheduler(agents).run(jobs), agents


@pytest.mark.parametrize("votes", [1, 3, 5])
def test_early_exit_gives_the_labels_of_full_votes_on_the_same_samples(votes):
    rng = random.Random(votes)
    questions = [f"q{i}" for i in range(300)]
    table = {(q, i): rng.choice(OUTPUTS) for q in questions for i in range(votes * 3)}
    full_engine, early_engine = ScriptedEngine(table_responder(table)), ScriptedEngine(table_responder(table))
    full, _ = run_questions(full_engine, questions, votes=votes, early_exit=False, constrained=False)
    early, _ = run_questions(early_engine, questions, votes=votes, early_exit=True, constrained=False)
    assert [r.label for r in early] == [r.label for r in full]
    # the labels are the strict majority of the full vote's slots
    assert [full_vote_label(r.votes) for r in full] == [r.label for r in full]
    # every slot early exit asked got exactly the outputs the full vote got for that slot
    for e, f in zip(early, full):
        assert e.raw == f.raw[:len(e.raw)]
        assert e.skipped == votes - len(e.votes)
    if votes > 1:
        assert early_engine.calls < full_engine.calls
        saved = sum(r.skipped for r in early)
        assert full_engine.calls - early_engine.calls >= saved > 0


def test_two_agreeing_votes_skip_the_third_and_disagreeing_ones_ask_it():
    table = {("agree", 0): "easy", ("agree", 1): "easy", ("agree", 2): "hard",
             ("split", 0): "easy", ("split", 1): "hard", ("split", 2): "hard",
             ("three", 0): "easy", ("three", 1): "hard", ("three", 2): "medium"}
    engine = ScriptedEngine(table_responder(table))
    (agree, split, three), _ = run_questions(engine, ["agree", "split", "three"], votes=3, early_exit=True)
    assert (agree.label, agree.asked, agree.skipped) == ("easy", 2, 1)
    assert (split.label, split.asked, split.skipped) == ("hard", 3, 0)
    assert (three.label, three.reason) == (None, "no_majority")
    # round 1: one request of n=2 per question; round 2: the third vote where needed
    assert engine.batch_sizes == [3, 2] and engine.calls == 8


def test_unparseable_outputs_are_reasked_with_new_sample_indices_and_counted():
    seen = []

    def respond(req, i):
        seen.append(i)
        return {0: "garbage", 1: "medium", 2: "medium", 3: "", 6: "medium"}.get(i, "???")

    (res,), agents = run_questions(ScriptedEngine(respond), ["q"], votes=3, early_exit=True, constrained=False)
    assert res.label == "medium"
    # slot 0 try 0 = index 0 (garbage), try 1 = index 3 (empty), try 2 = index 6 (medium)
    assert sorted(seen) == [0, 1, 3, 6]
    assert res.invalid == 2 and res.reasks == 2 and res.votes == ["medium", "medium"]
    assert res.raw == [["garbage", "", "medium"], ["medium"]]
    assert agents.counters["critic"].samples == 4


def test_a_slot_without_a_label_after_the_reasks_is_invalid():
    (res,), _ = run_questions(ScriptedEngine(lambda req, i: "I refuse"), ["q"], votes=3, early_exit=True,
                              constrained=False, max_reasks=1)
    assert res.label is None and res.reason == "no_valid_label"
    # two invalid slots leave no majority reachable: the third slot is never asked
    assert res.asked == 4 and res.invalid == 4 and res.votes == [None, None] and res.skipped == 1


def test_constrained_requests_carry_the_label_set_and_free_ones_do_not():
    reqs = []

    def respond(req, i):
        reqs.append(req)
        return "hard"

    run_questions(ScriptedEngine(respond), ["q"], votes=3, early_exit=True)
    assert reqs[0].choices == ("easy", "medium", "hard") and reqs[0].tag == "critic"
    reqs.clear()
    run_questions(ScriptedEngine(respond), ["q"], votes=3, early_exit=True, constrained=False)
    assert reqs[0].choices is None


def test_decide():
    assert decide(["easy", "easy"], 3) == (True, "easy")
    assert decide(["easy", "hard"], 3) == (False, None)
    assert decide(["easy", None, "hard"], 3) == (True, None)
    assert decide(["a", "b", "c"], 5) == (False, None)
    assert decide(["a", "b", "c", "d"], 5) == (True, None)


def test_one_generate_call_per_engine_per_round_and_gather():
    engine = ScriptedEngine(lambda req, i: "YES")
    agents = agents_on(engine, CRVParams(), roles=("critic", "verifier"))
    critic, verifier = agents.role("critic"), agents.role("verifier")
    msgs = ({"role": "system", "content": "S"}, {"role": "user", "content": "u"})

    def both(k):
        a, b = yield from gather(ask_label(verifier, msgs + ({"role": "user", "content": str(k)},)),
                                 ask_label(verifier, msgs))
        return a.label, b.label

    results = Scheduler(agents).run([both(k) for k in range(20)])
    assert results == [("YES", "YES")] * 20
    assert engine.batches == 1 and engine.batch_sizes == [40]


def test_sequential_mode_asks_one_sample_at_a_time():
    engine = ScriptedEngine(lambda req, i: "easy")
    crv = CRVParams()
    agents = agents_on(engine, crv, roles=("critic",))
    msgs = ({"role": "system", "content": "S"}, {"role": "user", "content": "u"})
    res = Scheduler(agents, sequential=True).run([ask_label(agents.role("critic"), msgs, votes=3, early_exit=False)])
    assert res[0].label == "easy" and engine.batch_sizes == [1, 1, 1]


def test_an_engine_failing_names_the_roles_and_round():
    def respond(req, i):
        return RuntimeError("server went away")

    agents = agents_on(ScriptedEngine(respond), CRVParams(), roles=("critic",))
    msgs = ({"role": "system", "content": "S"}, {"role": "user", "content": "u"})
    with pytest.raises(CRVError, match=r"critic failed in round 1 .*server went away"):
        Scheduler(agents).run([ask_label(agents.role("critic"), msgs, votes=3)])


def test_cached_replay_gives_the_same_labels_without_calls(tmp_path):
    rng = random.Random(7)
    questions = [f"q{i}" for i in range(40)]
    table = {(q, i): rng.choice(["easy", "medium", "hard"]) for q in questions for i in range(9)}
    first = ScriptedEngine(table_responder(table))
    r1, _ = run_questions(CachedEngine(first, tmp_path / "c.sqlite"), questions, votes=3, early_exit=True)
    second = ScriptedEngine(table_responder(table))
    r2, agents = run_questions(CachedEngine(second, tmp_path / "c.sqlite"), questions, votes=3, early_exit=True)
    assert [r.to_dict() for r in r1] == [r.to_dict() for r in r2]
    assert second.calls == 0 and agents.counters["critic"].cached == first.calls


def test_scripted_engine_contract():
    def respond(req, i):
        return {0: "medium", 1: "", 2: Completion(text="x", finish_reason="error", error="e")}[i]

    engine = ScriptedEngine(respond, model_id="m")
    out = engine.generate([Request(messages=({"role": "user", "content": "a b"},), n=3,
                                   choices=("easy", "medium", "hard"))])
    assert [c.finish_reason for c in out[0]] == ["stop", "empty", "error"]
    assert out[0][0].choice == "medium" and out[0][0].prompt_tokens == 2
    assert engine.calls == 3 and engine.model_id == "m" and engine.name == "scripted"
    with pytest.raises(TypeError):
        ScriptedEngine(lambda r, i: 42).generate([Request(messages=({"role": "user", "content": "a"},))])
    engine.close()
    with pytest.raises(RuntimeError, match="after close"):
        engine.generate([Request(messages=({"role": "user", "content": "a"},))])


def test_streaming_asks_a_third_vote_as_soon_as_its_question_is_split(tmp_path):
    """Through an engine that takes requests while it runs, a question's next calls join the running
    batch: one engine call in all, the same labels and samples as rounds."""
    table = {("agree", 0): "easy", ("agree", 1): "easy", ("agree", 2): "hard",
             ("split", 0): "easy", ("split", 1): "hard", ("split", 2): "hard",
             ("three", 0): "easy", ("three", 1): "hard", ("three", 2): "medium"}
    backend = ScriptedEngine(table_responder(table), accepts_more=True)
    engine = CachedEngine(backend, tmp_path / "c.sqlite", show_progress=False)
    crv = CRVParams(votes=3)
    agents = agents_on(engine, crv, roles=("critic",))
    critic = agents.role("critic")
    jobs = [ask_label(critic, ({"role": "system", "content": "S"}, {"role": "user", "content": q}), votes=3,
                      early_exit=True) for q in ("agree", "split", "three")]
    sched = Scheduler(agents)
    agree, split, three = sched.run(jobs)
    assert sched.streamed and sched.generate_calls == 1 and sched.rounds == 2
    assert (agree.label, agree.asked, split.label, split.asked, three.reason) == ("easy", 2, "hard", 3, "no_majority")
    assert backend.batches == 1 and backend.batch_sizes == [5] and backend.calls == 8
    rounds = Scheduler(agents, stream=False)
    again = rounds.run([ask_label(critic, ({"role": "system", "content": "S"}, {"role": "user", "content": q}), votes=3,
                                  early_exit=True) for q in ("agree", "split", "three")])
    assert not rounds.streamed and [r.to_dict() for r in again] == [r.to_dict() for r in (agree, split, three)]
    assert backend.calls == 8  # the second run came from the cache


def test_a_streaming_engine_failing_names_the_roles_and_keeps_answers(tmp_path):
    seen = []

    def respond(req, i):
        seen.append(i)
        return RuntimeError("server went away") if len(seen) > 2 else "easy"

    engine = CachedEngine(ScriptedEngine(respond, accepts_more=True), tmp_path / "c.sqlite", show_progress=False)
    agents = agents_on(engine, CRVParams(), roles=("critic",))
    msgs = ({"role": "system", "content": "S"}, {"role": "user", "content": "u"})
    with pytest.raises(CRVError, match=r"critic failed with 1 of 2 workflows unfinished.*server went away.*rerun"):
        Scheduler(agents).run([ask_label(agents.role("critic"), msgs + ({"role": "user", "content": str(k)},),
                                         votes=3) for k in range(2)])
    assert len(engine.entries()) == 2  # the first question, answered before the failure, is kept


def test_a_workflow_error_while_streaming_comes_out_unchanged(tmp_path):
    engine = CachedEngine(ScriptedEngine(lambda req, i: "easy", accepts_more=True), tmp_path / "c.sqlite",
                          show_progress=False)
    agents = agents_on(engine, CRVParams(), roles=("critic",))
    msgs = ({"role": "system", "content": "S"}, {"role": "user", "content": "u"})

    def broken():
        yield from ask_label(agents.role("critic"), msgs, votes=3)
        raise ValueError("row 7: field 'answer' is empty")

    with pytest.raises(ValueError, match="row 7"):
        Scheduler(agents).run([broken()])
