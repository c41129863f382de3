"""The stage notebooks: one jupytext percent-format source per stage that JupyterLab saves back as it
reads it (no generator, no outputs), parameters cell = NotebookParams = the demo run, a preview cell
before the run and a "how to read this" note beside every table, figure and browser; executed by
papermill (on a fake run; and the whole smoke pipeline), with static copies of figures and widgets
that an offline HTML export shows in headless Chromium."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import load_jupytext_configuration_file

from cogpo_kit.params import load_params
from cogpo_kit.pipeline import notebook as nbmod
from cogpo_kit.pipeline import runner
from cogpo_kit.pipeline.notebook import (NOTEBOOK_DIR, SOURCE_FORMAT, NotebookParams, notebook_path, notebook_source,
                                         parameters_cell, read_notebook, to_ipynb)
from cogpo_kit.pipeline.stage import STAGES, run_dir
from cogpo_kit.pipeline.stages import STAGES_SPEC, artifact_path, manifest_path, stage_dir_name, stage_spec
from cogpo_kit.viz.artifacts import Run
from cogpo_kit.viz.notebook_html import export_html
from cogpo_kit.viz.report import run_report
from fake_run import make_fake_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
DEMO = ROOT / "params" / "demo.yaml"
TEST_OUTPUTS = Path(os.environ.get("COGPO_TEST_OUTPUTS", ROOT / "outputs" / "test-artifacts"))
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
SHOWN = ("tables.", "figures.", "widgets.")
"""Calls whose output a reader has to interpret: each needs a "how to read this" note before it."""


def _nb(stage: str) -> nbformat.NotebookNode:
    return read_notebook(notebook_source(stage))


def canonical(text: str, directory: Path = NOTEBOOK_DIR) -> str:
    """What jupytext (JupyterLab's save of a text notebook) writes for ``text`` with the folder's config."""
    config = load_jupytext_configuration_file(str(directory / "jupytext.toml"))
    return jupytext.writes(jupytext.reads(text, fmt=SOURCE_FORMAT), fmt=SOURCE_FORMAT, config=config)


def check_source(path: Path) -> None:
    """The rules every notebook source keeps (also applied to a copy saved by JupyterLab in
    ``test_jupyterlab.py``): canonical text, the parameters cell, thin cells, preview and notes."""
    text = path.read_text(encoding="utf-8")
    assert canonical(text, path.parent) == text, f"{path.name}: a JupyterLab save would rewrite it"
    nb = read_notebook(path)
    index, declared = parameters_cell(nb, path)
    assert index == 1 and declared == dataclasses.asdict(NotebookParams()), f"{path.name}: parameters cell"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    logic = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While, ast.If, ast.IfExp,
             ast.Try, ast.With, ast.ListComp, ast.DictComp, ast.GeneratorExp)
    calls: list[str] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs"), f"{path.name}: cell {i} has outputs"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, logic), f"{path.name}: {type(node).__name__} in cell {i}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert all(n.startswith("cogpo_kit") for n in names), f"{path.name}: imports {names}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                calls.append(ast.unparse(node.func))
        if cell.source.startswith(SHOWN):
            before = nb.cells[i - 1]
            assert before.cell_type == "markdown" and "How to read this" in before.source, \
                f"{path.name}: no 'How to read this' note before cell {i} ({cell.source.splitlines()[0]})"
    assert "nb.load" in calls and "display.setup_notebook" in calls
    assert calls.index("nb.preview") < calls.index("nb.run_stage"), f"{path.name}: preview after the run"


def test_one_source_per_stage_and_no_generator():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.py")) == [f"{s}.py" for s in STAGES]
    assert [notebook_source(s.name).stem for s in STAGES_SPEC] == list(STAGES)  # named from the registry
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "notebooks"], capture_output=True,
                             text=True).stdout.split()
    committed = [p for p in tracked if p.endswith(".ipynb") and (ROOT / p).exists()]  # not deleted for the commit
    assert not committed, f"notebooks are committed as .py sources only (no outputs): {committed}"
    assert not (NOTEBOOK_DIR / "make_notebooks.py").exists()


def test_parameters_default_to_the_demo_run():
    assert NotebookParams().params_files == ["params/demo.yaml"] and DEMO.exists()
    assert load_params([DEMO]).run.run_id == "demo"


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_source_keeps_the_rules(stage):
    check_source(notebook_source(stage))


def test_check_source_fails_on_a_broken_source(tmp_path):
    """The rules can fail: a source with a note removed, or written in a non-canonical way."""
    shutil.copy(NOTEBOOK_DIR / "jupytext.toml", tmp_path)
    text = notebook_source("rethink").read_text(encoding="utf-8")
    bad = tmp_path / "no_note.py"
    bad.write_text(text.replace("# How to read this: the same funnel", "# The same funnel"), encoding="utf-8")
    with pytest.raises(AssertionError, match="no 'How to read this' note"):
        check_source(bad)
    bad = tmp_path / "loose.py"
    header = ("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3 (a local kernel)\n"
              "#     language: python\n#     name: python3\n# ---\n\n")
    bad.write_text(header + text, encoding="utf-8")  # metadata the folder's jupytext.toml leaves out
    with pytest.raises(AssertionError, match="JupyterLab save would rewrite it"):
        check_source(bad)


def test_executable_notebook_follows_its_source(tmp_path, monkeypatch):
    """notebook_path converts the source (ids fixed, source named, no outputs) and picks up an edit at once."""
    monkeypatch.setenv("COGPO_CACHE", str(tmp_path / "cache"))
    src_dir = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, src_dir)
    monkeypatch.setattr(nbmod, "NOTEBOOK_DIR", src_dir)
    first = notebook_path("rethink")
    assert first.suffix == ".ipynb" and first.is_relative_to(tmp_path / "cache")
    nb = nbformat.read(str(first), as_version=4)
    assert [c.id for c in nb.cells][:2] == ["02_rethink-00", "02_rethink-01"]
    assert nb.metadata["cogpo_kit"]["source"] == str(src_dir / "02_rethink.py")
    assert nb.metadata["kernelspec"]["name"] == "python3" and "jupytext" not in nb.metadata
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nbformat.writes(to_ipynb(src_dir / "02_rethink.py")) == nbformat.writes(nb)  # reproducible
    assert notebook_path("rethink") == first
    source = src_dir / "02_rethink.py"
    source.write_text(source.read_text(encoding="utf-8").replace("## The CRV funnel", "## The CRV funnel, edited"),
                      encoding="utf-8")
    second = notebook_path("rethink")
    assert second != first and "## The CRV funnel, edited" in second.read_text(encoding="utf-8")


def test_stage_entry_points_are_the_contract():
    assert stage_spec("report").entry == ("cogpo_kit.viz.report", "run_report")
    assert [s.entry[1] for s in STAGES_SPEC] == ["run_critique", "run_rethink", "run_pairs", "run_sft",
                                                 "run_preference", "run_evaluate", "run_report"]


def test_preview_reads_what_each_stage_reads(fake_run):
    params = load_params([fake_run])
    run = Run(run_dir(params))
    rows, what = nbmod.preview_rows(params, "rethink", n=2)
    assert [r["id"] for r in rows] == [c["id"] for c in run.critiques()[:2]] and "rated CoTs" in what
    rows, what = nbmod.preview_rows(params, "preference", n=3)
    assert [r["gap"] for r in rows] == [p["gap"] for p in run.pairs()[:3]] and "preference pairs" in what
    rows, _ = nbmod.preview_rows(params, "sft", n=1)
    assert rows[0]["id"] == run.sft()[0]["id"] and len(rows[0]["CoT"]) <= nbmod.PREVIEW_CHARS


def test_preview_says_when_an_earlier_stage_has_not_run(tmp_path):
    params = load_params([make_fake_run(tmp_path, stages=["critique"], sweep=())])
    rows, what = nbmod.preview_rows(params, "pairs")
    assert rows == [] and f"{stage_dir_name('rethink')} has not written" in what


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
def executed(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """``(params file, {stage: executed notebook})``: every stage notebook executed by papermill, as the
    runner does, on a finished fake run (its report written) with ``skip_compute``."""
    root = tmp_path_factory.mktemp("nbrun")
    yaml_path = make_fake_run(root)
    run_report(load_params([yaml_path]))
    kernel = runner.ensure_kernel()
    out = {stage: runner.execute_notebook(stage, root / "executed" / f"{stage}.ipynb",
                                          {"params_files": [str(yaml_path)], "skip_compute": True},
                                          kernel_name=kernel) for stage in STAGES}
    return yaml_path, out


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_notebook_runs_under_papermill_on_existing_artifacts(stage, executed):
    nb = nbformat.read(str(executed[1][stage]), as_version=4)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    text = nbformat.writes(nb)
    for needle in SHOWS[stage_spec(stage).name]:
        assert needle in text, f"{stage}: '{needle}' not shown"
    assert "**Preview:**" in text


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_executed_notebook_is_readable_without_a_kernel(stage, executed):
    """Each figure and widget also carries a static text/html copy; plotly.js is embedded once, nothing
    is fetched from the network."""
    nb = nbformat.read(str(executed[1][stage]), as_version=4)
    data = [o.get("data", {}) for o in _outputs(nb)]
    figures_shown = [d for d in data if PLOTLY in d]
    widgets_shown = [d for d in data if WIDGET in d]
    assert all("text/html" in d for d in figures_shown + widgets_shown)
    html_parts = [d["text/html"] for d in data if "text/html" in d]
    banners = sum(len(re.findall(r"\* plotly\.js v\d", h)) for h in html_parts)
    assert banners == (1 if figures_shown else 0), f"{stage}: plotly.js embedded {banners} times"
    assert not [h for h in html_parts if re.search(r"<script[^>]+src=", h)]
    if stage_spec(stage).name == "rethink":
        assert len(figures_shown) == 1 and len(widgets_shown) == 1


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("stage", STAGES)
def test_html_export_renders_in_headless_chromium(stage, executed, tmp_path):
    """The offline HTML export of each executed notebook, opened in headless Chromium: every figure drawn,
    the CoT comparison shown with the run's first example, no console error."""
    yaml_path, notebooks = executed
    nb = nbformat.read(str(notebooks[stage]), as_version=4)
    n_figures = sum(PLOTLY in o.get("data", {}) for o in _outputs(nb))
    page = export_html(notebooks[stage], tmp_path / f"{stage}.html")
    res = _chromium("--dump-dom", page.resolve().as_uri(), profile=tmp_path / "profile")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)) == n_figures, f"{stage}: figures not drawn"
    assert dom.count('class="main-svg"') >= n_figures
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    errors = [ln for ln in console if re.search(r"uncaught|error", ln, re.I)]
    assert not errors, "\n".join(errors)
    if stage_spec(stage).name == "rethink":
        from cogpo_kit.viz.widgets import cot_items

        first = cot_items(Run(run_dir(load_params([yaml_path]))))[0]
        view = re.search(r'<div class="ck-view">.*?<div class="ck-cols">(.*?)</div></div></div>', dom, re.S)
        assert view and "Original CoT" in view.group(0) and f"<b>{first['id']}</b>" in view.group(0)
        assert n_figures == 1  # the funnel
        TEST_OUTPUTS.mkdir(parents=True, exist_ok=True)
        shot = TEST_OUTPUTS / "notebook_rethink_export.png"
        shot.unlink(missing_ok=True)
        res = _chromium("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,4000",
                        page.resolve().as_uri(), profile=tmp_path / "profile2")
        assert res.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
