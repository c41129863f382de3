"""Stage 06 end to end with a small fake engine: model resolution, generation, grading, files."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from cogpo_kit.engines.base import Completion, Request
from cogpo_kit.evaluation.benchmarks import LoadOptions, build_messages, get_benchmark, load_problems
from cogpo_kit.evaluation.stage import eval_model_names, resolve_eval_model, run_evaluate
from cogpo_kit.io import read_json, read_jsonl
from cogpo_kit.params import load_params

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ["gsm8k", "math500", "gpqa_diamond", "livecodebench_public"]
LIMIT = 3


def _answers() -> dict[str, str]:
    """User prompt -> a correct completion, for the problems the stage will load."""
    out = {}
    for name in BENCHES:
        bench = get_benchmark(name)
        for p in load_problems(name, LoadOptions(seed=0), LIMIT):
            prompt = build_messages(p, bench)[-1]["content"]
            if bench.kind == "math":
                out[prompt] = f"Let me think.\nSo the final answer is \\boxed{{{p.gold}}}."
            elif bench.kind == "choice":
                out[prompt] = f"Reasoning...\nSo the answer is \\boxed{{{p.gold}}}."
            else:  # a program that answers each sample test from a table
                table = {t.input.strip(): t.output for t in p.tests}
                if p.func_name:
                    body = (f"class Solution:\n    def {p.func_name}(self, *args):\n        import json\n"
                            f"        return json.loads(TABLE['\\n'.join(json.dumps(a) for a in args)])\n")
                else:
                    body = "import sys\nprint(TABLE[sys.stdin.read().strip()], end='')\n"
                out[prompt] = f"```python\nTABLE = {table!r}\n{body}```"
    return out


class FakeEngine:
    """Answers correctly (``skill=1``), on every other problem (``0.5``) or never (``0``)."""

    name = "fake"

    def __init__(self, spec: str, answers: dict[str, str], skill: float):
        self.model_id = f"fake:{spec}"
        self.answers, self.skill = answers, skill
        self.requests: list[Request] = []
        self.closed = False

    def generate(self, requests):
        self.requests.extend(requests)
        out = []
        for k, r in enumerate(requests):
            prompt = r.messages[-1]["content"]
            good = self.skill >= 1 or (self.skill > 0 and k % 2 == 0)
            text = self.answers[prompt] if good else "I think it is \\boxed{-12345}. The answer is (Z)."
            out.append([Completion(text=text, completion_tokens=len(text.split())) for _ in range(r.n)])
        return out

    def stats_by_tag(self):
        return {"eval": {"calls": len(self.requests)}}

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def answers():
    return _answers()


def _params(tmp_path, *overrides):
    return load_params([ROOT / "params" / "smoke.yaml"], [
        f"run.output_dir={tmp_path / 'outputs'}", "run.run_id=evaltest", f"eval.benchmarks={BENCHES}",
        f"eval.limit={LIMIT}", "eval.models=[zero_shot, sft, cogpo, my-org/other-model]", "eval.bootstrap=100",
        "eval.code_timeout_s=5", "eval.grader_workers=1", *overrides])


def test_resolution_of_model_names(tmp_path):
    params = _params(tmp_path, "preference.beta_sweep=[0.5]")
    run = tmp_path / "outputs" / "evaltest"
    assert resolve_eval_model("zero_shot", params, run) == (params.student.model, "student.model")
    assert resolve_eval_model("sft", params, run)[0] is None
    (run / "04_sft" / "sft" / "model").mkdir(parents=True)
    assert resolve_eval_model("sft", params, run)[0] == str(run / "04_sft" / "sft" / "model")
    assert resolve_eval_model("cogpo_x0.5", params, run)[1].endswith("05_preference/cogpo_x0.5/model")
    assert resolve_eval_model("Qwen/Qwen2.5-7B-Instruct", params, run) == ("Qwen/Qwen2.5-7B-Instruct", "model spec")
    assert eval_model_names(params) == ["zero_shot", "sft", "cogpo", "cogpo_x0.5", "my-org/other-model"]


def test_run_evaluate_writes_results_samples_and_comparison(tmp_path, answers):
    params = _params(tmp_path)
    run = tmp_path / "outputs" / "evaltest"
    (run / "04_sft" / "sft" / "model").mkdir(parents=True)  # sft exists, cogpo does not
    engines = {}
    skills = {params.student.model: 0.5, str(run / "04_sft" / "sft" / "model"): 1.0, "my-org/other-model": 0.0}

    def factory(spec):
        engines[spec] = FakeEngine(spec, answers, skills[spec])
        return engines[spec]

    manifest = run_evaluate(params, engine_factory=factory, show_progress=False)
    ev = run / "06_evaluate"
    # one engine per evaluated model, every prompt in one generate call, closed afterwards
    assert set(engines) == set(skills) and all(e.closed for e in engines.values())
    assert all(len(e.requests) == LIMIT * len(BENCHES) for e in engines.values())
    # the missing checkpoint is a note, not a crash
    assert manifest["models"]["cogpo"]["status"] == "skipped"
    assert any("cogpo" in n and "05_preference" in n for n in manifest["notes"])
    assert any("parsed from the statements" in n for n in manifest["notes"])
    assert manifest["agents"]["sandbox_isolation"]["probe_verdict"] == "ok"
    sft = read_json(ev / "sft" / "results.json")
    assert {b: sft["benchmarks"][b]["score"] for b in BENCHES} == {b: 100.0 for b in BENCHES}
    other = read_json(ev / "my-org__other-model" / "results.json")
    assert other["model"] == "my-org/other-model"
    assert all(other["benchmarks"][b]["score"] == 0.0 for b in BENCHES)
    zs = read_json(ev / "zero_shot" / "results.json")["benchmarks"]
    assert zs["math500"]["breakdown"]["subject"] and zs["math500"]["breakdown"]["level"]
    assert set(zs["gpqa_diamond"]["extractors"]) == {"strict", "leading", "flexible", "default"}
    assert zs["livecodebench_public"]["tests_source"] == ["parsed_from_statement"]
    # samples: prompt, output, extracted answer, gold, verdict
    rows = read_jsonl(ev / "sft" / "samples_math500.jsonl")
    assert len(rows) == LIMIT and all(r["correct"] for r in rows)
    assert {"id", "prompt", "output", "extracted", "gold", "correct", "method"} <= set(rows[0])
    code_rows = read_jsonl(ev / "sft" / "samples_livecodebench_public.jsonl")
    assert all(r["verdict"] == "pass" and set(r["tests"]) == {"pass"} for r in code_rows)
    bad = read_jsonl(ev / "zero_shot" / "samples_gpqa_diamond.jsonl")
    assert any(not r["correct"] for r in bad)
    # comparison: rows + paired tests, readable by the report
    comp = read_json(ev / "comparison.json")
    assert {r["model"] for r in comp["rows"]} == {"zero_shot", "sft", "my-org/other-model"}
    assert comp["reference"] == "sft" and comp["skipped"].keys() == {"cogpo"}
    pair = next(p for p in comp["paired"] if {p["model_a"], p["model_b"]} == {"zero_shot", "sft"}
                and p["benchmark"] == "gsm8k")
    assert pair["n"] == LIMIT and pair["within_noise"] in (True, False)
    from cogpo_kit.viz.results import parse_comparison

    parsed = parse_comparison(comp, ev / "comparison.json")
    assert len(parsed) == 3 * len(BENCHES) and all(r["score"] is not None for r in parsed)
    table = list(csv.reader(io.StringIO((ev / "comparison.csv").read_text())))
    assert table[0][:6] == ["benchmark", "n", "protocol", "zero_shot", "sft", "my-org/other-model"]
    assert table[0][9:] == ["zero_shot vs sft", "my-org/other-model vs sft"]
    assert [r[0] for r in table[1:]] == BENCHES
    assert re.match(r"100\.0 \[100\.0, 100\.0\]", table[1][4]) and table[1][2] == "greedy, 16 tok"
    assert (ev / "stage.log").read_text().count("model ") >= 3


def test_several_samples_give_pass_at_k(tmp_path, answers):
    params = _params(tmp_path, "eval.benchmarks=[gsm8k]", "eval.models=[zero_shot]", "eval.protocol=r1",
                     "eval.n_samples=2", "eval.pass_k=[1, 2, 4]")

    class Alternating(FakeEngine):
        def generate(self, requests):
            out = []
            for r in requests:
                good = self.answers[r.messages[-1]["content"]]
                out.append([Completion(text=good), Completion(text="\\boxed{0}")])
            return out

    run_evaluate(params, engine_factory=lambda spec: Alternating(spec, answers, 1.0), show_progress=False)
    res = read_json(tmp_path / "outputs" / "evaltest" / "06_evaluate" / "zero_shot" / "results.json")
    g = res["benchmarks"]["gsm8k"]
    assert g["n_samples"] == 2 and g["score"] == 50.0
    assert g["pass@k"] == {"1": 50.0, "2": 100.0} and "k=[4]" in g["pass@k_skipped"]
    assert g["protocol"]["name"] == "r1" and res["protocol"]["temperature"] == 0.6 and res["n_samples"] == 2


def test_results_table_names_protocol_and_truncated_correct(tmp_path, answers, capsys):
    """A demo-style run (gsm8k + math500, greedy) where some correct answers come from outputs cut at
    max_tokens: every results table row names its protocol and counts them."""
    from cogpo_kit.viz import tables
    from cogpo_kit.viz.artifacts import Run

    params = _params(tmp_path, "eval.benchmarks=[gsm8k, math500]", "eval.models=[zero_shot, my-org/other-model]",
                     "eval.protocol=greedy", "eval.sampling.max_tokens=192")

    class Cut(FakeEngine):
        def generate(self, requests):
            out = super().generate(requests)  # every other answer cut at max_tokens, still correct
            return [[Completion(text=c.text, finish_reason="length" if k % 2 else "stop") for c in comps]
                    for k, comps in enumerate(out)]

    run_evaluate(params, engine_factory=lambda spec: Cut(spec, answers, 1.0), show_progress=False)
    ev = tmp_path / "outputs" / "evaltest" / "06_evaluate"
    res = read_json(ev / "zero_shot" / "results.json")["benchmarks"]
    assert res["gsm8k"]["truncated"] + res["math500"]["truncated"] == 3
    assert res["gsm8k"]["truncated_correct"] + res["math500"]["truncated_correct"] == 3
    table = tables.results(Run(tmp_path / "outputs" / "evaltest"), with_ci=True)
    print(table.to_string())
    assert list(table.columns) == ["Zero-shot", "my-org/other-model", "protocol", "truncated correct"]
    assert set(table["protocol"]) == {"greedy, 192 tok"}
    assert table.loc["GSM8K", "truncated correct"].startswith("Zero-shot ")
    assert list(tables.results(Run(tmp_path / "outputs" / "evaltest")).columns) == ["Zero-shot", "my-org/other-model"]
    comp = read_json(ev / "comparison.json")
    assert {r["protocol"] for r in comp["rows"]} == {"greedy, 192 tok"}
    assert all("p_holm" in p for p in comp["paired"])
    # counted wrong on request
    params = _params(tmp_path, "run.run_id=evaltest2", "eval.benchmarks=[gsm8k]", "eval.models=[zero_shot]",
                     "eval.truncated_as_wrong=true")
    run_evaluate(params, engine_factory=lambda spec: Cut(spec, answers, 1.0), show_progress=False)
    g = read_json(tmp_path / "outputs" / "evaltest2" / "06_evaluate" / "zero_shot" / "results.json")
    g = g["benchmarks"]["gsm8k"]
    assert g["score"] < 100 and g["truncated_correct"] == 1 and g["truncated_as_wrong"]
