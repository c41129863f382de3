"""Stages 01_critique / 02_rethink end to end on a deterministic engine under the real response cache:
artifacts, funnel, replay from the cache, bad input, bad agents and an engine failing mid-run."""

from __future__ import annotations

import json
import re

import pytest

from cogpo_kit.answers.response import FINAL_LINE
from cogpo_kit.crv.agents import ROLES
from cogpo_kit.crv.scheduler import CRVError
from cogpo_kit.crv.stage import run_critique, run_rethink
from cogpo_kit.engines.base import Request
from cogpo_kit.engines.cache import CachedEngine
from cogpo_kit.engines.scripted import ScriptedEngine
from cogpo_kit.evaluation.grading import extract_answer, grade
from cogpo_kit.io import DataError, stable_hash
from cogpo_kit.params import load_params

ARTIFACTS = ("01_critique/input.jsonl", "01_critique/critiques.jsonl", "02_rethink/rewrites.jsonl",
             "02_rethink/incorrect.jsonl", "02_rethink/sft.jsonl")


def _h(*parts) -> int:
    return int(stable_hash(list(parts))[:8], 16)


def _field(req: Request, name: str) -> str:
    m = re.search(name + r":\n(.*?)(?:\n\n[A-Z][a-z ]+:\n|$)", req.messages[-1]["content"], re.S)
    return m.group(1) if m else ""


def agent_like(req: Request, i: int) -> str:
    """Deterministic agents with mixed outcomes (levels, verdicts, right and wrong rewrites)."""
    reasoning = _field(req, "Reasoning process") or _field(req, "Correct reasoning process")
    gold = _field(req, "Correct answer") or _field(req, "Answer")
    h = _h(req.tag, reasoning, i)
    if req.tag.startswith("critic"):
        if req.choices is None and h % 3 == 0:
            return "No idea, sorry."
        return ("easy", "medium", "hard", "medium")[h % 4]
    if req.tag.startswith("verifier"):
        return "NO" if h % 4 == 0 else "YES"
    if req.tag in ("expand", "simplify"):
        wrong = h % 3 == 0
        return f"Step by step. {reasoning}\nSo the result is {int(gold) + 1 if wrong else gold}."
    if req.tag == "corrupt":
        # the first try reaches the gold answer half the time (and is regenerated), later ones never
        return f"A misleading route gives {int(gold) + (0 if i == 0 and h % 2 else i + 1)} in the end."
    raise AssertionError(f"unexpected tag {req.tag}")


def params_for(tmp_path, *extra):
    return load_params([], [f"run.output_dir={tmp_path}", "run.run_id=t", "data.source=gsm8k_train",
                            "data.limit=10", "crv.check_final_answer=true", "crv.incorrect_check=answer_differs",
                            *extra])


def cached(responder, path, *, stream=False):
    backend = ScriptedEngine(responder, accepts_more=stream)
    return CachedEngine(backend, path, show_progress=False), backend


def run_both(params, engine):
    engines = {r: engine for r in ROLES}
    m1 = run_critique(params, engines=engines)
    m2 = run_rethink(params, engines=engines)
    return m1, m2


def read_all(run):
    return {name: (run / name).read_bytes() for name in ARTIFACTS}


def test_stages_write_the_artifacts_and_the_funnel(tmp_path):
    params = params_for(tmp_path, "crv.equal_level_subsets=2", "crv.free_label_probe=4")
    engine, backend = cached(agent_like, tmp_path / "cache.sqlite")
    m1, m2 = run_both(params, engine)
    run = tmp_path / "t"
    crit = [json.loads(x) for x in (run / "01_critique/critiques.jsonl").read_text().splitlines()]
    assert len(crit) == 10 and {"id", "votes", "raw", "level", "reasks"} <= set(crit[0])
    f1 = m1["funnel"]
    assert sum(f1["levels"].values()) == 10
    assert f1["early_exit"]["votes_skipped"] > 0 and 0 < f1["early_exit"]["saved_share"] < 1
    assert f1["labels"]["constrained"]["invalid_share"] == 0 and f1["labels"]["free"]["invalid"] > 0
    # width: round 1 of the critique asked all 10 CoTs (+4 free probes) in one generate call
    assert backend.batch_sizes[0] == 14
    # the free-decoding probes are measured apart from the algorithm's calls
    assert f1["calls"]["probe_samples"] == 12 and f1["calls"]["naive"] == 30
    assert f1["calls"]["samples"] == f1["early_exit"]["samples_asked"]

    f2 = m2["funnel"]
    sft = [json.loads(x) for x in (run / "02_rethink/sft.jsonl").read_text().splitlines()]
    inc = [json.loads(x) for x in (run / "02_rethink/incorrect.jsonl").read_text().splitlines()]
    rewrites = [json.loads(x) for x in (run / "02_rethink/rewrites.jsonl").read_text().splitlines()]
    assert f2["sft"]["total"] == len(sft) > 0
    assert f2["sft"]["total"] == f2["sft"]["medium"] + f2["sft"]["easy*"] + f2["sft"]["hard*"]
    assert f2["sft"]["total"] + sum(f2["discards"].values()) == 10
    for row in sft:
        assert {"id", "problem", "answer", "reasoning", "response", "origin", "attempt"} <= set(row)
        assert row["response"].startswith(row["reasoning"])
        assert grade(extract_answer(row["response"]), row["answer"])
        assert row["origin"] in ("medium", "easy*", "hard*")
    assert inc and f2["incorrect"]["found"] == len(inc)
    for row in inc:
        assert row["reached_answer"] != row["answer"] and not grade(row["reached_answer"], row["answer"])
        assert row["response"].endswith(FINAL_LINE.format(answer=row["reached_answer"]))
    kinds = {r["kind"] for r in rewrites}
    assert "corrupt" in kinds and kinds & {"expand", "simplify", "medium"}
    assert all("outcome" in r for r in rewrites)
    assert f2["calls"]["by_tag"]["critic"]["samples"] > 0 and "engine_stats" in f2["calls"]
    assert f2["crv_calls"]["naive"] >= f2["crv_calls"]["samples"] > 0
    assert f2["equal_level_subsets"] and (run / "02_rethink/sft_easy.jsonl").exists()
    assert m2["agents"]["critic"]["samples"] > 0 and m2["counts"]["sft"] == len(sft)

    # replay: the same command again is served from the cache and writes the same bytes
    before = read_all(run)
    engine2, backend2 = cached(agent_like, tmp_path / "cache.sqlite")
    _, again = run_both(params, engine2)
    assert backend2.calls == 0 and read_all(run) == before
    assert again["funnel"]["calls"]["cache_hits"] == again["funnel"]["calls"]["samples"]


@pytest.mark.parametrize("stream", [False, True], ids=["rounds", "streaming"])
def test_an_engine_failing_mid_run_keeps_finished_work(tmp_path, stream):
    ref_params = params_for(tmp_path / "ref")
    ref_engine, ref_backend = cached(agent_like, tmp_path / "ref.sqlite")
    run_both(ref_params, ref_engine)
    total = ref_backend.calls

    params = params_for(tmp_path / "x")
    fail_at = total // 2

    def flaky(req, i, state={"n": 0}):
        state["n"] += 1
        if state["n"] > fail_at:
            return ConnectionError("server disconnected")
        return agent_like(req, i)

    engine, backend = cached(flaky, tmp_path / "x.sqlite", stream=stream)
    where = "failed with .* workflows unfinished" if stream else "failed in round"
    with pytest.raises(CRVError, match=where + ".* server disconnected.* rerun the same command"):
        run_both(params, engine)
    finished = backend.calls
    assert finished == fail_at
    engine2, backend2 = cached(agent_like, tmp_path / "x.sqlite", stream=stream)
    run_both(params, engine2)
    assert backend2.calls == total - finished  # nothing finished is paid twice
    assert read_all(tmp_path / "x" / "t") == read_all(tmp_path / "ref" / "t")


def test_streaming_writes_what_rounds_write_in_one_engine_call_per_stage(tmp_path):
    """Through an engine that takes requests while it runs, every example goes on as soon as its
    calls are answered: byte-identical artifacts, the same calls, one engine call per stage."""
    engine, backend = cached(agent_like, tmp_path / "r.sqlite")
    r1, r2 = run_both(params_for(tmp_path / "r"), engine)
    s_engine, s_backend = cached(agent_like, tmp_path / "s.sqlite", stream=True)
    s1, s2 = run_both(params_for(tmp_path / "s"), s_engine)
    assert read_all(tmp_path / "s" / "t") == read_all(tmp_path / "r" / "t")
    assert s_backend.batches == 2 and backend.batches > 4
    assert s_backend.calls == backend.calls
    for rounds, streamed in ((r1, s1), (r2, s2)):
        rc, sc = rounds["funnel"]["calls"], streamed["funnel"]["calls"]
        assert sc["generate_calls"] == 1 and sc["streamed"] and not rc["streamed"]
        assert sc["rounds"] == rc["rounds"]  # the longest chain of calls equals the number of rounds
        assert sc["samples"] == rc["samples"] and sc["paid"] == rc["paid"]


def test_garbage_and_silent_agents_are_counted_outcomes(tmp_path):
    def garbage(req, i):
        if req.tag.startswith("critic"):
            return "I would rather talk about the weather" if i % 2 else ""
        return agent_like(req, i)

    params = params_for(tmp_path, "crv.critic.max_reasks=1")
    engine, backend = cached(garbage, tmp_path / "c.sqlite")
    m1, m2 = run_both(params, engine)
    f1 = m1["funnel"]
    assert f1["levels"] == {"easy": 0, "medium": 0, "hard": 0, "none": 10}
    assert f1["no_label"]["no_valid_label"] == 10
    q = f1["labels"]["constrained"]
    assert q["invalid_share"] == 1.0 and q["reasks"] == 20 and q["outputs"] == 40
    assert any("no Critic label" in n for n in m1["notes"])
    assert m2["funnel"]["discards"] == {"critic_no_valid_label": 10} and m2["funnel"]["sft"]["total"] == 0
    assert any("D_SFT* is empty" in n for n in m2["notes"])
    # incorrect CoTs are still written for every example
    assert m2["funnel"]["incorrect"]["found"] == 10

    def silent(req, i):
        return "" if req.tag in ("verifier", "expand", "simplify", "corrupt") else agent_like(req, i)

    params = params_for(tmp_path / "s")
    engine, _ = cached(silent, tmp_path / "s.sqlite")
    _, m2 = run_both(params, engine)
    f2 = m2["funnel"]
    assert f2["sft"]["total"] == 0 and f2["incorrect"]["found"] == 0
    assert set(f2["discards"]) <= {"medium_verifier_invalid", "max_attempts", "critic_no_majority"}
    assert f2["incorrect"]["failed"] == {"max_attempts": 10}
    assert all(o == {"empty_rewrite": 10} for o in f2["incorrect"]["attempt_outcomes"].values())


def test_rows_without_answer_or_reasoning_are_rejected_and_counted(tmp_path):
    src = tmp_path / "cots.jsonl"
    rows = [{"id": f"a{i}", "problem": f"What is {i}+1?", "answer": str(i + 1), "reasoning": f"{i}+1={i + 1}"}
            for i in range(5)]
    rows.append({"id": "no-answer", "problem": "p", "reasoning": "r"})
    rows.append({"id": "empty-reasoning", "problem": "p", "answer": "1", "reasoning": "  "})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [f"run.output_dir={tmp_path}", "run.run_id=t", "data.source=file", f"data.path={src}"]
    engine, _ = cached(agent_like, tmp_path / "c.sqlite")
    m = run_critique(load_params([], base + ["data.on_invalid=reject"]), engines={"critic": engine})
    assert m["counts"]["records"] == 5 and m["counts"]["rejected"] == 2
    assert m["funnel"]["input"]["valid"] == 5
    rejects = [json.loads(x) for x in (tmp_path / "t/01_critique/rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 2
    with pytest.raises(DataError, match="line 6"):
        run_critique(load_params([], base + ["data.on_invalid=error"]), engines={"critic": engine})


def test_rethink_needs_a_finished_critique(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the critique stage first"):
        run_rethink(params_for(tmp_path))


def test_ablation_c_and_student_solve_ask_only_the_agents_they_need(tmp_path):
    engine, backend = cached(agent_like, tmp_path / "c.sqlite")
    _, m = run_both(params_for(tmp_path / "c", "crv.ablation=C"), engine)
    tags = set(m["funnel"]["calls"]["by_tag"])
    assert tags == {"corrupt"}
    assert m["funnel"]["sft"]["total"] == m["funnel"]["sft"]["medium"] == m["funnel"]["levels"]["medium"]

    def with_student(req, i):
        if req.tag == "student":
            return "I follow it and get \\boxed{" + ("1" if _h(i, req.messages[-1]["content"]) % 2 else "0") + "}"
        return agent_like(req, i)

    engine, _ = cached(with_student, tmp_path / "s.sqlite")
    _, m = run_both(params_for(tmp_path / "s", "crv.verifier_mode=student_solve"), engine)
    tags = set(m["funnel"]["calls"]["by_tag"])
    assert "student" in tags and "verifier" not in tags
