"""The stage notebooks: thin, parameters cell = NotebookParams, no outputs in the repository, reproducible
from their generator, and executed by papermill (on a fake run; and the whole smoke pipeline)."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cogpo_kit.params import load_params
from cogpo_kit.pipeline import runner
from cogpo_kit.pipeline.notebook import NOTEBOOK_DIR, NotebookParams, notebook_path, parameters_cell
from cogpo_kit.pipeline.stage import STAGES, run_dir
from cogpo_kit.pipeline.stages import STAGES_SPEC, artifact_path, manifest_path, stage_dir_name, stage_spec
from cogpo_kit.viz.report import run_report
from fake_run import make_fake_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


def _nb(stage: str) -> nbformat.NotebookNode:
    return nbformat.read(str(notebook_path(stage)), as_version=4)


def test_one_notebook_per_stage():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == [f"{s}.ipynb" for s in STAGES]


@pytest.mark.parametrize("stage", STAGES)
def test_parameters_cell_matches_notebook_params(stage):
    index, declared = parameters_cell(_nb(stage), notebook_path(stage))
    fields = dataclasses.fields(NotebookParams)
    assert list(declared) == [f.name for f in fields]
    assert declared == dataclasses.asdict(NotebookParams())
    assert index == 1  # right after the title


def test_notebooks_carry_no_outputs():
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "notebooks/*.ipynb"], capture_output=True,
                             text=True).stdout.split()
    paths = {ROOT / p for p in tracked} | set(NOTEBOOK_DIR.glob("*.ipynb"))
    for path in sorted(paths):
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.id} has outputs"


def test_notebooks_are_what_the_generator_writes():
    res = subprocess.run([sys.executable, str(NOTEBOOK_DIR / "make_notebooks.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_notebooks_are_thin(stage):
    nb = _nb(stage)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    logic = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While, ast.If, ast.IfExp,
             ast.Try, ast.With, ast.ListComp, ast.DictComp, ast.GeneratorExp)
    calls = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, logic), f"{stage}: {type(node).__name__} in a notebook cell"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert all(n.startswith("cogpo_kit") for n in names), f"{stage}: imports {names}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                calls.add(ast.unparse(node.func))
    assert "nb.run_stage" in calls and "nb.load" in calls


def test_stage_entry_points_are_the_contract():
    assert stage_spec("report").entry == ("cogpo_kit.viz.report", "run_report")
    assert [s.entry[1] for s in STAGES_SPEC] == ["run_critique", "run_rethink", "run_pairs", "run_sft",
                                                 "run_preference", "run_evaluate", "run_report"]


# What each executed notebook must show (in some output's text).
SHOWS = {
    "critique": ["done in", "got no Critic label", "Critic: original CoTs", "application/vnd.plotly.v1+json"],
    "rethink": ["discarded: max_attempts", "Original CoT", "Rewrite attempt",
                "application/vnd.jupyter.widget-view+json"],
    "pairs": ["kinds (chosen &gt; rejected)", "Chosen ·", "application/vnd.plotly.v1+json"],
    "sft": ["crv_sft", "first loss", "application/vnd.plotly.v1+json"],
    "preference": ["last margin", "Reward margins"],
    "evaluate": ["CogPO", "MATH-500", "scored on 4 problems", "extracted"],
    "report": ["**Report:**", "report.html", stage_dir_name("evaluate")],
}


@pytest.fixture(scope="module")
def fake_run_params(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nbrun")
    yaml_path = make_fake_run(root)
    run_report(load_params([yaml_path]))
    return yaml_path


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_notebook_runs_under_papermill_on_existing_artifacts(stage, fake_run_params, tmp_path):
    out = tmp_path / f"{stage}.ipynb"
    runner.execute_notebook(stage, out, {"params_files": [str(fake_run_params)], "skip_compute": True},
                            kernel_name=runner.ensure_kernel())
    nb = nbformat.read(str(out), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = nbformat.writes(nb)
    for needle in SHOWS[stage_spec(stage).name]:
        assert needle in text, f"{stage}: '{needle}' not shown"


def _stage_import_errors() -> list[str]:
    """``stage: the error`` for each stage whose entry point cannot be imported."""
    from cogpo_kit.pipeline.notebook import stage_function

    errors = []
    for stage in STAGES:
        try:
            stage_function(stage)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{stage}: {type(exc).__name__}: {exc}")
    return errors


def test_every_stage_entry_point_imports():
    errors = _stage_import_errors()
    assert not errors, "stage entry points that cannot be imported:\n" + "\n".join(errors)


@pytest.mark.slow
@pytest.mark.builds_model
@pytest.mark.timeout(2400)  # the stages' own work: ~11 min measured on 2 busy cores
def test_smoke_pipeline_through_papermill(tmp_path):
    if not SMOKE.exists():
        pytest.skip(f"{SMOKE} does not exist yet")
    errors = _stage_import_errors()
    if errors:  # a broken stage is a failure, never a skip
        pytest.fail("stage entry points that cannot be imported:\n" + "\n".join(errors), pytrace=False)
    overrides = [f"run.output_dir={tmp_path}"]
    first = runner.run_pipeline([SMOKE], overrides)
    run = run_dir(load_params([SMOKE], overrides))
    assert first["executed"] == list(STAGES)
    for stage in STAGES:
        assert (run / "notebooks" / f"{stage}.ipynb").exists() and manifest_path(run, stage).exists()
    assert first["report"] == str(artifact_path(run, "report")) and not first["results"].empty
    second = runner.run_pipeline([SMOKE], overrides)  # everything matches now: nothing runs again
    assert second["executed"] == [] and set(second["skipped"]) == set(STAGES)


def test_load_from_the_notebooks_folder(tmp_path, monkeypatch):
    from cogpo_kit.pipeline.notebook import load

    (tmp_path / "params").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params/run.yaml").write_text("run: {run_id: a, output_dir: outputs}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "notebooks")  # where JupyterLab starts a notebook's kernel
    params = load(["params/run.yaml"], ["eval.limit=2"])
    assert params.run.output_dir == str(tmp_path / "outputs") and params.eval.limit == 2
    params = load("params/run.yaml", [], run_id="b", output_dir="/somewhere/else")
    assert (params.run.run_id, params.run.output_dir) == ("b", "/somewhere/else")
    with pytest.raises(ValueError, match="overrides must be a list"):
        load(["params/run.yaml"], "eval.limit=2")
