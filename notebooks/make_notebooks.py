"""Write the stage notebooks, one per stage of :data:`cogpo_kit.pipeline.stages.STAGES_SPEC` and named
after its folder (no outputs, fixed cell ids).

    python notebooks/make_notebooks.py          # (re)write them
    python notebooks/make_notebooks.py --check  # exit 1 if a notebook differs from what this writes

Each notebook is thin: a title and what the stage does, a ``parameters`` cell (the fields of
:class:`cogpo_kit.pipeline.notebook.NotebookParams`), then calls into ``cogpo_kit`` that run the
stage and show its notes, tables, figures and browsers. Edit this file, not the notebooks. A stage's
text here names its folder as ``{dir}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from cogpo_kit.pipeline.notebook import notebook_defaults
from cogpo_kit.pipeline.stages import STAGES_SPEC, StageSpec

HERE = Path(__file__).resolve().parent

HOW = ("Run it cell by cell in JupyterLab (from the project root or from `notebooks/`), or unattended with "
       "`cogpo-kit run PARAMS.yaml --stages {name}`, which executes it with papermill into "
       "`outputs/<run_id>/notebooks/`. Set `skip_compute = True` to only look at what the stage already wrote.")

SETUP = """import cogpo_kit.pipeline.notebook as nb
from cogpo_kit.viz import display, figures, tables, widgets
from cogpo_kit.viz.artifacts import Run

params = nb.load(params_files, overrides, run_id, output_dir)
params.run"""

CONTENT: dict[str, dict] = {
    "critique": {
        "title": "01 · Critique: how hard is each CoT for the student?",
        "what": ("The **Critic** reads every original chain of thought (CoT) and rates it *easy*, *medium* or *hard* "
                 "for the student model, with sampled votes and a majority (paper §3.2.1, Table 13 prompt). "
                 "Reads the CoT dataset (`data` params); writes `{dir}/input.jsonl` (the records) and "
                 "`critiques.jsonl` (votes, raw outputs, level, re-asks)."),
        "cells": [
            ("md", "## Levels (paper Table 1 style)\nThe Critic's rating of the original CoTs, and how many of each "
                   "level ended up in D_SFT* (after the rethink stage)."),
            "tables.level_distribution(run)",
            "tables.critic_votes(run)",
            "figures.level_distribution(run)",
        ],
    },
    "rethink": {
        "title": "02 · Rethink and verify: CoTs that fit the student",
        "what": ("The **Rethinker** expands easy CoTs and simplifies hard ones; the **Verifier** checks each rewrite "
                 "(and the medium CoTs); a verified rewrite is rated again by the Critic and kept only as medium; "
                 "failures go back to the Rethinker, up to the attempt limit (paper §3.2.2–3.2.3). The Rethinker also "
                 "writes an *incorrect* CoT per example, checked to really reach a wrong answer. Writes "
                 "`{dir}/rewrites.jsonl`, `incorrect.jsonl` and `sft.jsonl` (= D_SFT*)."),
        "cells": [
            ("md", "## The CRV funnel"),
            "tables.funnel(run)",
            "figures.crv_funnel(run)",
            "tables.rewrite_outcomes(run)",
            "tables.incorrect_summary(run)",
            ("md", "## One example at a time\nOriginal, rewrite attempts and the incorrect version side by side; "
                   "words added against the original are green, removed ones struck through. Filter by level and "
                   "outcome."),
            "widgets.CoTComparison(run)",
        ],
    },
    "pairs": {
        "title": "03 · Preference pairs with a gap and a beta",
        "what": ("CogPO's mini-tasks (paper §3.3.2): **small gap** (r\\*, r_orig) for easy/hard examples, "
                 "**medium gap** (r_orig, r~), **large gap** (r_med, r~_med) and (r\\*, r~); each pair carries the "
                 "beta of its gap. Writes `{dir}/pairs.jsonl`."),
        "cells": [
            "tables.pairs_by_gap(run)",
            "figures.pairs_per_gap(run)",
            "figures.pair_lengths(run)",
            ("md", "## Browse the pairs\nChosen and rejected side by side; each side's own words are highlighted."),
            "widgets.PairBrowser(run)",
        ],
    },
    "sft": {
        "title": "04 · Supervised fine-tuning",
        "what": ("Fine-tunes the student on D_SFT\\* (**CRV+SFT**) and, as the baseline, on the original CoTs of the "
                 "same problems (**SFT**). Writes `{dir}/<variant>/model/` and `metrics.jsonl`."),
        "cells": [
            "tables.training_summary(run)",
            "figures.training_loss(run)",
        ],
    },
    "preference": {
        "title": "05 · Preference optimisation: CogPO and the baselines",
        "what": ("Trains **CogPO** (DPO with each pair's own beta) and the baselines **DPO**, **β-DPO** and "
                 "**SimPO**, all from the same CRV+SFT checkpoint on the same pairs (and the beta sweep of paper "
                 "Figure 6 when `preference.beta_sweep` is set). Writes `{dir}/<method>/model/` and "
                 "`metrics.jsonl`."),
        "cells": [
            "tables.training_summary(run)",
            "figures.training_loss(run)",
            "figures.reward_margins(run)",
        ],
    },
    "evaluate": {
        "title": "06 · Evaluation on the benchmarks",
        "what": ("Generates answers with every model (zero-shot, SFT variants, preference methods) on the "
                 "benchmarks of `eval`, grades them, and compares (pass@1 with 95% bootstrap intervals). Writes "
                 "`{dir}/<model>/results.json`, `samples_<bench>.jsonl` and `comparison.json`."),
        "cells": [
            ("md", "## Results (paper Table 2 style)"),
            "tables.results(run, with_ci=True)",
            "figures.results(run)",
            "figures.beta_sweep(run)",
            "tables.sample_counts(run)",
            ("md", "## Browse the samples\nFilter by benchmark, model and verdict."),
            "widgets.SampleBrowser(run)",
        ],
    },
    "report": {
        "title": "07 · The run report",
        "what": ("Collects the run's settings, stage overview, funnel, tables and figures into one self-contained "
                 "HTML file, `{dir}/report.html` (plotly.js inlined; opens from disk without a server), with the "
                 "figures also under `{dir}/figures/`."),
        "cells": [
            "tables.stage_overview(run)",
            "display.show_all_notes(run)",
            "tables.results(run, with_ci=True)",
            "display.show_report(run)",
        ],
    },
}


def build(stage: StageSpec) -> nbformat.NotebookNode:
    content = CONTENT[stage.name]
    name, folder = stage.name, stage.folder
    what = content["what"].replace("{dir}", folder)
    params_src = "\n".join(f"{k} = {v!r}" for k, v in notebook_defaults().items())
    cells = [
        new_markdown_cell(f"# {content['title']}\n\n{what}\n\n{HOW.format(name=name)}"),
        new_code_cell(params_src, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP),
        new_markdown_cell("## Run the stage\nSkipped when `skip_compute` is true: the manifest already written is read."),
        new_code_cell(f'manifest = nb.run_stage(params, "{folder}", skip_compute)\n'
                      f'run = Run.from_params(params)\n'
                      f'display.show_stage(run, "{folder}")'),
    ]
    for c in content["cells"]:
        cells.append(new_markdown_cell(c[1]) if isinstance(c, tuple) else new_code_cell(c))
    for i, cell in enumerate(cells):
        cell["id"] = f"{name}-{i:02d}"
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    nb["nbformat_minor"] = 5
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook differs")
    args = ap.parse_args(argv)
    stale = []
    missing = [s.name for s in STAGES_SPEC if s.name not in CONTENT]
    if missing:
        raise SystemExit(f"{Path(__file__).name}: no notebook content for stage(s) {', '.join(missing)}")
    for stage in STAGES_SPEC:
        path = HERE / f"{stage.folder}.ipynb"
        text = nbformat.writes(build(stage)) + "\n"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"notebooks differ from {Path(__file__).name}: {', '.join(stale)} (run it to rewrite them)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
