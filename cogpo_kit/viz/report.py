"""The report stage: one self-contained HTML report of a run (``report.html`` in its folder).

The report holds the run's settings, the stage overview, the CRV funnel and level tables, pairs,
training curves, the results table (paper Table 2 style) and the beta sweep when there is one,
with every stage's notes in plain words. plotly.js is inlined once, so the file opens in a
browser from disk with no server and no network. The figures are also written to the stage's
``figures/`` as HTML (and PNG where the offline exporter works).
"""

from __future__ import annotations

import html
import time
from typing import Any

import pandas as pd
import plotly.io as pio
import yaml
from plotly.offline import get_plotlyjs

from cogpo_kit import __version__
from cogpo_kit.params.loader import params_dict
from cogpo_kit.pipeline.freshness import stage_params
from cogpo_kit.pipeline.stage import STAGES, git_commit, open_stage, run_dir, scrub_secrets
from cogpo_kit.pipeline.stages import manifest_path, stage_spec
from cogpo_kit.viz import figures, tables
from cogpo_kit.viz.artifacts import Run
from cogpo_kit.viz.diff import CSS
from cogpo_kit.viz.notes import all_notes
from cogpo_kit.viz.widgets import cot_html, cot_items, pair_html

# Settings shown at the top of the report (dotted paths into the parameters).
KEY_SETTINGS = (
    "run.run_id", "run.seed", "data.source", "data.limit", "student.model",
    "crv.critic.engine.engine", "crv.critic.engine.model", "crv.rethinker.engine.model", "crv.verifier.engine.model",
    "crv.verifier_mode", "crv.votes", "crv.max_attempts", "crv.ablation", "crv.check_final_answer",
    "crv.incorrect_check",
    "pairs.beta_small", "pairs.beta_medium", "pairs.beta_large", "pairs.gaps",
    "sft.variants", "sft.optim.learning_rate", "sft.optim.max_steps", "sft.lora.enabled",
    "preference.methods", "preference.init_from", "preference.optim.learning_rate", "preference.beta_sweep",
    "eval.benchmarks", "eval.limit", "eval.protocol", "eval.n_samples", "eval.truncated_as_wrong",
)

PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:18px 28px;color:#222}
h1{margin-bottom:2px} h2{border-bottom:2px solid #e5e5e5;padding-bottom:4px;margin-top:34px}
table.tbl{border-collapse:collapse;margin:8px 0 14px 0;font-size:13px}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.tbl th{background:#f5f5f5} table.tbl td:first-child,table.tbl th:first-child{text-align:left}
.notes{background:#fff8e1;border-left:4px solid #f0b429;padding:6px 14px;margin:8px 0}
.notes li{margin:2px 0}
.sub{color:#666;font-size:13px}
details pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:12px}
"""


def _get(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _table(df: pd.DataFrame, *, empty: str = "nothing to show", index: bool = True) -> str:
    if df is None or df.empty:
        return f'<p class="sub">{html.escape(empty)}</p>'
    return df.to_html(classes="tbl", border=0, na_rep="–", index=index, escape=True)


def _results_table(run: Run) -> str:
    """Table 2 style: best score per benchmark in bold, second best underlined."""
    df = tables.results(run)
    if df.empty:
        return '<p class="sub">no evaluation results</p>'
    ci = tables.results(run, with_ci=True)
    extra = [c for c in ("protocol", "truncated correct") if c in ci.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [*df.columns, *extra])
    body = []
    for bench, row in df.iterrows():
        ranked = sorted({v for v in row.values if pd.notna(v)}, reverse=True)
        cells = []
        for col, v in row.items():
            text = html.escape(str(ci.loc[bench, col])) if pd.notna(v) else "–"
            if ranked and pd.notna(v) and v == ranked[0]:
                text = f"<b>{text}</b>"
            elif len(ranked) > 1 and pd.notna(v) and v == ranked[1]:
                text = f"<u>{text}</u>"
            cells.append(f"<td>{text}</td>")
        cells += [f'<td class="sub">{html.escape(str(ci.loc[bench, c]))}</td>' for c in extra]
        body.append(f"<tr><td>{html.escape(str(bench))}</td>{''.join(cells)}</tr>")
    return (f'<table class="tbl"><thead><tr><th>benchmark</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            '<p class="sub">pass@1 in %, [95% bootstrap interval]; best per benchmark in bold, second underlined; '
            '<i>protocol</i>: how the answers were decoded; <i>truncated correct</i>: correct answers taken from '
            'outputs cut at max_tokens (<code>eval.truncated_as_wrong</code> counts them wrong).</p>')


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    return '<div class="notes"><ul>' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></div>"


def _figure(fig, name: str) -> str:
    msg = figures.empty_message(fig)
    if msg is not None:
        return f'<p class="sub">{html.escape(fig.layout.title.text or name)}: {html.escape(msg)}.</p>'
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                       config={"displaylogo": False, "responsive": True})


def _examples(run: Run) -> str:
    """One CoT comparison (the first example with a kept rewrite) and one pair per gap, as static HTML."""
    parts = []
    items = cot_items(run)
    pick = next((it for it in items if it["outcome"] == "kept" and it["attempts"] and it["level"] != "medium"),
                items[0] if items else None)
    if pick:
        parts.append("<h3>A CoT and its versions</h3>" + cot_html(pick))
    seen = set()
    for p in run.pairs():
        if p["gap"] not in seen:
            seen.add(p["gap"])
            parts.append(f"<h3>A {html.escape(str(p['gap']))}-gap pair</h3>" + pair_html(p))
    return f'<div class="ck-view">{"".join(parts)}</div>' if parts else '<p class="sub">no examples yet</p>'


def render_report(run: Run, params_tree: dict, *, title: str, figs: dict, extra_notes: list[str] = (),
                  writing: str | None = None) -> str:
    """The report's HTML (one document, plotly.js inlined once); ``writing``: the stage writing it."""
    notes = all_notes(run)
    settings = pd.DataFrame([(p, _get(params_tree, p)) for p in KEY_SETTINGS if _get(params_tree, p) is not None],
                            columns=["setting", "value"])
    settings["value"] = settings["value"].map(lambda v: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
    params_yaml = yaml.safe_dump(scrub_secrets(params_tree), sort_keys=False, allow_unicode=True)
    desc = _get(params_tree, "run.description") or ""
    f = {k: _figure(v, k) for k, v in figs.items()}
    n = {spec.name: notes[spec.folder] for spec in map(stage_spec, stage_spec("report").upstream)}
    all_stage_notes = [f"{s}: {n}" for s in STAGES for n in notes[s]] + list(extra_notes)
    sections = [
        ("Summary", _table(tables.stage_overview(run, writing), index=False) + _notes(all_stage_notes)),
        ("Settings", _table(settings, index=False)
         + f"<details><summary>All parameters</summary><pre>{html.escape(params_yaml)}</pre></details>"),
        ("1 · Critique: levels of the original CoTs",
         _notes(n["critique"]) + _table(tables.level_distribution(run), empty="no critiques")
         + _table(tables.critic_votes(run)) + f["level_distribution"]),
        ("2 · Rethink and verify: the CRV funnel",
         _notes(n["rethink"]) + _table(tables.funnel(run), index=False, empty="no funnel recorded")
         + f["crv_funnel"] + _table(tables.rewrite_outcomes(run), index=False, empty="no rewrites")
         + _table(tables.incorrect_summary(run))),
        ("3 · Preference pairs", _notes(n["pairs"]) + _table(tables.pairs_by_gap(run), index=False)
         + f["pairs_per_gap"] + f["pair_lengths"]),
        ("4–5 · Training", _notes(n["sft"] + n["preference"])
         + _table(tables.training_summary(run), index=False, empty="no training metrics")
         + f["training_loss"] + f["reward_margins"]),
        ("6 · Evaluation", _notes(n["evaluate"]) + _results_table(run) + f["results"] + f["beta_sweep"]
         + _table(tables.sample_counts(run), index=False, empty="no samples")),
        ("Examples", _examples(run)),
        ("LLM calls per agent", _table(tables.agents(run), index=False, empty="no agent calls recorded")),
    ]
    body = "".join(f'<h2 id="s{i}">{html.escape(t)}</h2>{content}' for i, (t, content) in enumerate(sections))
    toc = " · ".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(sections))
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{PAGE_CSS}{CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<h1>{html.escape(title)}</h1>"
            f'<p class="sub">run <b>{html.escape(str(_get(params_tree, "run.run_id")))}</b> · {html.escape(desc)}'
            f" · folder {html.escape(str(run.path))} · written {stamp} · cogpo-kit {__version__}"
            f" ({html.escape(str(git_commit()))})</p><p class=\"sub\">{toc}</p>{body}</body></html>")


def run_report(params) -> dict:
    """Write the report stage's ``report.html`` and ``figures/`` for a run; return the manifest."""
    run_path = run_dir(params)
    tree = params_dict(params)
    manifests = [manifest_path(run_path, s) for s in stage_spec("report").upstream]
    stage = open_stage(run_path, "report", stage_params(tree, "report"), inputs=[m for m in manifests if m.exists()])
    run = Run(run_path)
    figs = figures.all_figures(run)
    saved = figures.save_figures(figs, stage.artifact("figures"), png=params.report.png)
    for note in saved["notes"]:
        stage.note(note)
    for name, fig in figs.items():
        if figures.is_empty(fig):
            stage.logger.info("figure %s is empty: %s", name, figures.empty_message(fig))
    report = stage.write("report", render_report(run, tree, title=params.report.title, figs=figs,
                                                 extra_notes=[f"{stage.name}: {n}" for n in saved["notes"]],
                                                 writing=stage.name))
    stage.counts.update({"figures": len(saved["html"]), "empty_figures": sum(map(figures.is_empty, figs.values())),
                         "png": len(saved["png"]), "report_bytes": report.stat().st_size})
    stage.logger.info("report written to %s", report)
    return stage.finish(report=str(report), figures=saved["html"] + saved["png"])
