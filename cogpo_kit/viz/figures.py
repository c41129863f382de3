"""The run's figures (plotly): levels, CRV funnel, pairs, training curves, results, beta sweep.

Every function returns a figure; when the run has no data for it, the figure carries a centred
message instead and ``is_empty(fig)`` is true (the report shows the message as a note).
:func:`save_figures` writes them as HTML (one shared ``plotly.min.js`` beside them, no CDN) and,
where the offline exporter (kaleido with a local Chromium) works, as PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cogpo_kit.pipeline.stages import stage_dir_name
from cogpo_kit.viz.artifacts import (GAPS, LEVELS, NO_LABEL, Run, bench_label, is_sweep_model, margin_gap, model_label,
                                     model_order, text_of)
from cogpo_kit.viz.tables import crv_counts

COLORS = {"easy": "#4c9be8", "medium": "#5bb974", "hard": "#e8804c",
          "small": "#9ecae1", "large": "#08519c"}
GAP_COLORS = {"small": "#9ecae1", "medium": "#4292c6", "large": "#08519c"}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50), height=380)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      meta={"empty": message}, **{**LAYOUT, "height": 220})
    return fig


def is_empty(fig: go.Figure) -> bool:
    meta = fig.layout.meta
    return isinstance(meta, dict) and "empty" in meta


def empty_message(fig: go.Figure) -> str | None:
    return fig.layout.meta["empty"] if is_empty(fig) else None


def level_distribution(run: Run) -> go.Figure:
    """CoTs per level (paper Table 1 style): the Critic's rating and what entered D_SFT*."""
    title = "CoT levels: the Critic's rating of the original CoTs"
    c = crv_counts(run)
    if not c["levels"]:
        return _empty(title, "no critiques in this run")
    rated = [c["levels"].get(lvl, 0) for lvl in LEVELS]
    kept = [c["kept"].get(lvl, 0) for lvl in LEVELS]
    fig = go.Figure([go.Bar(name="original CoTs (Critic)", x=list(LEVELS), y=rated, text=rated, textposition="auto",
                            marker_color=[COLORS[lvl] for lvl in LEVELS]),
                     go.Bar(name="in D_SFT* (by original level)", x=list(LEVELS), y=kept, text=kept,
                            textposition="auto", marker_color="#999")])
    fig.update_layout(title=title, barmode="group", yaxis_title="CoTs", **LAYOUT)
    return fig


def crv_funnel(run: Run) -> go.Figure:
    """Where the CoTs went: in -> the Critic's level -> D_SFT* or discarded (a Sankey diagram)."""
    title = "CRV funnel: from the original CoTs to D_SFT*"
    c = crv_counts(run)
    if not c["in"]:
        return _empty(title, "no critiques in this run")
    levels = [lvl for lvl in (*LEVELS, NO_LABEL) if c["levels"].get(lvl)]
    rethink = run.manifest("rethink") is not None
    labels = [f"CoTs in ({c['in']})"] + [f"{lvl} ({c['levels'][lvl]})" for lvl in levels]
    links: list[tuple[int, int, int, str]] = [(0, i, c["levels"][lvl], lvl) for i, lvl in enumerate(levels, start=1)]
    if rethink:
        labels += [f"D_SFT* ({c['sft']})", f"not kept ({sum(c['levels'].values()) - c['sft']})"]
        kept_node, lost_node = len(labels) - 2, len(labels) - 1
        for i, lvl in enumerate(levels, start=1):
            kept = c["kept"].get(lvl, 0)
            links += [(i, node, n, lvl) for node, n in ((kept_node, kept), (lost_node, c["levels"][lvl] - kept)) if n > 0]
    fig = go.Figure(go.Sankey(node=dict(label=labels, pad=18, thickness=16, color="#888"),
                              link=dict(source=[x[0] for x in links], target=[x[1] for x in links],
                                        value=[x[2] for x in links],
                                        color=[_alpha(COLORS.get(x[3], "#bbbbbb")) for x in links])))
    fig.update_layout(title=title + ("" if rethink else " (rethink not run yet)"), **LAYOUT)
    return fig


def _alpha(hex_color: str, a: float = 0.45) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{a})"


def pairs_per_gap(run: Run) -> go.Figure:
    title = "Preference pairs per gap (chosen > rejected kinds)"
    pairs = run.pairs()
    if not pairs:
        return _empty(title, "no preference pairs in this run")
    gaps = list(GAPS) + sorted({str(p["gap"]) for p in pairs} - set(GAPS))
    kinds = sorted({f"{p.get('chosen_kind')} > {p.get('rejected_kind')}" for p in pairs})
    fig = go.Figure([go.Bar(name=k, x=gaps, y=[sum(1 for p in pairs if p["gap"] == g and
                                                   f"{p.get('chosen_kind')} > {p.get('rejected_kind')}" == k)
                                               for g in gaps]) for k in kinds])
    fig.update_layout(title=title, barmode="stack", yaxis_title="pairs", xaxis_title="gap", **LAYOUT)
    return fig


def pair_lengths(run: Run) -> go.Figure:
    title = "Pair response lengths (words) per gap"
    pairs = run.pairs()
    if not pairs:
        return _empty(title, "no preference pairs in this run")
    fig = go.Figure()
    for side, color in (("chosen", "#2b8a3e"), ("rejected", "#c92a2a")):
        fig.add_trace(go.Box(name=side, x=[str(p["gap"]) for p in pairs], marker_color=color, boxpoints="all",
                             y=[len(text_of(p[side]).split()) for p in pairs]))
    fig.update_layout(title=title, boxmode="group", yaxis_title="words", xaxis_title="gap", **LAYOUT)
    return fig


def _steps(log: list[dict], key: str) -> tuple[list, list]:
    rows = [r for r in log if r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


def training_loss(run: Run) -> go.Figure:
    title = "Training loss"
    runs = {stage_dir_name(s): run.metric_runs(s) for s in ("sft", "preference")}
    if not any(runs.values()):
        return _empty(title, "no training metrics in this run (stages 04/05 not run)")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("SFT", "preference"))
    for col, (stage, logs) in enumerate(runs.items(), start=1):
        for name in model_order(logs):
            x, y = _steps(logs[name], "loss")
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=model_label(name),
                                     legendgroup=stage), row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", col=1)
    fig.update_layout(title=title, **LAYOUT)
    return fig


def reward_margins(run: Run) -> go.Figure:
    """Reward margins during preference training: CogPO per gap, every method overall."""
    title = "Reward margins during preference training"
    logs = run.metric_runs("preference")
    traces = []
    dashes = {"all": "solid", "small": "dot", "medium": "dash", "large": "longdash"}
    for name in model_order(logs):
        keys = sorted({k for r in logs[name] for k in r if margin_gap(k)},
                      key=lambda k: (list(dashes).index(margin_gap(k)) if margin_gap(k) in dashes else 9, k))
        for key in keys:
            x, y = _steps(logs[name], key)
            gap = margin_gap(key)
            traces.append(go.Scatter(x=x, y=y, mode="lines", line=dict(dash=dashes.get(gap, "dashdot")),
                                     name=f"{model_label(name)}: {'all pairs' if gap == 'all' else gap + ' gap'}"))
    if not traces:
        return _empty(title, "no reward margins logged (stage 05 not run)")
    fig = go.Figure(traces)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="reward margin", **LAYOUT)
    return fig


def results(run: Run) -> go.Figure:
    """Paper Table 2 as a bar chart: pass@1 (%) per benchmark and model with 95% CI error bars."""
    title = "Results per benchmark and method (pass@1, %, 95% CI)"
    rows = [r for r in run.results() if r["score"] is not None and not is_sweep_model(r["model"])]
    if not rows:
        return _empty(title, "no evaluation results in this run (stage 06 not run)")
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    fig = go.Figure()
    for model in model_order(r["model"] for r in rows):
        mine = {r["benchmark"]: r for r in rows if r["model"] == model}
        ys = [mine[b]["score"] if b in mine else None for b in benches]
        plus = [(mine[b]["ci_high"] - mine[b]["score"]) if b in mine and mine[b].get("ci_high") is not None else 0
                for b in benches]
        minus = [(mine[b]["score"] - mine[b]["ci_low"]) if b in mine and mine[b].get("ci_low") is not None else 0
                 for b in benches]
        fig.add_trace(go.Bar(name=model_label(model), x=[bench_label(b) for b in benches], y=ys,
                             error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus)))
    fig.update_layout(title=title, barmode="group", yaxis_title="pass@1 (%)", **LAYOUT)
    return fig


def beta_sweep(run: Run) -> go.Figure:
    """Paper Figure 6: score per benchmark against the scale of the CogPO betas."""
    title = "Beta sweep: CogPO betas scaled (paper Figure 6)"
    rows = run.beta_sweep()
    if not rows:
        return _empty(title, "no beta sweep in this run (preference.beta_sweep is empty)")
    base = [dict(r, scale=1.0) for r in run.results() if r["model"] == "cogpo"]
    rows = rows + [r for r in base if not any(x["scale"] == 1.0 and x["benchmark"] == r["benchmark"] for x in rows)]
    fig = go.Figure()
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        pts = sorted((r["scale"], r["score"]) for r in rows if r["benchmark"] == bench)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=bench_label(bench)))
    fig.update_layout(title=title, xaxis_title="beta scale (x the params' betas)", xaxis_type="log",
                      yaxis_title="pass@1 (%)", **LAYOUT)
    return fig


FIGURES: dict[str, Callable[[Run], go.Figure]] = {
    "level_distribution": level_distribution,
    "crv_funnel": crv_funnel,
    "pairs_per_gap": pairs_per_gap,
    "pair_lengths": pair_lengths,
    "training_loss": training_loss,
    "reward_margins": reward_margins,
    "results": results,
    "beta_sweep": beta_sweep,
}


def all_figures(run: Run) -> dict[str, go.Figure]:
    return {name: fn(run) for name, fn in FIGURES.items()}


def png_exporter() -> str | None:
    """``None`` when PNG export works offline here, else the reason it does not."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "PNG figures skipped: the 'kaleido' package is not installed"
    import shutil

    if not (os.environ.get("BROWSER_PATH") or any(shutil.which(b) for b in
                                                   ("chromium", "chromium-browser", "google-chrome", "chrome"))):
        return "PNG figures skipped: kaleido needs a local Chromium/Chrome (Debian: apt-get install chromium)"
    return None


def save_figures(figs: dict[str, go.Figure], folder: str | os.PathLike, *, png: bool = True) -> dict:
    """Write ``<name>.html`` (plus ``plotly.min.js`` once) and, if possible, ``<name>.png`` for each
    non-empty figure. Returns ``{"html": [...], "png": [...], "notes": [...]}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"html": [], "png": [], "notes": []}
    shown = {k: f for k, f in figs.items() if not is_empty(f)}
    for name, fig in shown.items():
        path = folder / f"{name}.html"
        fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
        out["html"].append(str(path))
    if png and shown:
        reason = png_exporter()
        if reason is None:
            import plotly.io as pio

            paths = [str(folder / f"{n}.png") for n in shown]
            try:
                pio.write_images(list(shown.values()), paths, width=1000, height=None)
                out["png"] = paths
            except Exception as exc:  # the exporter's own failure modes are many: report, don't crash
                reason = f"PNG figures skipped: the exporter failed ({type(exc).__name__}: {exc})"
        if reason:
            out["notes"].append(reason)
    return out
