"""What the stage notebooks call: their parameters, loading the run's params, running one stage.

Every notebook in ``notebooks/`` has one cell tagged ``parameters`` that declares exactly the
fields of :class:`NotebookParams` with its defaults; papermill (and ``cogpo-kit run``) injects
new values after it. The notebooks hold no logic: they call :func:`load`, :func:`run_stage` and
the display functions of :mod:`cogpo_kit.viz`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from cogpo_kit.pipeline.stage import STAGES, read_manifest, run_dir
from cogpo_kit.pipeline.stages import manifest_path, stage_dir_name, stage_spec

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class NotebookParams:
    """The parameters cell of every stage notebook (names and defaults)."""

    params_files: list[str] = field(default_factory=lambda: ["params/smoke.yaml"])
    """YAML parameter files of the run (later files win)."""
    overrides: list[str] = field(default_factory=list)
    """``section.key=value`` overrides, e.g. ``"eval.limit=5"``."""
    run_id: Optional[str] = None
    """Replaces ``run.run_id`` of the YAML files."""
    output_dir: Optional[str] = None
    """Replaces ``run.output_dir`` of the YAML files."""
    skip_compute: bool = False
    """Only display the artifacts that exist; do not run the stage."""


def notebook_defaults() -> dict[str, Any]:
    return dataclasses.asdict(NotebookParams())


def notebook_path(stage: str) -> Path:
    return NOTEBOOK_DIR / f"{stage_dir_name(stage)}.ipynb"


def _find_base(params_files: Sequence[str | os.PathLike]) -> Path:
    """The folder relative parameter paths are taken from: the current one, or the first parent
    holding them all (a notebook opened in JupyterLab runs inside ``notebooks/``)."""
    cwd = Path.cwd()
    relative = [Path(p) for p in params_files if not Path(p).is_absolute()]
    for base in (cwd, *cwd.parents):
        if all((base / p).exists() for p in relative):
            return base
    return cwd


def load(params_files: Sequence[str | os.PathLike], overrides: Sequence[str] = (), run_id: str | None = None,
         output_dir: str | None = None):
    """The run's :class:`~cogpo_kit.params.RunParams` from a notebook's parameters.

    Relative YAML paths and a relative ``run.output_dir`` are taken from the folder that holds
    the YAML files (so a notebook opened from ``notebooks/`` finds ``params/`` and ``outputs/``
    of the project)."""
    from cogpo_kit.params.loader import ParamsError
    from cogpo_kit.params.run import load_params

    if isinstance(params_files, (str, os.PathLike)):
        params_files = [params_files]
    if isinstance(overrides, str):
        raise ParamsError(f"overrides must be a list of 'section.key=value' strings, got the string {overrides!r}")
    base = _find_base(params_files)
    paths = [p if Path(p).is_absolute() else base / p for p in params_files]
    extra = list(overrides)
    if run_id is not None:
        extra.append(f"run.run_id={run_id}")
    if output_dir is not None:
        extra.append(f"run.output_dir={output_dir}")
    params = load_params(paths, extra)
    if not Path(params.run.output_dir).is_absolute() and base != Path.cwd():
        params = load_params(paths, extra + [f"run.output_dir={base / params.run.output_dir}"])
    return params


def stage_function(stage: str):
    """The entry function of a stage (its ``entry`` in :data:`~cogpo_kit.pipeline.stages.STAGES_SPEC`)."""
    module, name = stage_spec(stage).entry
    return getattr(importlib.import_module(module), name)


def run_stage(params, stage: str, skip_compute: bool = False) -> dict:
    """Run ``stage`` and return its manifest; with ``skip_compute`` only read the existing manifest."""
    name = stage_dir_name(stage)
    if skip_compute:
        manifest = read_manifest(run_dir(params), name)
        if manifest is None:
            raise FileNotFoundError(f"{manifest_path(run_dir(params), name)}: stage {name} has not run "
                                    f"(set skip_compute = False to run it)")
        return manifest
    return stage_function(name)(params)


def parameters_cell(nb: Any, path: str | os.PathLike = "<notebook>") -> tuple[int, dict[str, Any]]:
    """``(cell index, {name: default})`` of a notebook's cell tagged ``parameters``.

    Each statement there must be a plain ``name = literal`` assignment."""
    cells = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    index = cells[0]
    tree = ast.parse(nb.cells[index].source)
    declared: dict[str, Any] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, (ast.Assign, ast.AnnAssign))):
            raise ValueError(f"{path}: parameters cell line {stmt.lineno}: only 'name = value' assignments allowed")
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or stmt.value is None:
            raise ValueError(f"{path}: parameters cell line {stmt.lineno}: only 'name = value' assignments allowed")
        try:
            declared[targets[0].id] = ast.literal_eval(stmt.value)
        except ValueError:
            raise ValueError(f"{path}: parameters cell line {stmt.lineno}: '{targets[0].id}' must be a literal") from None
    return index, declared


def read_notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """Declared parameters (name -> default) of a notebook file."""
    import nbformat

    return parameters_cell(nbformat.read(str(path), as_version=4), path)[1]


def check_parameters(path: str | os.PathLike, given: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``given`` holds a name the notebook's parameters cell does not declare."""
    declared = read_notebook_parameters(path)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"{path}: parameter(s) {', '.join(unknown)} not declared in its parameters cell "
                         f"(declared: {', '.join(declared)})")


__all__ = ["NotebookParams", "STAGES", "check_parameters", "load", "notebook_defaults",
           "notebook_path", "parameters_cell", "read_notebook_parameters", "run_stage", "stage_function"]
