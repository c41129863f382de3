"""Reading a run's artifacts: each file checked against the schema its writer uses, errors that name
file/line/field, the results files. The files are the kit's own (a fake run made by the real writers),
copied and then changed where a test needs a broken one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cogpo_kit.io import DataError, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from cogpo_kit.params import load_params
from cogpo_kit.pipeline.schemas import SCHEMAS
from cogpo_kit.pipeline.stage import open_stage, run_dir
from cogpo_kit.pipeline.stages import (STAGES, artifact_keys, artifact_path, find_artifacts, manifest_path,
                                       stage_dir_name)
from cogpo_kit.viz import tables
from cogpo_kit.viz.artifacts import Run, margin_gap, rerating_of, verdict_of
from fake_run import make_fake_run


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    """The run folder of a complete fake run (every stage before the report)."""
    root = tmp_path_factory.mktemp("artifacts")
    return run_dir(load_params([make_fake_run(root)]))


@pytest.fixture
def run(fake, tmp_path) -> Path:
    """A copy of the fake run, free to change."""
    return Path(shutil.copytree(fake, tmp_path / "run"))


def test_every_artifact_written_matches_its_schema(fake):
    seen = set()
    for key in artifact_keys():
        for path, _ in find_artifacts(fake, key):
            if key in SCHEMAS:
                if path.suffix == ".jsonl":
                    rows = read_jsonl(path)
                    assert all(SCHEMAS[key].check(r, path=path, line=i) for i, r in enumerate(rows, 1))
                else:
                    SCHEMAS[key].check(read_json(path), path=path)
            seen.add(key)
    assert seen >= {"input", "critiques", "rewrites", "incorrect", "sft", "pairs", "sft_metrics",
                    "preference_metrics", "samples", "results", "comparison", "comparison_csv"}


def test_missing_stage_reads_as_empty(tmp_path):
    run = Run(tmp_path)
    assert run.critiques() == [] and run.pairs() == [] and run.results() == [] and run.samples() == []
    assert run.funnel() == {} and run.metric_runs("sft") == {} and run.manifest("critique") is None
    assert tables.level_distribution(run)["Critic: original CoTs"].tolist() == [0, 0, 0]
    assert tables.results(run).empty


def test_rows_as_written_extra_fields_kept_other_spellings_refused(run):
    path = artifact_path(run, "critiques")
    rows = read_jsonl(path)
    atomic_write_jsonl(path, [dict(rows[0], extra=1), *rows[1:]])
    first = Run(run).critiques()[0]
    assert first["extra"] == 1 and first["level"] == rows[0]["level"] and first["_line"] == 1
    rows[1]["label"] = rows[1].pop("level")  # a spelling no writer produces
    atomic_write_jsonl(path, rows)
    with pytest.raises(DataError) as err:
        Run(run).critiques()
    assert err.value.line == 2 and err.value.field == "level" and str(path) in str(err.value)


def test_missing_required_field_names_file_line_and_field(run):
    path = artifact_path(run, "pairs")
    rows = read_jsonl(path)
    del rows[1]["gap"]
    atomic_write_jsonl(path, rows)
    with pytest.raises(DataError) as err:
        Run(run).pairs()
    assert err.value.line == 2 and err.value.field == "gap" and str(path) in str(err.value)


def test_mistyped_field_is_an_error(run):
    path = artifact_path(run, "rewrites")
    rows = read_jsonl(path)
    rows[2]["attempt"] = "2"
    atomic_write_jsonl(path, rows)
    with pytest.raises(DataError, match="expected an integer") as err:
        Run(run).rewrites()
    assert err.value.line == 3 and err.value.field == "attempt"


def test_bad_verdict_in_samples(run):
    path = next(p for p, names in find_artifacts(run, "samples") if names["model"] == "sft")
    rows = read_jsonl(path)
    rows[0]["correct"] = "maybe"
    atomic_write_jsonl(path, rows)
    with pytest.raises(DataError, match="line 1.*field 'correct'"):
        Run(run).samples()


def test_samples_carry_model_and_benchmark(fake):
    samples = Run(fake).samples()
    assert {s["model"] for s in samples} >= {"zero_shot", "sft", "cogpo", "cogpo_x0.5"}
    assert {s["benchmark"] for s in samples} == {"gsm8k", "math500"}
    assert all(isinstance(s["correct"], bool) for s in samples)


def test_comparison_rows_match_each_models_results(fake):
    comp = Run(fake).results()
    per_model = read_json(artifact_path(fake, "results", model="cogpo"))["benchmarks"]
    for row in (r for r in comp if r["model"] == "cogpo"):
        m = per_model[row["benchmark"]]
        assert [row[k] for k in ("score", "ci_low", "ci_high", "n")] == [m[k] for k in ("score", "ci_low", "ci_high", "n")]
        assert row["protocol"] == m["protocol"]["label"] and row["truncated_correct"] == m["truncated_correct"]


def test_results_json_per_model_without_comparison(run):
    with_comparison = tables.results(Run(run), with_ci=True)
    artifact_path(run, "comparison").unlink()
    without = tables.results(Run(run), with_ci=True)
    assert without.equals(with_comparison) and list(without.columns)[:3] == ["Zero-shot", "SFT", "CRV+SFT"]


def test_scores_are_percent_even_when_small(run):
    path = artifact_path(run, "comparison")
    doc = read_json(path)
    doc["rows"][0].update(score=0.5, ci_low=0.0, ci_high=1.0)
    atomic_write_json(path, doc)
    assert Run(run).results()[0]["score"] == 0.5


def test_results_without_score_are_an_error(run):
    path = artifact_path(run, "comparison")
    doc = read_json(path)
    del doc["rows"][1]["score"]
    atomic_write_json(path, doc)
    with pytest.raises(DataError, match="field 'rows.1.score'"):
        Run(run).results()
    doc["rows"][1]["pass@1"] = 50.0  # a spelling no writer produces
    atomic_write_json(path, doc)
    with pytest.raises(DataError, match="field 'rows.1.score'"):
        Run(run).results()
    path.unlink()
    res = artifact_path(run, "results", model="sft")
    doc = read_json(res)
    doc["gsm8k"] = doc.pop("benchmarks")
    atomic_write_json(res, doc)
    with pytest.raises(DataError, match="field 'benchmarks'"):
        Run(run).results()


def test_beta_sweep_models(fake):
    run = Run(fake)
    assert sorted({r["scale"] for r in run.beta_sweep()}) == [0.5, 2.0]
    assert "CogPO (β×0.5)" not in tables.results(run).columns  # the sweep is its own figure
    assert "CogPO (β×0.5)" in tables.results(run, sweep=True).columns


def test_funnel_from_artifacts_and_manifest_discards(fake):
    run = Run(fake)
    df = tables.funnel(run).set_index("step")["count"]
    discards = run.funnel()["discards"]
    assert df["CoTs in"] == 13 and df["rated easy"] == 7 and df["no Critic label"] == 1
    assert df["D_SFT*"] == len(run.sft()) and df["incorrect CoTs found"] == len(run.incorrect()) == 13
    assert df["discarded: max_attempts"] == discards["max_attempts"] >= 1


def test_rewrite_rows_as_written(fake):
    rows = Run(fake).rewrites()
    kept = [r for r in rows if r["outcome"] == "kept" and r["kind"] in ("expand", "simplify")]
    assert kept and all(verdict_of(r) == "YES" and rerating_of(r) == "medium" and r["rewrite"] for r in kept)
    medium = [r for r in rows if r["kind"] == "medium"]
    assert medium and all(rerating_of(r) is None and "rewrite" not in r for r in medium)
    table = tables.rewrite_outcomes(Run(fake)).set_index("level")
    assert table.loc["medium", "verifier YES (%)"] == 100.0 and table.loc["incorrect CoT", "examples"] == 13


def test_margin_keys():
    assert [margin_gap(k) for k in ("rewards/margins", "small_gap/rewards/margins", "large_gap/rewards/margins",
                                    "rewards/chosen", "large_gap/loss")] == ["all", "small", "large", None, None]


def test_training_metrics_tables(fake):
    df = tables.training_summary(Run(fake))
    assert set(df["stage"]) == {stage_dir_name("sft"), stage_dir_name("preference")}
    assert df["last margin"].notna().sum() == 6 and (df["logged steps"] > 0).all()


def test_bad_json_line_is_named(run):
    path = artifact_path(run, "rewrites")
    first = path.read_text(encoding="utf-8").splitlines()[0]
    path.write_text(first + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        Run(run).rewrites()


def test_agents_table_flat_and_per_tag(tmp_path):
    st = open_stage(tmp_path, "critique", {})
    st.agents["critic"] = {"samples": 8, "cached": 2}
    st.finish()
    st = open_stage(tmp_path, "evaluate", {})
    st.agents["eval:sft"] = {"eval:gsm8k": {"calls": 3, "prompt_tokens": 335}}
    st.finish()
    df = tables.agents(Run(tmp_path))
    assert df["agent"].tolist() == ["critic", "eval:sft (eval:gsm8k)"]
    assert df["samples"].tolist()[0] == 8 and df["calls"].tolist()[1] == 3
    assert df["stage"].tolist() == [STAGES[0], stage_dir_name("evaluate")]


def test_manifest_is_checked(run):
    path = manifest_path(run, "critique")
    doc = read_json(path)
    del doc["notes"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match="field 'notes'"):
        Run(run).manifest("critique")
