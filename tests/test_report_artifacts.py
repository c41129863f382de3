"""Reading a run's artifacts: alternative spellings, errors that name file/line/field, result formats."""

from __future__ import annotations

import json

import pytest

from cogpo_kit.io import DataError, atomic_write_json, atomic_write_jsonl
from cogpo_kit.viz import tables
from cogpo_kit.viz.artifacts import Run


def test_missing_stage_reads_as_empty(tmp_path):
    run = Run(tmp_path)
    assert run.critiques() == [] and run.pairs() == [] and run.results() == [] and run.samples() == []
    assert run.funnel() == {} and run.metric_runs("04_sft") == {} and run.manifest("01_critique") is None
    assert tables.level_distribution(run)["Critic: original CoTs"].tolist() == [0, 0, 0]
    assert tables.results(run).empty


def test_alternative_field_names_and_extra_fields(tmp_path):
    atomic_write_jsonl(tmp_path / "01_critique/critiques.jsonl",
                       [{"id": "a", "label": "easy", "votes": ["easy", "easy"], "extra": 1}])
    row = Run(tmp_path).critiques()[0]
    assert row["level"] == "easy" and row["extra"] == 1 and row["raw"] is None


def test_missing_required_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "03_pairs/pairs.jsonl"
    atomic_write_jsonl(path, [{"chosen": "a", "rejected": "b", "gap": "small"}, {"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError) as err:
        Run(tmp_path).pairs()
    assert err.value.line == 2 and err.value.field == "gap" and str(path) in str(err.value)


def test_bad_verdict_in_samples(tmp_path):
    atomic_write_json(tmp_path / "06_evaluate/m/results.json", {"benchmarks": {"gsm8k": {"score": 50.0}}})
    atomic_write_jsonl(tmp_path / "06_evaluate/m/samples_gsm8k.jsonl", [{"output": "x", "correct": "maybe"}])
    with pytest.raises(DataError, match="line 1.*field 'correct'"):
        Run(tmp_path).samples()


@pytest.mark.parametrize("comparison", [
    {"rows": [{"model": "cogpo", "benchmark": "gsm8k", "score": 50.0, "ci_low": 25.0, "ci_high": 75.0, "n": 8}],
     "paired": []},
    [{"model": "cogpo", "benchmark": "gsm8k", "pass@1": 50, "ci95": [25, 75], "n": 8}],
])
def test_comparison_formats(tmp_path, comparison):
    atomic_write_json(tmp_path / "06_evaluate/comparison.json", comparison)
    (row,) = Run(tmp_path).results()
    assert (row["model"], row["benchmark"], row["score"], row["ci_low"], row["ci_high"], row["n"]) == \
        ("cogpo", "gsm8k", 50.0, 25.0, 75.0, 8)


def test_scores_are_percent_even_when_small(tmp_path):
    atomic_write_json(tmp_path / "06_evaluate/comparison.json",
                      {"rows": [{"model": "m", "benchmark": "b", "score": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 200}]})
    assert Run(tmp_path).results()[0]["score"] == 0.5


def test_results_json_per_model_without_comparison(tmp_path):
    atomic_write_json(tmp_path / "06_evaluate/zero_shot/results.json",
                      {"model": "zero_shot", "benchmarks": {"math500": {"score": 20.0, "n": 5}}})
    atomic_write_json(tmp_path / "06_evaluate/cogpo/results.json", {"benchmarks": {"math500": {"score": 40.0}}})
    df = tables.results(Run(tmp_path))
    assert list(df.columns) == ["Zero-shot", "CogPO"] and df.loc["MATH-500"].tolist() == [20.0, 40.0]


def test_results_without_score_is_an_error(tmp_path):
    atomic_write_json(tmp_path / "06_evaluate/comparison.json", {"rows": [{"model": "m", "benchmark": "b", "n": 3}]})
    with pytest.raises(DataError, match="no score for benchmark 'b'"):
        Run(tmp_path).results()
    atomic_write_json(tmp_path / "06_evaluate/m/results.json", {"model": "m", "gsm8k": {"score": 1}})
    (tmp_path / "06_evaluate/comparison.json").unlink()
    with pytest.raises(DataError, match="field 'benchmarks'"):
        Run(tmp_path).results()


def test_beta_sweep_models(tmp_path):
    rows = [{"model": m, "benchmark": "gsm8k", "score": s} for m, s in
            (("cogpo", 50), ("cogpo_x0.5", 40), ("cogpo_x2", 30), ("dpo", 45))]
    atomic_write_json(tmp_path / "06_evaluate/comparison.json", {"rows": rows})
    run = Run(tmp_path)
    assert sorted(r["scale"] for r in run.beta_sweep()) == [0.5, 2.0]
    assert list(tables.results(run).columns) == ["DPO", "CogPO"]  # the sweep is its own figure
    assert "CogPO (β×0.5)" in tables.results(run, sweep=True).columns


def test_funnel_from_artifacts_and_manifest_discards(tmp_path):
    atomic_write_jsonl(tmp_path / "01_critique/critiques.jsonl",
                       [{"id": "a", "level": "easy"}, {"id": "b", "level": "medium"}, {"id": "c", "level": None}])
    atomic_write_jsonl(tmp_path / "02_rethink/sft.jsonl", [{"id": "a", "origin": "easy*"}])
    atomic_write_jsonl(tmp_path / "02_rethink/incorrect.jsonl", [{"id": "a", "reasoning": "x", "reached_answer": "2"}])
    atomic_write_json(tmp_path / "02_rethink/manifest.json", {"funnel": {"discards": {"medium_verifier_no": 1}}})
    df = tables.funnel(Run(tmp_path)).set_index("step")["count"]
    assert df["CoTs in"] == 3 and df["rated easy"] == 1 and df["no Critic label"] == 1
    assert df["kept: easy* (expanded, verified, re-rated medium)"] == 1 and df["D_SFT*"] == 1
    assert df["incorrect CoTs found"] == 1 and df["discarded: medium_verifier_no"] == 1


@pytest.mark.parametrize("row", [
    {"id": "a", "level": "easy", "attempt": 1, "text": "t", "verdict": "YES", "rerating": "medium", "outcome": "kept"},
    {"id": "a", "kind": "expand", "attempt": 1, "rewrite": "t", "outcome": "kept",
     "verification": {"verdict": "YES", "mode": "judge"}, "rerating": {"level": "medium", "votes": ["medium"]}},
])
def test_rewrite_rows_flat_or_nested(tmp_path, row):
    atomic_write_jsonl(tmp_path / "02_rethink/rewrites.jsonl", [row])
    (r,) = Run(tmp_path).rewrites()
    assert (r["text"], r["verdict"], r["rerating"], r["outcome"]) == ("t", "YES", "medium", "kept")


def test_margin_keys():
    from cogpo_kit.viz.artifacts import margin_gap

    assert [margin_gap(k) for k in ("rewards/margins", "small_gap/rewards/margins", "rewards/margins/large",
                                    "rewards/chosen", "large_gap/loss")] == ["all", "small", "large", None, None]


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "02_rethink/rewrites.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"id": "a", "text": "t"}) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        Run(tmp_path).rewrites()


def test_agents_table_flat_and_per_tag(tmp_path):
    atomic_write_json(tmp_path / "01_critique/manifest.json", {"agents": {"critic": {"samples": 8, "cached": 2}}})
    atomic_write_json(tmp_path / "06_evaluate/manifest.json",
                      {"agents": {"eval:sft": {"eval:gsm8k": {"calls": 3, "prompt_tokens": 335}}}})
    df = tables.agents(Run(tmp_path))
    assert df["agent"].tolist() == ["critic", "eval:sft (eval:gsm8k)"]
    assert df["samples"].tolist()[0] == 8 and df["calls"].tolist()[1] == 3
