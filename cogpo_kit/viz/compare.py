"""Comparing several runs: a sweep's variants, or any run folders (``cogpo-kit compare``, or a notebook).

    cogpo-kit compare outputs/demo-beta_large0.3 outputs/demo-beta_large0.5 -o compare.html
    cogpo-kit compare outputs/demo-sweep                 # a sweep folder: its variants, in order

    from cogpo_kit.viz.compare import compare_runs
    cmp = compare_runs(["outputs/demo-beta_large0.3", "outputs/demo-beta_large0.5"])
    cmp.table(), cmp.paired, cmp.figure, cmp.params_diff      # or just `cmp` in a notebook cell

What :func:`compare_runs` gathers from each run's evaluation stage and manifests:

- **results**: every (run, model, benchmark) score with the 95% interval its evaluation recorded
  (``comparison.json``, else ``results.json``);
- **paired**: each run against the reference run (the first, or ``reference``), model by model, on
  the problems both answered: per-problem pass@1 from ``06_evaluate/<model>/samples_<bench>.jsonl``
  (the mean of ``correct`` over a problem's samples, as the evaluation scores it), the difference in
  points with its paired-bootstrap interval and p-value (McNemar's exact test for one sample per
  problem, else a sign-flip test: :func:`cogpo_kit.evaluation.metrics.paired_comparison`), Holm's
  correction over all of them, and ``within_noise`` when the interval contains 0;
- **params_diff**: the parameters whose values differ between the runs (the union of the parameters
  their stage manifests recorded; the run's own id and folder left out);
- **stages**: per run and stage, whether it ran there or was seeded from another run (a sweep);
- **figure**: the study's figure. When the runs differ in one numeric parameter (a grid over
  ``pairs.beta_large``, say) it is pass@1 against that parameter (paper Figure 6), a line per model
  and benchmark; otherwise grouped bars per run (paper Table 5 / 6 ablations). It shows the
  *focus* models: those whose answers differ between runs (a beta sweep's CogPO; not the zero-shot
  model every variant evaluates the same), or every model when none differ.

:func:`write_compare_report` writes it all as one self-contained HTML file (plotly.js inlined).
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from cogpo_kit import __version__
from cogpo_kit.evaluation.metrics import holm, paired_comparison
from cogpo_kit.params.loader import deep_merge
from cogpo_kit.pipeline.stages import STAGES
from cogpo_kit.pipeline.sweep_files import COMPARE_REPORT, REUSED_KEY, SWEEP_MANIFEST
from cogpo_kit.viz.artifacts import Run, bench_label, model_label, model_order

LOCATION_KEYS = ("run.run_id", "run.output_dir")
"""Parameters that only say where a run lives; never shown as a difference."""
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50), height=420)


def expand_run_dirs(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Run folders and their display names; a sweep folder stands for its variants' runs (named by variant)."""
    runs: list[Path] = []
    names: list[str] = []
    for p in paths:
        p = Path(p)
        sweep = p / SWEEP_MANIFEST
        if sweep.exists():
            doc = json.loads(sweep.read_text(encoding="utf-8"))
            for v in doc.get("variants") or []:
                run = Path(v["run"]) if Path(v["run"]).exists() else p.parent / v["run_id"]
                runs.append(run)
                names.append(str(v["name"]))
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: not a run folder (no such folder)")
        runs.append(p)
        names.append(p.name)
    return runs, _short_names(names)


def _short_names(names: list[str]) -> list[str]:
    """Names without the prefix every one of them shares up to a '-' (``demo-a``, ``demo-b`` -> ``a``, ``b``)."""
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    cut = prefix.rfind("-") + 1
    short = [n[cut:] for n in names]
    return short if cut and all(short) and len(set(short)) == len(short) else names


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def run_params(run: Run) -> dict[str, Any]:
    """Dotted parameter -> value: what the run's stage manifests recorded, merged in stage order."""
    merged: dict = {}
    for stage in STAGES:
        m = run.manifest(stage)
        if m and isinstance(m.get("params"), dict):
            merged = deep_merge(merged, m["params"])
    return _flatten(merged) if merged else {}


def problem_scores(run: Run) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {benchmark: {problem id: pass@1}}}`` from the run's samples (mean of ``correct``)."""
    by: dict[tuple[str, str, str], list[bool]] = {}
    for row in run.samples():
        by.setdefault((row["model"], row["benchmark"], str(row["id"])), []).append(bool(row["correct"]))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (model, bench, pid), vals in by.items():
        out.setdefault(model, {}).setdefault(bench, {})[pid] = sum(vals) / len(vals)
    return out


def _value(v: Any) -> str:
    if v is None:
        return "null"
    return v if isinstance(v, str) else json.dumps(v)


@dataclass
class RunComparison:
    """Several runs side by side (see the module docstring)."""

    names: list[str]
    """Display name of each run, in order."""
    paths: list[Path]
    """Run folders, in the order of ``names``."""
    reference: str
    """The run every other one is compared with."""
    results: pd.DataFrame
    """Long table: run, model, benchmark, score, ci_low, ci_high, n, protocol."""
    paired: pd.DataFrame
    """Run against the reference, per model and benchmark: diff (points), its interval, p, p_holm, ..."""
    params_diff: pd.DataFrame
    """Parameters that differ (rows) per run (columns)."""
    stages: pd.DataFrame
    """Per run (rows) and stage (columns): ``ran``, ``reused from <run>`` or ``not run``."""
    focus: list[str]
    """Models shown in the figure: those whose answers differ between runs (every model when none do)."""
    figure: go.Figure
    """The study's figure."""
    study: str = "runs"
    """``param:<path>`` when the runs differ in one numeric parameter, else ``runs``."""
    notes: list[str] = field(default_factory=list)
    """Plain-language remarks (benchmarks not shared, models missing from a run)."""
    focus_why: str = ""
    """Why the figure shows the models it shows."""

    def table(self, *, with_ci: bool = True, models: Optional[Sequence[str]] = None) -> pd.DataFrame:
        """Runs and models as rows, benchmarks as columns: ``score [low, high]`` (or the score)."""
        df = self.results if models is None else self.results[self.results["model"].isin(models)]
        if df.empty:
            return pd.DataFrame()
        benches = list(dict.fromkeys(df["benchmark"]))
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in df.itertuples(index=False):
            cell: Any = None if r.score is None else round(float(r.score), 1)
            if with_ci and r.score is not None and r.ci_low is not None and r.ci_high is not None \
                    and r.ci_low == r.ci_low:
                cell = f"{r.score:.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}]"
            rows.setdefault((r.run, model_label(r.model)), {})[bench_label(r.benchmark)] = cell
        out = pd.DataFrame.from_dict(rows, orient="index")
        out = out[[bench_label(b) for b in benches]]
        out.index = pd.MultiIndex.from_tuples(out.index, names=["run", "model"])
        return out

    def paired_table(self) -> pd.DataFrame:
        """The paired comparisons as printed: ``run vs reference``, model, benchmark, difference [interval]."""
        if self.paired.empty:
            return pd.DataFrame()
        rows = []
        for p in self.paired.itertuples(index=False):
            rows.append({"run": f"{p.run} vs {p.reference}", "model": model_label(p.model),
                         "benchmark": bench_label(p.benchmark), "n": p.n,
                         "difference (points)": f"{p.diff:+.1f} [{p.ci_low:+.1f}, {p.ci_high:+.1f}]",
                         "test": p.test, "p": None if p.p is None else round(float(p.p), 4),
                         "p_holm": None if p.p_holm is None or p.p_holm != p.p_holm else round(float(p.p_holm), 4),
                         "within noise": "yes" if p.within_noise else "no"})
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        return compare_html(self, standalone=False)


def compare_runs(paths: Sequence[str | os.PathLike], *, names: Optional[Sequence[str]] = None,
                 reference: Optional[str] = None, models: Optional[Sequence[str]] = None,
                 resamples: int = 10000, seed: int = 0) -> RunComparison:
    """Compare run folders (a sweep folder stands for its variants); see the module docstring.

    ``reference``: the name (or folder name) of the run the others are compared with (default the
    first); ``models``: only these models (default every model evaluated in any run)."""
    run_paths, default_names = expand_run_dirs(paths)
    names = list(names) if names is not None else default_names
    if len(names) != len(run_paths):
        raise ValueError(f"{len(names)} names for {len(run_paths)} runs")
    if len(set(names)) != len(names):
        raise ValueError(f"two runs have the same name: {names}")
    runs = [Run(p) for p in run_paths]
    if reference is None:
        ref = names[0]
    elif reference in names:
        ref = reference
    elif reference in [p.name for p in run_paths]:
        ref = names[[p.name for p in run_paths].index(reference)]
    else:
        raise ValueError(f"reference run '{reference}' is not one of the runs ({', '.join(names)})")
    notes: list[str] = []

    rows = []
    for name, run in zip(names, runs):
        found = run.results()
        if not found:
            notes.append(f"run {name} ({run.path}) has no evaluation results")
        for r in found:
            if models is not None and r["model"] not in models:
                continue
            rows.append({"run": name, "model": r["model"], "benchmark": r["benchmark"], "score": r.get("score"),
                         "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"), "n": r.get("n"),
                         "protocol": r.get("protocol")})
    results = pd.DataFrame(rows, columns=["run", "model", "benchmark", "score", "ci_low", "ci_high", "n", "protocol"])
    if not results.empty:
        order = {m: i for i, m in enumerate(model_order(results["model"]))}
        results["_run"] = results["run"].map({n: i for i, n in enumerate(names)})
        results["_model"] = results["model"].map(order)
        results = results.sort_values(["_run", "_model"], kind="stable").drop(columns=["_run", "_model"])
        results = results.reset_index(drop=True)

    scores = {name: problem_scores(run) for name, run in zip(names, runs)}
    paired_rows = []
    ref_scores = scores[ref]
    for name in names:
        if name == ref:
            continue
        for model in model_order(sorted(set(scores[name]) | set(ref_scores))):
            if models is not None and model not in models:
                continue
            if model not in scores[name] or model not in ref_scores:
                continue
            for bench in scores[name][model]:
                if bench not in ref_scores[model]:
                    continue
                a, b = scores[name][model][bench], ref_scores[model][bench]
                if not set(a) & set(b):
                    notes.append(f"{name} and {ref} share no problems of {bench} for {model}")
                    continue
                cmp = paired_comparison(a, b, resamples=resamples, seed=seed)
                paired_rows.append({"run": name, "reference": ref, "model": model, "benchmark": bench, **cmp})
    for p, adj in zip(paired_rows, holm([p["p"] for p in paired_rows])):
        p["p_holm"] = adj
    paired = pd.DataFrame(paired_rows, columns=["run", "reference", "model", "benchmark", "n", "diff", "ci_low",
                                                "ci_high", "points_per_problem", "test", "p", "p_holm",
                                                "within_noise", "only_a", "only_b"])

    params = {name: run_params(run) for name, run in zip(names, runs)}
    keys = sorted({k for p in params.values() for k in p} - set(LOCATION_KEYS))
    missing = object()
    diff_rows = {}
    for k in keys:
        vals = [params[n].get(k, missing) for n in names]
        if len({_value(v) if v is not missing else "\0" for v in vals}) > 1:
            diff_rows[k] = ["–" if v is missing else _value(v) for v in vals]
    params_diff = pd.DataFrame.from_dict(diff_rows, orient="index", columns=names)
    params_diff.index.name = "parameter"

    stage_rows = {}
    for name, run in zip(names, runs):
        cells = {}
        for stage in STAGES:
            m = run.manifest(stage)
            src = (m or {}).get(REUSED_KEY)
            cells[stage] = "not run" if m is None else (f"reused from {src.get('run_id')}" if isinstance(src, dict)
                                                         else "ran")
        stage_rows[name] = cells
    stages = pd.DataFrame.from_dict(stage_rows, orient="index", columns=list(STAGES))
    stages.index.name = "run"

    focus, differ = _focus_models(scores, names)
    focus_why = ("those whose answers differ between the runs" if differ
                 else "every model: none answered differently in any run")
    if models is not None:
        focus = [m for m in focus if m in models] or list(models)
        focus_why += "; only the models asked for"
    study, figure = _figure(results, names, focus, params_diff)
    return RunComparison(names=names, paths=run_paths, reference=ref, results=results, paired=paired,
                         params_diff=params_diff, stages=stages, focus=focus, figure=figure, study=study,
                         notes=list(dict.fromkeys(notes)), focus_why=focus_why)


def _focus_models(scores: dict[str, dict], names: list[str]) -> tuple[list[str], bool]:
    """``(models, True)``: the models whose per-problem scores differ between runs (or that some run lacks);
    ``(every model, False)`` when there is none."""
    every = model_order(sorted({m for s in scores.values() for m in s}))
    differ = []
    for m in every:
        seen = [json.dumps(scores[n].get(m), sort_keys=True) for n in names if m in scores[n]]
        if len(seen) < len(names) or len(set(seen)) > 1:
            differ.append(m)
    return (differ, True) if differ else (every, False)


def _numeric(text: str) -> Optional[float]:
    try:
        v = json.loads(text)
    except (TypeError, ValueError):
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _figure(results: pd.DataFrame, names: list[str], focus: list[str], params_diff: pd.DataFrame) -> tuple[str, go.Figure]:
    if results.empty:
        fig = go.Figure()
        fig.add_annotation(text="no evaluation results in these runs", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False)
        fig.update_layout(title="Comparison", **{**LAYOUT, "height": 220})
        return "runs", fig
    df = results[results["model"].isin(focus)]
    varying = [k for k in params_diff.index if not k.startswith("run.description")]
    xs = [_numeric(params_diff.loc[varying[0], n]) for n in names] if len(varying) == 1 else []
    if xs and all(x is not None for x in xs):
        key = varying[0]
        fig = go.Figure()
        for model in focus:
            for bench in dict.fromkeys(df["benchmark"]):
                sub = df[(df["model"] == model) & (df["benchmark"] == bench)]
                pts = sorted((xs[names.index(r.run)], r.score, r.ci_low, r.ci_high) for r in sub.itertuples()
                             if r.score is not None)
                if not pts:
                    continue
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                    name=f"{model_label(model)} · {bench_label(bench)}",
                    error_y=dict(type="data", symmetric=False, array=[p[3] - p[1] for p in pts],
                                 arrayminus=[p[1] - p[2] for p in pts])))
        positive = all(x > 0 for x in xs)
        wide = positive and max(xs) / min(xs) >= 10
        fig.update_layout(title=f"pass@1 against {key} (95% intervals)", xaxis_title=key,
                          xaxis_type="log" if wide else "linear", yaxis_title="pass@1 (%)", **LAYOUT)
        return f"param:{key}", fig
    fig = go.Figure()
    benches = list(dict.fromkeys(df["benchmark"]))
    for name in names:
        for model in focus:
            sub = {r.benchmark: r for r in df[(df["run"] == name) & (df["model"] == model)].itertuples()}
            if not sub:
                continue
            ys = [sub[b].score if b in sub else None for b in benches]
            plus = [(sub[b].ci_high - sub[b].score) if b in sub and sub[b].ci_high is not None else 0 for b in benches]
            minus = [(sub[b].score - sub[b].ci_low) if b in sub and sub[b].ci_low is not None else 0 for b in benches]
            label = name if len(focus) == 1 else f"{name} · {model_label(model)}"
            fig.add_trace(go.Bar(name=label, x=[bench_label(b) for b in benches], y=ys,
                                 error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus)))
    shown = ", ".join(model_label(m) for m in focus)
    fig.update_layout(title=f"pass@1 per run ({shown}; 95% intervals)", barmode="group", yaxis_title="pass@1 (%)",
                      **LAYOUT)
    return "runs", fig


# --- HTML ------------------------------------------------------------------------------------------

def _table(df: pd.DataFrame, empty: str, index: bool = True) -> str:
    if df is None or df.empty:
        return f'<p class="sub">{html.escape(empty)}</p>'
    return df.to_html(classes="tbl", border=0, na_rep="–", index=index, escape=True)


def compare_html(cmp: RunComparison, *, title: str = "Run comparison", standalone: bool = True) -> str:
    """The comparison as HTML: a whole page with plotly.js inlined (``standalone``), or a fragment for a
    notebook cell."""
    from cogpo_kit.viz.report import PAGE_CSS

    runs = "".join(f"<li><b>{html.escape(n)}</b>: <code>{html.escape(str(p))}</code>"
                   f"{' (reference)' if n == cmp.reference else ''}</li>" for n, p in zip(cmp.names, cmp.paths))
    notes = ("<div class='notes'><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in cmp.notes) + "</ul></div>"
             if cmp.notes else "")
    fig = pio.to_html(cmp.figure, include_plotlyjs=False, full_html=False, default_width="100%")
    shown = ", ".join(model_label(m) for m in cmp.focus)
    body = f"""
<h1>{html.escape(title)}</h1>
<p class="sub">{len(cmp.names)} runs · cogpo-kit {html.escape(__version__)} · {time.strftime('%Y-%m-%d %H:%M')}</p>
<ul>{runs}</ul>{notes}
<h2>Parameters that differ</h2>
{_table(cmp.params_diff, "the runs recorded the same parameters")}
<h2>Results (pass@1 %, 95% interval)</h2>
{_table(cmp.table(), "no evaluation results")}
<h2>Figure</h2>
<p class="sub">Models shown: {html.escape(shown)} ({html.escape(cmp.focus_why)}).</p>
{fig}
<h2>Paired comparisons with {html.escape(cmp.reference)}</h2>
<p class="sub">Each run minus the reference on the problems both answered, per model; 95% paired-bootstrap
intervals; p-values Holm-corrected over every comparison in this table.</p>
{_table(cmp.paired_table(), "no shared model and benchmark to compare", index=False)}
<h2>Stages</h2>
{_table(cmp.stages, "no stages")}
"""
    if not standalone:
        return f"<div>{body}</div>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body>{body}</body></html>")


def write_compare_report(cmp: RunComparison, path: str | os.PathLike, *, title: str = "Run comparison") -> Path:
    """Write :func:`compare_html` to ``path`` (one file that opens from disk, no network)."""
    from cogpo_kit.io import atomic_write_text

    return atomic_write_text(Path(path), compare_html(cmp, title=title))


def main(paths: Sequence[str], *, out: Optional[str] = None, reference: Optional[str] = None,
         models: Optional[Sequence[str]] = None, resamples: int = 10000) -> int:
    """``cogpo-kit compare``: print the tables and write the HTML report."""
    cmp = compare_runs(paths, reference=reference, models=models, resamples=resamples)
    for n in cmp.notes:
        print(f"note: {n}")
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
        print("parameters that differ:")
        print(cmp.params_diff.to_string() if not cmp.params_diff.empty else "  none")
        print("\nresults (pass@1 %, [95% CI]):")
        table = cmp.table()
        print(table.to_string() if not table.empty else "  none")
        print(f"\npaired with {cmp.reference}:")
        pt = cmp.paired_table()
        print(pt.to_string(index=False) if not pt.empty else "  none")
    if out is None:
        first = Path(paths[0])
        out = str(first / COMPARE_REPORT) if (first / SWEEP_MANIFEST).exists() else COMPARE_REPORT
    path = write_compare_report(cmp, out)
    print(f"\nreport: {path}")
    return 0
