"""What the stage notebooks call: their sources, parameters, loading the run's params, a preview of a
stage's inputs, running one stage.

The source of each stage notebook is a jupytext percent-format script, ``notebooks/NN_stage.py``:
JupyterLab opens and saves it as a notebook (``make lab``; jupytext's contents manager, configured by
``notebooks/jupytext.toml``), git diffs it as code, and it holds no outputs. :func:`notebook_path`
turns a source into the ``.ipynb`` that papermill executes (``cogpo-kit run``), written once per
source text under ``<COGPO_CACHE>/notebooks/``.

Every notebook has one cell tagged ``parameters`` that declares exactly the fields of
:class:`NotebookParams` with its defaults (the demo run); papermill injects new values after it. The
notebooks hold no logic: they call :func:`load`, :func:`preview`, :func:`run_stage` and the display
functions of :mod:`cogpo_kit.viz`.

    python -m cogpo_kit.pipeline.notebook 02_rethink    # print the .ipynb papermill runs for a stage
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from cogpo_kit.pipeline.stage import STAGES, read_manifest, run_dir
from cogpo_kit.pipeline.stages import manifest_path, stage_dir_name, stage_spec

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
SOURCE_FORMAT = "py:percent"
"""The jupytext format of the notebook sources."""
PREVIEW_CHARS = 160
"""Text columns of :func:`preview` are cut to this many characters."""


@dataclass
class NotebookParams:
    """The parameters cell of every stage notebook (names and defaults)."""

    params_files: list[str] = field(default_factory=lambda: ["params/demo.yaml"])
    """YAML parameter files of the run (later files win); the demo run by default."""
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


def notebook_source(stage: str) -> Path:
    """``notebooks/NN_stage.py``: the notebook as people edit it (in JupyterLab or any editor)."""
    return NOTEBOOK_DIR / f"{stage_dir_name(stage)}.py"


def read_notebook(path: str | os.PathLike) -> Any:
    """A notebook (``nbformat`` node) from a percent-format source (``.py``) or an ``.ipynb`` file."""
    import nbformat

    path = Path(path)
    if path.suffix == ".py":
        import jupytext

        try:
            return jupytext.read(path, fmt=SOURCE_FORMAT)
        except Exception as exc:  # jupytext raises several kinds for a malformed header or cell marker
            raise ValueError(f"{path}: not a readable {SOURCE_FORMAT} notebook: {type(exc).__name__}: {exc}") from exc
    return nbformat.read(str(path), as_version=4)


def to_ipynb(source: str | os.PathLike, *, cell_prefix: str | None = None) -> Any:
    """The ``.ipynb`` notebook of a source: the same cells, ids ``<cell_prefix>-NN`` (the file's stem by
    default) so two conversions of one text are identical, and the source's path in the metadata
    (``cogpo_kit.source``) so an executed copy names the file to edit."""
    import nbformat

    source = Path(source)
    nb = read_notebook(source)
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3 (ipykernel)", "language": "python",
                                          "name": "python3"})
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata["cogpo_kit"] = {"source": str(source.resolve())}
    prefix = cell_prefix or source.stem
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{prefix}-{i:02d}"
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def notebook_path(stage: str) -> Path:
    """The ``.ipynb`` papermill executes for ``stage``: :func:`to_ipynb` of :func:`notebook_source`,
    written under ``<COGPO_CACHE>/notebooks/<hash of the source text>/`` (once per text, so an edited
    source is picked up at once and concurrent runs never share a file being written)."""
    import nbformat

    from cogpo_kit.models.specs import cache_root

    source = notebook_source(stage)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no notebook source for stage {stage_dir_name(stage)}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache_root() / "notebooks" / digest / f"{source.stem}.ipynb"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        nbformat.write(to_ipynb(source), str(tmp))
        os.replace(tmp, out)
    return out


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
    """Declared parameters (name -> default) of a notebook file (a ``.py`` source or an ``.ipynb``)."""
    return parameters_cell(read_notebook(path), path)[1]


def check_parameters(path: str | os.PathLike, given: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``given`` holds a name the notebook's parameters cell does not declare."""
    declared = read_notebook_parameters(path)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"{path}: parameter(s) {', '.join(unknown)} not declared in its parameters cell "
                         f"(declared: {', '.join(declared)})")


def _cut(text: Any) -> str:
    from cogpo_kit.viz.artifacts import text_of

    s = " ".join(text_of(text).split())
    return s if len(s) <= PREVIEW_CHARS else s[:PREVIEW_CHARS - 1] + "…"


def preview_rows(params, stage: str, n: int = 3) -> tuple[list[dict], str]:
    """``(rows, what)``: the first ``n`` items ``stage`` reads (texts cut to :data:`PREVIEW_CHARS`) and
    a sentence saying what they are, or why there is nothing to show yet. Reads only what exists: the
    dataset for the critique stage, the earlier stages' artifacts for the others."""
    from cogpo_kit.viz import tables
    from cogpo_kit.viz.artifacts import Run, prompt_text

    name = stage_spec(stage).name
    run = Run(run_dir(params))

    def earlier(key: str, writer: str) -> str:
        return (f"nothing to preview: {stage_dir_name(writer)} has not written its {key} rows yet "
                f"(run that stage first)")

    if name == "critique":
        from cogpo_kit.data.loaders import load_cot

        try:
            records, _ = load_cot(params.data)
        except (OSError, ValueError) as exc:
            return [], f"nothing to preview: the dataset of `data` cannot be read ({exc})"
        rows = [{"id": r.id, "problem": _cut(r.problem), "answer": r.answer, "CoT words": len(r.reasoning.split()),
                 "CoT": _cut(r.reasoning)} for r in records[:n]]
        return rows, f"the first {len(rows)} of the {len(records)} CoTs the Critic will rate"
    if name == "rethink":
        if not run.exists("critiques"):
            return [], earlier("critiques", "critique")
        inputs = {r["id"]: r for r in run.inputs()}
        crits = run.critiques()
        rows = [{"id": c["id"], "level": c["level"], "votes": " ".join(map(str, c["votes"])),
                 "problem": _cut(inputs.get(c["id"], {}).get("problem")),
                 "CoT": _cut(inputs.get(c["id"], {}).get("reasoning"))} for c in crits[:n]]
        return rows, f"the first {len(rows)} of the {len(crits)} rated CoTs the Rethinker and Verifier will work on"
    if name in ("pairs", "sft"):
        if not run.exists("sft"):
            return [], earlier("D_SFT*", "rethink")
        sft = run.sft()
        rows = [{"id": r["id"], "origin": r["origin"], "problem": _cut(r["problem"]), "answer": r["answer"],
                 "CoT": _cut(r["reasoning"])} for r in sft[:n]]
        use = "pairs are built from" if name == "pairs" else "CRV+SFT trains on"
        return rows, f"the first {len(rows)} of the {len(sft)} rows of D_SFT* that the {use}"
    if name == "preference":
        if not run.exists("pairs"):
            return [], earlier("pairs", "pairs")
        pairs = run.pairs()
        rows = [{"id": p["id"], "gap": p["gap"], "beta": p["beta"], "prompt": _cut(prompt_text(p["prompt"])),
                 "chosen": _cut(p["chosen"]), "rejected": _cut(p["rejected"])} for p in pairs[:n]]
        return rows, f"the first {len(rows)} of the {len(pairs)} preference pairs every method trains on"
    if name == "evaluate":
        from cogpo_kit.evaluation.stage import load_eval_problems

        try:
            problems = load_eval_problems(params.eval)
        except (OSError, ValueError) as exc:
            return [], f"nothing to preview: the benchmarks of `eval` cannot be read ({exc})"
        rows = [{"benchmark": bench, "id": p.id, "question": _cut(p.question), "gold": p.gold}
                for bench, ps in problems.items() for p in ps[:n]]
        sizes = ", ".join(f"{b} {len(ps)}" for b, ps in problems.items())
        return rows, f"the first {n} problems of each benchmark every model answers (problems: {sizes})"
    return tables.stage_overview(run).to_dict("records"), "what the report collects: every stage's status and counts"


def preview(params, stage: str, n: int = 3) -> Any:
    """Display :func:`preview_rows` in a notebook: the sentence, then the rows as a table."""
    import pandas as pd
    from IPython.display import Markdown, display

    rows, what = preview_rows(params, stage, n)
    display(Markdown(f"**Preview:** {what}."))
    return pd.DataFrame(rows) if rows else None


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Print the .ipynb that papermill executes for each stage given.")
    ap.add_argument("stages", nargs="*", default=list(STAGES), help="stage names or folders (default: all)")
    for stage in ap.parse_args(argv).stages:
        print(notebook_path(stage))
    return 0


__all__ = ["NotebookParams", "STAGES", "check_parameters", "load", "notebook_defaults", "notebook_path",
           "notebook_source", "parameters_cell", "preview", "preview_rows", "read_notebook",
           "read_notebook_parameters", "run_stage", "stage_function", "to_ipynb"]


if __name__ == "__main__":
    sys.exit(main())
