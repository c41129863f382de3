"""Decoding protocols, truncated answers, paper sizes and the statistics of comparisons."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from cogpo_kit.engines.base import Completion
from cogpo_kit.engines.config import SamplingParams
from cogpo_kit.evaluation.benchmarks import Problem, check_paper_size, get_benchmark
from cogpo_kit.evaluation.comparison import build_comparison, comparison_csv
from cogpo_kit.evaluation.config import EvalParams
from cogpo_kit.evaluation.metrics import bootstrap_ci, holm, paired_comparison, sign_flip_p
from cogpo_kit.evaluation.protocol import PRESETS, budget_note, ignored_sampling_note, resolve_decoding
from cogpo_kit.evaluation.scoring import grade_benchmark, summarize_benchmark
from cogpo_kit.params import load_params
from cogpo_kit.params.loader import ParamsError


# ---- protocols ----------------------------------------------------------------------------------
def test_greedy_and_r1_presets_side_by_side():
    base = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_tokens=16384)
    g = resolve_decoding("greedy", base, None)
    r = resolve_decoding("r1", base, None)
    assert (g.sampling.temperature, g.n_samples, g.label) == (0.0, 1, "greedy, 16k tok")
    assert (r.sampling.temperature, r.sampling.top_p, r.n_samples) == (0.6, 0.95, PRESETS["r1"].n_samples)
    assert r.label == "r1 (T=0.6, top-p 0.95), pass@1 of 16, 16k tok"
    assert resolve_decoding("r1", base, 4).n_samples == 4
    assert r.sampling.max_tokens == 16384  # the budget stays the one eval.sampling gives
    rec = r.record()
    assert rec["name"] == "r1" and rec["metric"] == "pass@1 averaged over 16 samples" and rec["max_tokens"] == 16384
    # no protocol: named for what it is
    assert resolve_decoding(None, base, None).name == "greedy"
    assert resolve_decoding(None, SamplingParams(temperature=0.7, max_tokens=512), 4).label == \
        "custom (T=0.7, top-p 0.9, top-k 50), pass@1 of 4, 512 tok"


def test_several_samples_at_temperature_zero_are_refused():
    with pytest.raises(ValueError, match="temperature 0"):
        EvalParams(n_samples=4)
    with pytest.raises(ValueError, match="takes 1 sample"):
        EvalParams(protocol="greedy", n_samples=4)
    with pytest.raises(ValueError, match="unknown protocol"):
        EvalParams(protocol="beam")
    with pytest.raises(ParamsError, match="temperature 0"):
        load_params([], ["eval.n_samples=3"])
    ok = load_params([], ["eval.protocol=r1", "eval.n_samples=3"])
    assert ok.eval.decoding().n_samples == 3 and ok.eval.decoding().sampling.temperature == 0.6


def test_notes_for_replaced_sampling_and_cut_outputs():
    assert ignored_sampling_note("r1", SamplingParams(temperature=0.0, top_p=1.0, top_k=0)) is None
    assert "replaced" in ignored_sampling_note("r1", SamplingParams(temperature=0.7, top_p=0.9, top_k=50))
    assert budget_note(512, 1, 100) is None
    assert "16384" in budget_note(512, 30, 100)


def test_defaults_bootstrap_and_paper_setting():
    assert EvalParams().bootstrap == 10000
    assert bootstrap_ci.__kwdefaults__["resamples"] == 10000
    p = load_params([Path(__file__).resolve().parents[1] / "params" / "paper-qwen2.5-7b.yaml"])
    d = p.eval.decoding()
    assert (d.name, d.n_samples, d.sampling.max_tokens) == ("greedy", 1, 16384)
    assert p.eval.expect_sizes == "paper" and p.eval.livecodebench_release == "release_v2"


# ---- truncated answers --------------------------------------------------------------------------
def _truncation_case(as_wrong: bool):
    bench = get_benchmark("gsm8k")
    probs = [Problem(id=f"p{i}", question=f"q{i}", gold=str(i), kind="math") for i in range(3)]
    comps = [[Completion(text="so \\boxed{0}", finish_reason="stop")],
             [Completion(text="long thinking ... \\boxed{1} and still going", finish_reason="length")],
             [Completion(text="cut before any answer", finish_reason="length")]]
    ev = EvalParams(truncated_as_wrong=as_wrong, bootstrap=0)

    class Grader:  # the math grader's interface, without worker processes
        def check_many(self, pairs, **kw):
            from cogpo_kit.evaluation.grading import GradeResult
            from cogpo_kit.evaluation.math_equivalence import check_math
            return [GradeResult(check_math(p, g).correct, None, g, "test") for p, g in pairs]

    rows, verdicts = grade_benchmark(bench, probs, ["q"] * 3, comps, ev, Grader(), show_progress=False)
    return rows, summarize_benchmark(bench, probs, verdicts, rows, ev)


def test_truncated_correct_answers_are_counted_and_optionally_wrong():
    rows, s = _truncation_case(as_wrong=False)
    assert [r["truncated"] for r in rows] == [False, True, True]
    assert (s["truncated"], s["truncated_correct"], s["score"]) == (2, 1, pytest.approx(66.67))
    assert s["protocol"]["name"] == "greedy"
    rows, s = _truncation_case(as_wrong=True)
    assert (s["truncated_correct"], s["score"]) == (1, pytest.approx(33.33))
    assert rows[1]["graded_correct"] is True and rows[1]["correct"] is False and s["truncated_as_wrong"]


# ---- sizes --------------------------------------------------------------------------------------
def test_paper_sizes():
    assert check_paper_size("math500", 500) is None
    assert check_paper_size("livecodebench", 511) is None
    assert "674" in check_paper_size("olympiadbench", 675)  # documented departure: a note
    assert check_paper_size("olympiadbench", 674) is None
    assert "not in the paper" in check_paper_size("aime25", 30)
    with pytest.raises(ValueError, match="Table 7"):
        check_paper_size("mmlu", 235)


def test_expect_sizes_refuses_a_limit_and_accepts_full_benchmarks():
    from cogpo_kit.evaluation.stage import load_eval_problems

    notes = []
    st = SimpleNamespace(note=notes.append, counts={})
    ev = EvalParams(benchmarks=("aime24", "olympiadbench"), expect_sizes="paper")
    probs = load_eval_problems(ev, st)
    assert len(probs["aime24"]) == 30 and len(probs["olympiadbench"]) == 675
    assert len(notes) == 1 and "olympiadbench" in notes[0]
    with pytest.raises(ValueError, match="partial run"):
        load_eval_problems(EvalParams(benchmarks=("aime24",), expect_sizes="paper", limit=5), st)
    dropped = load_eval_problems(EvalParams(benchmarks=("olympiadbench",), expect_sizes="paper",
                                            exclude={"olympiadbench": ("olympiadbench-2319",)}), st)
    assert len(dropped["olympiadbench"]) == 674 and len(notes) == 1  # 674: no note


# ---- statistics ---------------------------------------------------------------------------------
def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([]) == []


def test_sign_flip_test_and_paired_p_values():
    assert sign_flip_p([0.0] * 10) == 1.0
    assert sign_flip_p([0.5] * 20, resamples=2000) < 0.01
    a = {f"q{i}": (1.0 if i < 20 else 0.0) for i in range(30)}
    b = {f"q{i}": (1.0 if i < 10 else 0.0) for i in range(30)}
    binary = paired_comparison(a, b, resamples=500)
    assert binary["test"] == "mcnemar_exact" and binary["p"] == pytest.approx(0.002, abs=1e-3)
    frac = paired_comparison({k: v * 0.5 for k, v in a.items()}, b, resamples=500)
    assert frac["test"] == "sign_flip" and 0 <= frac["p"] <= 1


def test_comparison_applies_holm_to_the_reference_pairs_and_shows_protocol_and_cuts():
    ids = [f"q{i}" for i in range(40)]
    scores = {"sft": {"b": {i: float(k % 2) for k, i in enumerate(ids)}},
              "cogpo": {"b": {i: 1.0 for i in ids}},
              "dpo": {"b": {i: float(k % 3 == 0) for k, i in enumerate(ids)}}}
    proto = {"label": "greedy, 16k tok"}
    results = {m: {"b": {"score": 100 * sum(v["b"].values()) / 40, "ci_low": 0.0, "ci_high": 100.0, "n": 40,
                         "protocol": proto, "truncated": 3, "truncated_correct": k}}
               for k, (m, v) in enumerate(scores.items())}
    doc = build_comparison(results, scores, resamples=300, seed=0, reference="sft")
    ref_pairs = [p for p in doc["paired"] if "sft" in (p["model_a"], p["model_b"])]
    other = [p for p in doc["paired"] if "sft" not in (p["model_a"], p["model_b"])]
    assert all(p["p_holm"] >= p["p"] for p in ref_pairs) and all("p_holm" not in p for p in other)
    assert doc["correction"]["method"] == "holm" and doc["protocols"] == ["greedy, 16k tok"]
    table = list(csv.reader(io.StringIO(comparison_csv(doc))))
    assert table[0][:6] == ["benchmark", "n", "protocol", "sft", "cogpo", "dpo"]
    assert table[0][6:9] == ["sft truncated correct", "cogpo truncated correct", "dpo truncated correct"]
    assert table[1][2] == "greedy, 16k tok" and table[1][6:9] == ["0", "1", "2"]
    assert "p_holm=" in table[1][9]
    assert build_comparison(results, scores, resamples=300, seed=0, reference="sft",
                            correction="none")["correction"] == {"method": "none"}
