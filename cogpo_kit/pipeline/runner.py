"""``cogpo-kit run``: the stage notebooks executed in order by papermill, one run folder.

For each selected stage, ``notebooks/NN_stage.ipynb`` is executed with its parameters taken from
the YAML files (and overrides) into ``<output_dir>/<run_id>/notebooks/NN_stage.ipynb``. Before
anything runs, every notebook's ``parameters`` cell is read: a parameter it does not declare is an
error (papermill itself would only warn). A stage whose manifest matches the current parameters
and inputs (see :mod:`cogpo_kit.pipeline.freshness`) is skipped unless ``force``; when its
executed notebook is missing, the notebook is still executed with ``skip_compute = True`` so the
run folder holds every stage's tables and figures. The first failure stops the run with an error
that names the executed notebook and the failing cell. At the end the results table and the
report path are printed.

``in_process=True`` calls the stage functions directly (no kernels, no notebooks): for tests and
debugging.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cogpo_kit.params.loader import ParamsError, params_dict
from cogpo_kit.params.run import load_params
from cogpo_kit.pipeline.freshness import check_stage, record_stage
from cogpo_kit.pipeline.notebook import check_parameters, notebook_path, stage_function
from cogpo_kit.pipeline.stage import STAGES, run_dir
from cogpo_kit.pipeline.stages import artifact_path, stage_dir_name
from cogpo_kit.progress import progress

KERNEL_NAME = "python3"
FALLBACK_KERNEL = "cogpo-kit"


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage, the executed notebook and the failing cell."""


def select_stages(stages: Sequence[str] | str | None = None, from_stage: str | None = None) -> list[str]:
    """Stage folder names to run, in pipeline order (``stages`` and ``from_stage`` both narrow the set)."""
    try:
        if isinstance(stages, str):
            stages = [s for s in stages.split(",") if s.strip()]
        chosen = {stage_dir_name(s.strip()) for s in stages} if stages else set(STAGES)
        start = STAGES.index(stage_dir_name(from_stage)) if from_stage else 0
    except ValueError as exc:
        raise ParamsError(str(exc)) from None
    out = [s for s in STAGES[start:] if s in chosen]
    if not out:
        raise ParamsError(f"no stage selected (stages={stages!r}, from={from_stage!r})")
    return out


def ensure_kernel() -> str:
    """A kernelspec that starts this interpreter: ``python3`` when it does, else one installed as
    ``cogpo-kit`` into this environment."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    pythons = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    for name in (KERNEL_NAME, FALLBACK_KERNEL):
        try:
            argv0 = ksm.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        # jupyter_client starts sys.executable for a bare "python" (see KernelManager.format_kernel_cmd).
        if argv0 in pythons or os.path.realpath(argv0) == os.path.realpath(sys.executable):
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=FALLBACK_KERNEL, display_name="Python (cogpo-kit)", prefix=sys.prefix)
    print(f"installed the Jupyter kernel '{FALLBACK_KERNEL}' for {sys.executable}", file=sys.stderr)
    return FALLBACK_KERNEL


def execute_notebook(stage: str, out_path: Path, parameters: dict[str, Any], *, kernel_name: str,
                     source: Path | None = None, cwd: str | None = None, log_output: bool = False) -> Path:
    """Execute one stage notebook with papermill; a failing cell raises :class:`PipelineError`."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = source or notebook_path(stage)
    check_parameters(source, parameters)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(source), str(out_path), parameters=parameters, kernel_name=kernel_name,
                            cwd=cwd or os.getcwd(), progress_bar=os.environ.get("COGPO_NO_PROGRESS") != "1",
                            log_output=log_output)
    except PapermillExecutionError as exc:
        first = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        raise PipelineError(
            f"stage {stage} failed in {out_path}, cell {exc.cell_index} (In [{exc.exec_count}]: {first.strip()!r}): "
            f"{exc.ename}: {exc.evalue}") from None
    except Exception as exc:  # kernel died, timeout, unreadable notebook: name the notebook all the same
        raise PipelineError(f"stage {stage} failed in {out_path}: {type(exc).__name__}: {exc}") from exc
    return out_path


def _print_results(run_path: Path) -> tuple[Any, Path | None]:
    from cogpo_kit.viz import tables
    from cogpo_kit.viz.artifacts import Run

    run = Run(run_path)
    table = tables.results(run, with_ci=True)
    if table.empty:
        print("results: none (the evaluation stage has not run)")
    else:
        print("results (pass@1 %, [95% CI]):")
        print(table.to_string())
    report = artifact_path(run_path, "report")
    print(f"report: {report}" if report.exists() else "report: not written (the report stage has not run)")
    return table, report if report.exists() else None


def run_pipeline(params_paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
                 stages: Sequence[str] | str | None = None, from_stage: str | None = None, force: bool = False,
                 in_process: bool = False, *, log_output: bool = False) -> dict:
    """Run the selected stages of one run; returns ``{run, executed, skipped, notebooks, report, results}``.

    ``log_output`` also streams each notebook's cell output to this process's log."""
    if isinstance(params_paths, (str, os.PathLike)):
        params_paths = [params_paths]
    overrides = list(overrides or ())
    params = load_params(params_paths, overrides)
    selected = select_stages(stages, from_stage)
    run_path = run_dir(params)
    tree = params_dict(params)
    nb_dir = run_path / "notebooks"
    parameters = {"params_files": [str(Path(p).resolve()) for p in params_paths], "overrides": overrides,
                  "output_dir": str(Path(params.run.output_dir).resolve()), "skip_compute": False}
    kernel = None
    if not in_process:
        for stage in selected:  # every notebook checked before the first one runs
            try:
                check_parameters(notebook_path(stage), parameters)
            except (ValueError, FileNotFoundError) as exc:
                raise ParamsError(str(exc)) from None
        kernel = ensure_kernel()
    print(f"run {params.run.run_id}: {run_path} · stages {', '.join(selected)}"
          f"{' · forced' if force else ''}{' · in process' if in_process else ''}")
    executed, skipped, notebooks = [], {}, {}
    bar = progress(selected, desc="pipeline", unit="stage")
    for stage in bar:
        bar.set_postfix_str(stage)
        fresh = check_stage(run_path, stage, tree)
        out_nb = nb_dir / f"{stage}.ipynb"
        if fresh.fresh and not force:
            skipped[stage] = fresh.reason
            bar.write(f"{stage}: skipped ({fresh.reason}; --force redoes it)")
            record_stage(run_path, stage)
            if not in_process and not out_nb.exists():
                notebooks[stage] = str(execute_notebook(stage, out_nb, {**parameters, "skip_compute": True},
                                                        kernel_name=kernel))
            continue
        bar.write(f"{stage}: running ({'forced' if fresh.fresh else fresh.reason})")
        t0 = time.time()
        if in_process:
            try:
                stage_function(stage)(params)
            except Exception as exc:
                raise PipelineError(f"stage {stage} failed: {type(exc).__name__}: {exc}") from exc
        else:
            notebooks[stage] = str(execute_notebook(stage, out_nb, parameters, kernel_name=kernel,
                                                    log_output=log_output))
        record_stage(run_path, stage)
        executed.append(stage)
        bar.write(f"{stage}: done in {time.time() - t0:.1f} s")
    bar.close()
    table, report = _print_results(run_path)
    return {"run": str(run_path), "executed": executed, "skipped": skipped, "notebooks": notebooks,
            "report": str(report) if report else None, "results": table}
