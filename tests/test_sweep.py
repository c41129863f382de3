"""Sweeps: variants as runs, stages shared between variants (seeded, not run), resuming, the sweep files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cogpo_kit.io import atomic_write_jsonl, file_sha256, read_json, replace_dir
from cogpo_kit.params import ParamsError, params_dict
from cogpo_kit.pipeline import runner, sweep
from cogpo_kit.pipeline.freshness import check_stage, stage_params
from cogpo_kit.pipeline.stage import STAGES, open_stage, run_dir
from cogpo_kit.pipeline.stages import stage_path

CRITIQUE, RETHINK, PAIRS, SFT, PREFERENCE, EVALUATE, REPORT = STAGES
PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.fixture
def fake_stages(monkeypatch):
    """Stage functions that write a real manifest and count their calls; the SFT stage writes a model
    folder (replaced whole, as the kit's trainer does) and a checkpoint; ``fail`` makes a stage raise
    in the runs whose id is listed."""
    class Calls(list):
        fail: dict[str, set[str]] = {}

    calls = Calls()
    fail = calls.fail = {}

    def make(stage):
        def run(params):
            run_id = params.run.run_id
            calls.append((run_id, stage))
            if run_id in fail.get(stage, ()):
                raise RuntimeError(f"{stage} broke in {run_id}")
            path = run_dir(params)
            up = [stage_path(path, CRITIQUE) / "out.jsonl"] if stage == RETHINK else []
            st = open_stage(path, stage, stage_params(params_dict(params), stage), inputs=up)
            st.logger.info("working on %s", run_id)
            atomic_write_jsonl(st.file("out.jsonl"), [{"stage": stage, "run": run_id}])
            if stage == SFT:
                tmp = st.path / "crv_sft" / "model.tmp"
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / "weights.bin").write_bytes(f"weights of {run_id}".encode() * 100)
                replace_dir(tmp, st.path / "crv_sft" / "model")
                ckpt = st.path / "crv_sft" / "checkpoints" / "checkpoint-1"
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / "trainer_state.json").write_text("{}")
            return st.finish()
        return run

    monkeypatch.setattr(runner, "stage_function", make)
    return calls


def _sweep_file(tmp_path: Path, section: dict, extra: dict | None = None) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"run": {"run_id": "r", "output_dir": str(tmp_path / "out")}}), encoding="utf-8")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"extends": "base.yaml", "sweep": section, **(extra or {})}), encoding="utf-8")
    return path


BETA_GRID = {"grid": {"pairs.beta_large": [0.5, 1.0, 2.0]}}


def test_beta_sweep_runs_shared_stages_once_and_seeds_the_others(tmp_path, fake_stages, capsys):
    path = _sweep_file(tmp_path, BETA_GRID)
    doc = sweep.run_sweep([path], in_process=True, report=False)
    names = ["beta_large0.5", "beta_large1.0", "beta_large2.0"]
    assert [v["name"] for v in doc["variants"]] == names
    first, *others = [f"r-{n}" for n in names]
    # critique, rethink and SFT do not depend on pairs.beta_*: run once, by the first variant
    for stage in (CRITIQUE, RETHINK, SFT):
        assert [r for r, s in fake_stages if s == stage] == [first]
    for stage in (PAIRS, PREFERENCE, EVALUATE, REPORT):
        assert [r for r, s in fake_stages if s == stage] == [first, *others]
    v = {x["name"]: x for x in doc["variants"]}
    assert v[names[0]]["stages_run"] == list(STAGES) and v[names[0]]["stages_reused"] == {}
    for n in names[1:]:
        assert v[n]["stages_reused"] == {CRITIQUE: first, RETHINK: first, SFT: first}
        assert v[n]["stages_run"] == [PAIRS, PREFERENCE, EVALUATE, REPORT]
        assert v[n]["changes"] == {"pairs.beta_large": float(n.removeprefix("beta_large"))}
    assert doc["shared"][CRITIQUE] == [names] and doc["shared"][PAIRS] == [[n] for n in names]
    assert read_json(tmp_path / "out" / "r-sweep" / sweep.SWEEP_MANIFEST) == doc

    out = tmp_path / "out"
    src, dst = out / first, out / others[0]
    # the seeded stage: its manifest says where it came from, and it matches the variant's parameters
    man = read_json(stage_path(dst, RETHINK) / "manifest.json")
    assert man["reused_from"]["run_id"] == first
    assert all(str(dst) in k for k in man["inputs"])  # recorded inputs point into the variant's folder
    params = sweep.plan_sweep([path]).trees[names[1]]
    assert check_stage(dst, PREFERENCE, params).fresh
    # model files hard-linked, everything else copied, checkpoints left out
    w_src, w_dst = (stage_path(r, SFT) / "crv_sft/model/weights.bin" for r in (src, dst))
    assert os.stat(w_src).st_ino == os.stat(w_dst).st_ino
    assert os.stat(stage_path(src, SFT) / "stage.log").st_ino != os.stat(stage_path(dst, SFT) / "stage.log").st_ino
    assert not (stage_path(dst, SFT) / "crv_sft/checkpoints").exists()

    printed = capsys.readouterr().out
    assert f"[{names[1]}] {CRITIQUE}: reused from {first}" in printed
    assert f"sft reused from {first}" in printed.replace(SFT, "sft")


def test_rerunning_the_sweep_resumes_and_a_variant_rerun_leaves_its_sibling_alone(tmp_path, fake_stages):
    path = _sweep_file(tmp_path, BETA_GRID)
    sweep.run_sweep([path], in_process=True, report=False)
    fake_stages.clear()
    again = sweep.run_sweep([path], in_process=True, report=False)
    assert fake_stages == []
    for v in again["variants"]:
        assert v["stages_run"] == [] and v["stages_up_to_date"] == sorted(STAGES) and v["status"] == "done"
    # what was seeded stays recorded in the stage manifests
    assert again["variants"][1]["stage_origins"] == {s: "r-beta_large0.5" for s in (CRITIQUE, RETHINK, SFT)}

    # one more value: the new variant is seeded too, the finished ones are left as they are
    fake_stages.clear()
    sweep.run_sweep([path], grid=["pairs.beta_large=0.5,4.0"], in_process=True, report=False)
    assert {s for r, s in fake_stages} == {PAIRS, PREFERENCE, EVALUATE, REPORT}
    assert {r for r, s in fake_stages} == {"r-beta_large4.0"}

    # redoing the SFT of a seeded variant writes its own files, never the sibling's
    out = tmp_path / "out"
    src_files = {p: file_sha256(p) for p in stage_path(out / "r-beta_large0.5", SFT).rglob("*") if p.is_file()}
    runner.run_pipeline([out / "r-sweep" / "params.yaml"], ["pairs.beta_large=1.0", "run.run_id=r-beta_large1.0"],
                        stages="sft", force=True, in_process=True)
    assert {p: file_sha256(p) for p in src_files} == src_files
    mine = stage_path(out / "r-beta_large1.0", SFT)
    assert (mine / "crv_sft/model/weights.bin").read_bytes().startswith(b"weights of r-beta_large1.0")
    assert "reused_from" not in read_json(mine / "manifest.json")


def test_parallel_variants_share_the_same_stages(tmp_path, fake_stages):
    path = _sweep_file(tmp_path, {**BETA_GRID, "jobs": 3})
    doc = sweep.run_sweep([path], in_process=True, report=False)
    for stage in (CRITIQUE, RETHINK, SFT):
        assert [r for r, s in fake_stages if s == stage] == ["r-beta_large0.5"]
    assert sorted(r for r, s in fake_stages if s == REPORT) == ["r-beta_large0.5", "r-beta_large1.0", "r-beta_large2.0"]
    assert all(v["status"] == "done" for v in doc["variants"])
    assert doc["jobs"] == 3


def test_ablation_variants_share_only_the_critique(tmp_path, fake_stages):
    section = {"variants": {"C": {"crv": {"ablation": "C"}}, "CR": {"crv.ablation": "CR"}, "CRV": {}},
               "stages": ["critique", "rethink", "sft"]}
    doc = sweep.run_sweep([_sweep_file(tmp_path, section)], in_process=True, report=False)
    assert [r for r, s in fake_stages if s == CRITIQUE] == ["r-C"]
    assert [r for r, s in fake_stages if s == RETHINK] == ["r-C", "r-CR", "r-CRV"]
    assert [r for r, s in fake_stages if s == SFT] == ["r-C", "r-CR", "r-CRV"]  # its upstream differs
    assert [v["stages_reused"] for v in doc["variants"]] == [{}, {CRITIQUE: "r-C"}, {CRITIQUE: "r-C"}]
    assert doc["stages"] == [CRITIQUE, RETHINK, SFT]


def test_a_failed_shared_stage_fails_the_variants_waiting_for_it(tmp_path, fake_stages):
    fake_stages.fail[RETHINK] = {"r-beta_large0.5"}
    path = _sweep_file(tmp_path, BETA_GRID)
    with pytest.raises(runner.PipelineError, match="3 of 3 variants failed") as err:
        sweep.run_sweep([path], in_process=True, report=False)
    assert "stage 02_rethink is shared with variant 'beta_large0.5'" in str(err.value)
    doc = read_json(tmp_path / "out" / "r-sweep" / sweep.SWEEP_MANIFEST)
    assert [v["status"] for v in doc["variants"]] == ["failed"] * 3
    assert doc["variants"][1]["stages_reused"] == {CRITIQUE: "r-beta_large0.5"}


def test_grid_names_values_and_errors(tmp_path):
    assert sweep.split_values("0.1, 2,[a, b],x") == [0.1, 2, ["a", "b"], "x"]
    assert sweep.parse_grid(["pairs.beta_large=1e-1,0.5"]) == {"pairs.beta_large": [0.1, 0.5]}
    names = sweep.variant_names({"pairs.beta_large": [0.5], "sft.optim.max_steps": [2, 4]})
    assert names == [("beta_large0.5-max_steps2", {"pairs.beta_large": 0.5, "sft.optim.max_steps": 2}),
                     ("beta_large0.5-max_steps4", {"pairs.beta_large": 0.5, "sft.optim.max_steps": 4})]
    with pytest.raises(ParamsError, match="the sweep has no variants"):
        sweep.plan_sweep([_sweep_file(tmp_path, {})])
    with pytest.raises(ParamsError, match="sweep variant 'beta_large-1': .*beta_large must be positive"):
        sweep.plan_sweep([_sweep_file(tmp_path, {"grid": {"pairs.beta_large": [-1]}})])
    with pytest.raises(ParamsError, match="unknown key 'sweep.grids'"):
        sweep.plan_sweep([_sweep_file(tmp_path, {"grids": {}})])
    with pytest.raises(ParamsError, match="unknown key 'pairs.beta_huge'"):
        sweep.plan_sweep([_sweep_file(tmp_path, {"grid": {"pairs.beta_huge": [1]}})])
    # the command line's grid replaces the file's for the same key and adds new keys
    plan = sweep.plan_sweep([_sweep_file(tmp_path, BETA_GRID)], grid=["pairs.beta_large=3", "crv.votes=5"])
    assert [v.name for v in plan.variants] == ["beta_large3-votes5"]
    assert plan.folder == tmp_path / "out" / "r-sweep"


@pytest.mark.parametrize("name, shared, per_variant", [
    ("sweep-figure6-beta.yaml", (CRITIQUE, RETHINK, SFT), (PAIRS, PREFERENCE, EVALUATE)),
    ("sweep-table6-ablation.yaml", (CRITIQUE,), (RETHINK, SFT, EVALUATE)),
    ("sweep-table5-levels.yaml", (CRITIQUE, RETHINK), (SFT, EVALUATE)),
])
def test_the_paper_sweep_files(name, shared, per_variant):
    plan = sweep.plan_sweep([PARAMS / name])
    assert len(plan.variants) >= 3
    sharing = plan.sharing()
    everyone = [v.name for v in plan.variants]
    for stage in shared:
        assert sharing[stage] == [everyone], stage
    for stage in per_variant:
        if stage in plan.stages:
            assert len(sharing[stage]) == len(everyone), stage
    for v in plan.variants:
        assert plan.trees[v.name]["run"]["run_id"] == v.run_id
        for key, value in v.changes.items():  # each change is in the variant's parameters
            node = plan.trees[v.name]
            for part in key.split("."):
                node = node[part]
            assert node == value, (v.name, key)


def test_cogpo_kit_run_names_the_sweep_command_for_a_sweep_file(tmp_path):
    with pytest.raises(ParamsError, match="unknown key 'sweep'.*run by `cogpo-kit sweep`"):
        runner.run_pipeline([_sweep_file(tmp_path, BETA_GRID)], in_process=True)


def test_cli_sweep(tmp_path, fake_stages, capsys):
    from cogpo_kit.cli import main as cli_main

    path = _sweep_file(tmp_path, {})
    assert cli_main(["sweep", str(path), "--grid", "pairs.beta_large=0.5,1.0", "--stages", "critique,pairs",
                     "--in-process", "--no-report"]) == 0
    assert fake_stages == [("r-beta_large0.5", CRITIQUE), ("r-beta_large0.5", PAIRS), ("r-beta_large1.0", PAIRS)]
    printed = capsys.readouterr().out
    assert "sweep summary" in printed and "01_critique reused from r-beta_large0.5" in printed
    assert cli_main(["sweep", str(path), "--in-process"]) == 2
    assert "the sweep has no variants" in capsys.readouterr().err


def test_a_seeded_stage_gets_the_executed_notebook_of_its_source(tmp_path, fake_stages):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    path = _sweep_file(tmp_path, {**BETA_GRID, "stages": ["critique"]})
    sweep.run_sweep([path], grid=["pairs.beta_large=0.5"], in_process=True, report=False)
    out = tmp_path / "out"
    src, dst = out / "r-beta_large0.5", out / "r-other"
    nb_src = src / "notebooks" / f"{CRITIQUE}.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), str(nb_src))
    (dst / "notebooks").mkdir(parents=True)
    (dst / "notebooks" / f"{RETHINK}.ipynb").write_text("stale")
    sweep.seed_stage(src, dst, CRITIQUE)
    cells = nbformat.read(str(dst / "notebooks" / f"{CRITIQUE}.ipynb"), as_version=4).cells
    assert cells[0].cell_type == "markdown" and "reused from run `r-beta_large0.5`" in cells[0].source
    assert cells[1].source == "x = 1"
    # a stage whose source run has no executed notebook: the stale one goes, the runner executes it again
    fake_stages.clear()
    runner.run_pipeline([path.parent / "out" / "r-sweep" / "params.yaml"], ["run.run_id=r-beta_large0.5"],
                        stages="rethink", in_process=True)
    sweep.seed_stage(src, dst, RETHINK)
    assert not (dst / "notebooks" / f"{RETHINK}.ipynb").exists()
