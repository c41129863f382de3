"""Comparing runs: the results table, paired comparisons checked by hand on the samples, the params
diff, the stages table, the study's figure, the HTML report and ``cogpo-kit compare``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from cogpo_kit.cli import main as cli_main
from cogpo_kit.evaluation.metrics import mcnemar_exact
from cogpo_kit.io import atomic_write_json, read_json
from cogpo_kit.pipeline.stages import STAGES, find_artifacts, manifest_path
from cogpo_kit.viz.compare import compare_runs, expand_run_dirs, write_compare_report
from fake_run import make_fake_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished fake runs under one output folder: ``a`` (beta sweep 0.5, 2.0) and ``b`` (another
    seed, so other scripted answers; beta sweep 0.5 only)."""
    root = tmp_path_factory.mktemp("compare")
    make_fake_run(root, "a")
    make_fake_run(root, "b", sweep=(0.5,), seed=1)
    return root / "outputs" / "a", root / "outputs" / "b"


def _by_hand(run: Path, model: str, bench: str) -> dict[str, float]:
    """Per-problem pass@1 read straight from the samples file: the share of a problem's samples marked correct."""
    (path, _), = [(p, n) for p, n in find_artifacts(run, "samples") if n == {"model": model, "benchmark": bench}]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by: dict[str, list[bool]] = {}
    for r in rows:
        by.setdefault(r["id"], []).append(r["correct"])
    return {k: sum(v) / len(v) for k, v in by.items()}


def test_results_and_paired_numbers_match_a_hand_computation(two_runs):
    a, b = two_runs
    cmp = compare_runs([a, b], resamples=500)
    assert cmp.names == ["a", "b"] and cmp.reference == "a"
    # the results table is each run's own evaluation, interval included
    recorded = read_json(a / "06_evaluate" / "comparison.json")["rows"]
    for r in recorded:
        row = cmp.results[(cmp.results["run"] == "a") & (cmp.results["model"] == r["model"])
                          & (cmp.results["benchmark"] == r["benchmark"])].iloc[0]
        assert (row.score, row.ci_low, row.ci_high, row.n) == (r["score"], r["ci_low"], r["ci_high"], r["n"])
    assert cmp.table().loc[("a", "SFT"), "GSM8K"].count("[") == 1

    # paired: b minus a per model and benchmark, on the same problems
    assert len(cmp.paired) > 0
    diffs_seen = set()
    for p in cmp.paired.itertuples():
        sa, sb = _by_hand(a, p.model, p.benchmark), _by_hand(b, p.model, p.benchmark)
        ids = sorted(set(sa) & set(sb))
        assert p.n == len(ids) == 4
        diff = 100 * sum(sb[i] - sa[i] for i in ids) / len(ids)
        assert p.diff == pytest.approx(round(diff, 2))
        only_b = sum(1 for i in ids if sb[i] == 1 and sa[i] == 0)
        only_a = sum(1 for i in ids if sa[i] == 1 and sb[i] == 0)
        assert (p.only_a, p.only_b) == (only_b, only_a)  # model_a is the compared run, model_b the reference
        assert p.p == pytest.approx(mcnemar_exact(only_b, only_a))
        assert p.ci_low <= p.diff <= p.ci_high
        assert p.within_noise == (p.ci_low <= 0 <= p.ci_high)
        diffs_seen.add(p.diff)
    assert len(diffs_seen) > 1  # the two seeds answered differently
    # Holm over every comparison: never below the raw p, monotone in it
    ordered = cmp.paired.sort_values("p")
    assert all(ordered["p_holm"] >= ordered["p"] - 1e-12)
    assert list(ordered["p_holm"]) == sorted(ordered["p_holm"])
    # the beta-sweep model cogpo_x2 only exists in a: no pair for it
    assert "cogpo_x2" not in set(cmp.paired["model"]) and "cogpo_x2" in set(cmp.results["model"])


def test_params_diff_stages_and_figure(two_runs, tmp_path):
    a, b = two_runs
    cmp = compare_runs([a, b], resamples=200)
    assert list(cmp.params_diff.index) == ["preference.beta_sweep"]
    assert list(cmp.params_diff.loc["preference.beta_sweep"]) == ["[0.5, 2.0]", "[0.5]"]
    assert cmp.stages.loc["a", STAGES[0]] == "ran" and cmp.stages.loc["a", STAGES[-1]] == "not run"
    assert cmp.study == "runs" and {t.type for t in cmp.figure.data} == {"bar"}
    assert {t.name.split(" · ")[0] for t in cmp.figure.data} <= {"a", "b"} or len(cmp.focus) > 1

    # one numeric parameter differs: pass@1 against it, a line per model and benchmark
    c = tmp_path / "outputs" / "c"
    shutil.copytree(a, c)
    for stage in STAGES:
        p = manifest_path(c, stage)
        if p.exists():
            m = read_json(p)
            m["params"].setdefault("pairs", {})["beta_large"] = 1.0
            atomic_write_json(p, m)
    cmp2 = compare_runs([a, c], names=["beta0.5", "beta1"], resamples=200)
    assert list(cmp2.params_diff.index) == ["pairs.beta_large"]
    assert cmp2.study == "param:pairs.beta_large"
    assert {t.type for t in cmp2.figure.data} == {"scatter"}
    assert list(cmp2.figure.data[0].x) == [0.5, 1.0]
    # identical answers everywhere: no model differs, so every model is shown
    assert (cmp2.paired["diff"] == 0).all()
    assert sorted(cmp2.focus) == sorted(set(cmp2.results["model"]))
    assert cmp2.focus_why.startswith("every model")
    # a and b answered differently: only the models whose answers differ are drawn
    differ = {m for m in set(cmp.paired["model"])
              if not (cmp.paired[cmp.paired["model"] == m]["diff"] == 0).all()}
    assert differ <= set(cmp.focus) and cmp.focus_why.startswith("those whose answers differ")


def test_report_and_cli(two_runs, tmp_path, capsys):
    a, b = two_runs
    cmp = compare_runs([a, b], resamples=200)
    path = write_compare_report(cmp, tmp_path / "cmp.html", title="A against B")
    text = path.read_text(encoding="utf-8")
    assert "<h1>A against B</h1>" in text and "Paired comparisons with a" in text
    assert "preference.beta_sweep" in text and "Plotly.newPlot" in text
    assert text.count(get_plotlyjs()) == 1 and not re.search(r"<script[^>]+src=", text)
    assert not re.findall(r"https?://", text.replace(get_plotlyjs(), ""))  # nothing fetched from the network
    assert cmp._repr_html_().startswith("<div>")

    out = tmp_path / "cli.html"
    assert cli_main(["compare", str(a), str(b), "-o", str(out), "--resamples", "200", "--models", "sft,cogpo"]) == 0
    printed = capsys.readouterr().out
    assert "paired with a:" in printed and "report: " in printed and out.exists()
    assert "Zero-shot" not in printed.split("results")[1]
    assert cli_main(["compare", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_sweep_folder_stands_for_its_variants(two_runs, tmp_path):
    a, b = two_runs
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "sweep_manifest.json").write_text(json.dumps({"variants": [
        {"name": "first", "run_id": a.name, "run": str(a)}, {"name": "second", "run_id": b.name, "run": str(b)}]}))
    runs, names = expand_run_dirs([sweep_dir])
    assert runs == [a, b] and names == ["first", "second"]
    cmp = compare_runs([sweep_dir], reference="second", resamples=200)
    assert cmp.reference == "second" and set(cmp.paired["run"]) == {"first"}
