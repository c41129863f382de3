"""The batch runner: stage selection, skipping stages whose manifest matches, undeclared notebook
parameters, failures that name the notebook and the cell."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from cogpo_kit.io import atomic_write_jsonl
from cogpo_kit.params import ParamsError, load_params, params_dict
from cogpo_kit.pipeline import runner
from cogpo_kit.pipeline.freshness import check_stage, stage_params
from cogpo_kit.pipeline.stage import STAGES, open_stage, run_dir
from cogpo_kit.pipeline.stages import manifest_path

CRITIQUE, RETHINK, PAIRS, SFT, PREFERENCE, EVALUATE, REPORT = STAGES


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run": {"run_id": "r", "output_dir": str(tmp_path / "out")}}), encoding="utf-8")
    return path


@pytest.fixture
def fake_stages(monkeypatch):
    """Stage functions that write a real manifest (recording their input file) and count their calls."""
    calls: list[str] = []

    def make(stage):
        def run(params):
            calls.append(stage)
            path = run_dir(params)
            inputs = [path / "data.txt"] if stage == CRITIQUE else []
            st = open_stage(path, stage, stage_params(params_dict(params), stage), inputs=inputs)
            atomic_write_jsonl(st.file("out.jsonl"), [{"stage": stage}])
            return st.finish()
        return run

    monkeypatch.setattr(runner, "stage_function", make)
    return calls


def test_select_stages():
    assert runner.select_stages() == list(STAGES)
    assert runner.select_stages("pairs,critique") == [CRITIQUE, PAIRS]
    assert runner.select_stages(None, "evaluate") == [EVALUATE, REPORT]
    assert runner.select_stages(["critique", EVALUATE, "report"], "sft") == [EVALUATE, REPORT]
    with pytest.raises(ParamsError, match="unknown stage 'critic'"):
        runner.select_stages("critic")
    with pytest.raises(ParamsError, match="no stage selected"):
        runner.select_stages("critique", "pairs")


def test_skips_matching_stages_and_redoes_what_changed(tmp_path, fake_stages, capsys):
    yaml_path = _params_file(tmp_path)
    (tmp_path / "out/r").mkdir(parents=True)
    (tmp_path / "out/r/data.txt").write_text("v1")
    first = runner.run_pipeline([yaml_path], in_process=True)
    assert first["executed"] == list(STAGES) and fake_stages == list(STAGES)

    fake_stages.clear()
    second = runner.run_pipeline([yaml_path], in_process=True)
    assert second["executed"] == [] and set(second["skipped"].values()) == {"up to date"}
    assert f"{CRITIQUE}: skipped (up to date" in capsys.readouterr().out

    # a parameter only the evaluation depends on: evaluation and report are redone
    third = runner.run_pipeline([yaml_path], ["eval.limit=3"], in_process=True)
    assert third["executed"] == [EVALUATE, REPORT]

    # a critique parameter: the critique is redone, and every stage reading its outputs after it
    fake_stages.clear()
    fourth = runner.run_pipeline([yaml_path], ["eval.limit=3", "crv.votes=5"], in_process=True)
    assert fourth["executed"] == list(STAGES)

    # an input file changed: the stage that read it is redone
    (tmp_path / "out/r/data.txt").write_text("v2")
    params = load_params([yaml_path], ["eval.limit=3", "crv.votes=5"])
    assert check_stage(run_dir(params), CRITIQUE, params_dict(params)).reason.endswith("data.txt changed")
    fake_stages.clear()
    fifth = runner.run_pipeline([yaml_path], ["eval.limit=3", "crv.votes=5"], stages="critique", in_process=True)
    assert fifth["executed"] == [CRITIQUE]
    assert check_stage(run_dir(params), RETHINK, params_dict(params)).reason == f"{CRITIQUE} was redone after it"

    # --force redoes a matching stage
    forced = runner.run_pipeline([yaml_path], ["eval.limit=3", "crv.votes=5"], stages="critique", force=True,
                                 in_process=True)
    assert forced["executed"] == [CRITIQUE]


def test_stage_that_recorded_other_params_is_compared_by_hash(tmp_path):
    params = load_params([_params_file(tmp_path)])
    tree = params_dict(params)
    open_stage(run_dir(params), SFT, {"eval": tree["eval"]}).finish()  # nothing SFT depends on
    assert check_stage(run_dir(params), SFT, tree).reason == "parameters changed (params_hash differs)"
    open_stage(run_dir(params), SFT, tree).finish()  # the whole parameter set
    assert check_stage(run_dir(params), SFT, tree).fresh


def test_in_process_failure_names_the_stage(tmp_path, monkeypatch):
    def boom(params):
        raise ValueError("bad row")

    monkeypatch.setattr(runner, "stage_function", lambda stage: boom)
    with pytest.raises(runner.PipelineError, match=f"stage {CRITIQUE} failed: ValueError: bad row"):
        runner.run_pipeline([_params_file(tmp_path)], in_process=True)


def _notebook(path: Path, params_src: str, *cells: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(params_src, metadata={"tags": ["parameters"]}),
                             *(new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_undeclared_parameter_is_an_error_before_anything_runs(tmp_path, monkeypatch, fake_stages):
    bad = _notebook(tmp_path / "bad.ipynb", "params_files = []\noverrides = []\nrun_id = None\noutput_dir = None",
                    "raise SystemExit('must not run')")
    monkeypatch.setattr(runner, "notebook_path", lambda stage: bad)
    with pytest.raises(ParamsError, match=r"bad\.ipynb: parameter\(s\) skip_compute not declared"):
        runner.run_pipeline([_params_file(tmp_path)])
    assert fake_stages == [] and not (tmp_path / "out/r/notebooks").exists()


def test_parameters_cell_must_be_plain_assignments(tmp_path):
    from cogpo_kit.pipeline.notebook import read_notebook_parameters

    nb = _notebook(tmp_path / "x.ipynb", "a = 1\nprint(a)")
    with pytest.raises(ValueError, match="line 2: only 'name = value' assignments"):
        read_notebook_parameters(nb)


def test_kernel_is_this_interpreter():
    assert runner.ensure_kernel() == "python3"


@pytest.mark.slow
def test_failing_notebook_names_notebook_and_cell(tmp_path):
    src = _notebook(tmp_path / "fails.ipynb", "x = 1", "y = x + 1", "raise ValueError(f'broken at {y}')", "z = 3")
    out = tmp_path / "run" / "notebooks" / f"{CRITIQUE}.ipynb"
    with pytest.raises(runner.PipelineError) as err:
        runner.execute_notebook(CRITIQUE, out, {"x": 2}, kernel_name=runner.ensure_kernel(), source=src)
    msg = str(err.value)
    # cell 3 counting the injected parameters cell; In [4] as Jupyter numbers it
    assert str(out) in msg and "cell 3 (In [4]: \"raise ValueError(f'broken at {y}')\")" in msg
    assert msg.endswith("ValueError: broken at 3")
    executed = nbformat.read(str(out), as_version=4)  # the executed notebook is kept, with the error in it
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert "injected-parameters" in code[1].metadata.tags and "x = 2" in code[1].source
    assert [o.get("ename") for o in code[3].outputs] == ["ValueError"] and code[4].execution_count is None


def test_stage_keys_of_its_own_are_compared(tmp_path):
    params = load_params([_params_file(tmp_path)])
    tree = params_dict(params)
    run = run_dir(params)
    open_stage(run, PAIRS, {"pairs": tree["pairs"], "student_model": params.student.model}).finish()
    assert check_stage(run, PAIRS, tree).fresh
    changed = params_dict(load_params([_params_file(tmp_path)], ["student.model=tiny:other"]))
    assert check_stage(run, PAIRS, changed).reason == "parameter 'student.model' changed"
    open_stage(run, SFT, {"sft": tree["sft"], "gone_key": 1}).finish()
    assert check_stage(run, SFT, tree).reason == "recorded parameter 'gone_key' names no current parameter"


def test_parameters_added_since_are_not_compared(tmp_path):
    params = load_params([_params_file(tmp_path)])
    tree = params_dict(params)
    old = params_dict(params)
    del old["crv"]["critic"]["engine"]["max_retries"]  # as if the kit had no such parameter then
    open_stage(run_dir(params), CRITIQUE, old).finish()
    assert check_stage(run_dir(params), CRITIQUE, tree).fresh
    old["crv"]["critic"]["engine"]["retired_option"] = 1  # a parameter the kit no longer has
    open_stage(run_dir(params), CRITIQUE, old).finish()
    assert check_stage(run_dir(params), CRITIQUE, tree).reason == "parameter 'crv.critic' changed"


def test_moved_or_copied_run_folder_still_matches(tmp_path, fake_stages):
    import os
    import shutil

    yaml_path = _params_file(tmp_path)
    (tmp_path / "out/r").mkdir(parents=True)
    (tmp_path / "out/r/data.txt").write_text("v1")
    runner.run_pipeline([yaml_path], in_process=True)
    shutil.copytree(tmp_path / "out", tmp_path / "moved")  # new mtimes in copy order, inputs recorded elsewhere
    shutil.rmtree(tmp_path / "out")
    os.utime(manifest_path(tmp_path / "moved/r", "critique"))  # the first stage now looks newest
    fake_stages.clear()
    again = runner.run_pipeline([yaml_path], [f"run.output_dir={tmp_path / 'moved'}"], in_process=True)
    assert again["executed"] == [] and fake_stages == []

    # without the runner's record, a newer upstream manifest means the stage is redone
    (tmp_path / "moved/r/notebooks/pipeline_state.json").unlink()
    params = load_params([yaml_path], [f"run.output_dir={tmp_path / 'moved'}"])
    assert check_stage(run_dir(params), RETHINK, params_dict(params)).reason == f"{CRITIQUE} was redone after it"


# --- what a running stage shows in the terminal -----------------------------------------------------------

def test_in_process_stage_progress_and_log_lines_reach_the_terminal(tmp_path, monkeypatch, capsys):
    from cogpo_kit.progress import progress

    monkeypatch.delenv("COGPO_NO_PROGRESS", raising=False)

    def make(stage):
        def run(params):
            st = open_stage(run_dir(params), stage, stage_params(params_dict(params), stage))
            for i in progress(range(7), desc=f"items of {stage}", unit="item"):
                pass
            st.logger.info("graded %d of %d", 7, 7)
            return st.finish()
        return run

    monkeypatch.setattr(runner, "stage_function", make)
    runner.run_pipeline([_params_file(tmp_path)], stages="critique,pairs", in_process=True, label="v1")
    got = capsys.readouterr()
    assert "[v1] [1/2] 01_critique: running (not run yet)" in got.out
    assert "[v1]   " in got.out and "INFO graded 7 of 7" in got.out
    assert f"INFO stage {PAIRS} finished in" in got.out
    assert "items of 01_critique: 100%" in got.err and "7/7" in got.err


def test_log_tail_prints_only_new_lines(tmp_path):
    import io

    log = tmp_path / "stage.log"
    log.write_text("old line\n")
    out = io.StringIO()
    console = runner.Console(out=out, err=io.StringIO(), label="x")
    with runner.LogTail(log, console, interval_s=0.01):
        with open(log, "a") as f:
            f.write("first new\nsecond ")
            f.flush()
            f.write("half\n")
    assert out.getvalue() == "[x]   first new\n[x]   second half\n"


def test_console_keeps_log_lines_and_bars_apart():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, err = Tty(), Tty()
    c = runner.Console(out=out, err=err)
    c.bar("\ritems:  50%|##  | 1/2")
    c.line("a log line")
    c.bar("\ritems: 100%|####| 2/2\n")
    assert out.getvalue() == "a log line\n"
    # the bar is cleared before the log line and drawn again after it; the last state ends its line
    assert err.getvalue().endswith("items: 100%|####| 2/2\n")
    assert "\r" + " " * len("items:  50%|##  | 1/2") + "\r" in err.getvalue()
    # a nested bar (tqdm draws it one line down and moves back up) takes the status line, commits nothing
    err2 = Tty()
    c2 = runner.Console(out=Tty(), err=err2)
    c2.bar("\rjobs:  50%| 1/2")
    c2.bar("\n\rsamples:  33%| 3/9\x1b[A")
    assert "\n" not in err2.getvalue() and "\x1b" not in err2.getvalue()
    assert err2.getvalue().endswith("\rsamples:  33%| 3/9")


def test_notebook_progress_bars_are_forwarded_as_text(tmp_path, monkeypatch):
    import io

    monkeypatch.delenv("COGPO_NO_PROGRESS", raising=False)  # CI sets it; this test is about the bars

    src = _notebook(tmp_path / "bars.ipynb", "x = 1",
                    "import os\nfrom cogpo_kit.progress import progress\nprint(os.environ.get('COGPO_PROGRESS'))\n"
                    "for i in progress(range(5), desc='items', unit='item'):\n    pass")
    out_nb = tmp_path / "run" / "notebooks" / f"{CRITIQUE}.ipynb"
    err = io.StringIO()
    console = runner.Console(out=io.StringIO(), err=err, label="v")
    runner.execute_notebook(CRITIQUE, out_nb, {"x": 2}, kernel_name=runner.ensure_kernel(), source=src,
                            console=console)
    assert "[v] items: 100%|" in err.getvalue() and "5/5" in err.getvalue()
    cells = nbformat.read(str(out_nb), as_version=4).cells
    outputs = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(o.get("name") == "stdout" and o.get("text", "").strip() == "text" for o in outputs)  # the kernel's mode
    assert not any("application/vnd.jupyter.widget-view+json" in (o.get("data") or {}) for o in outputs)
