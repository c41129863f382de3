"""What the notebooks show about a stage: its status, counts, agent calls and notes, in plain words;
and how their figures render (:func:`setup_notebook`).

An executed notebook is read in two places: live in JupyterLab, and later without a kernel (an HTML
export, a code host). :func:`setup_notebook` makes each plotly figure carry both the plotly MIME type
(JupyterLab's plotly extension draws it) and a static ``text/html`` copy that needs no network:
plotly.js embedded once per notebook (the first figure's cell), then a ``<div>`` per figure.
The widgets of :mod:`cogpo_kit.viz.widgets` carry their own static view.

    from cogpo_kit.viz import display
    display.setup_notebook()      # in a notebook's setup cell
"""

from __future__ import annotations

import html
import os
from typing import Any

from cogpo_kit.pipeline.stages import artifact_path, manifest_path, stage_dir_name, stage_path
from cogpo_kit.viz import tables
from cogpo_kit.viz.artifacts import Run
from cogpo_kit.viz.notes import all_notes

STATIC_RENDERER = "cogpo_static_html"
"""The name :func:`setup_notebook` registers its static-HTML plotly renderer under."""
NOTEBOOK_RENDERERS = f"plotly_mimetype+{STATIC_RENDERER}"
"""The plotly renderers of a notebook: the live MIME type plus the static copy."""
FIGURE_HEIGHT = 480
"""Height in pixels of a figure's static copy when the figure sets none."""


def static_renderer():
    """A plotly renderer whose bundle is ``text/html`` with no network access: on activation (the first
    figure shown) it displays plotly.js once; each figure is then a ``<div>`` and a script that draws
    into it with that copy (no MathJax, no CDN)."""
    from plotly.io import to_html
    from plotly.io._base_renderers import MimetypeRenderer
    from plotly.offline import get_plotlyjs

    class StaticHtmlRenderer(MimetypeRenderer):
        def activate(self) -> None:
            from IPython.display import display_html

            display_html("<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
                         f"<script type=\"text/javascript\">{get_plotlyjs()}</script>", raw=True)

        def to_mimebundle(self, fig_dict):
            return {"text/html": to_html(fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
                                         default_width="100%", default_height=FIGURE_HEIGHT, validate=False)}

    return StaticHtmlRenderer()


def setup_notebook() -> str:
    """Make plotly figures in this kernel render as :data:`NOTEBOOK_RENDERERS` and return the renderer
    string in use. ``PLOTLY_RENDERER`` in the environment wins; calling it again changes nothing (plotly.js
    is embedded once)."""
    import plotly.io as pio

    if STATIC_RENDERER not in pio.renderers:
        pio.renderers[STATIC_RENDERER] = static_renderer()
    wanted = os.environ.get("PLOTLY_RENDERER") or NOTEBOOK_RENDERERS
    if pio.renderers.default != wanted:
        pio.renderers.default = wanted
    return wanted


def notes_markdown(run: Run, stage: str) -> str:
    """A stage's notes as a markdown list ("No notes." when there are none)."""
    notes = all_notes(run)[stage_dir_name(stage)]
    if not notes:
        return "**Notes:** none."
    return "**Notes:**\n\n" + "\n".join(f"- {html.escape(n, quote=False)}" for n in notes)


def stage_markdown(run: Run, stage: str) -> str:
    name = stage_dir_name(stage)
    m = run.manifest(name)
    if m is None:
        return (f"### {name}: not run\n\nNo `{manifest_path(run.path, name).name}` in "
                f"`{stage_path(run.path, name)}`.\n\n" + notes_markdown(run, name))
    return (f"### {name}: done in {m.get('wall_time_s', '?')} s\n\n"
            f"Folder: `{stage_path(run.path, name)}` · started {m.get('started', '?')}\n\n"
            + notes_markdown(run, name))


def show_stage(run: Any, stage: str) -> None:
    """Display a stage's status, notes, counts and agent calls (in a notebook)."""
    from IPython.display import Markdown, display

    from cogpo_kit.viz.widgets import as_run

    run = as_run(run)
    display(Markdown(stage_markdown(run, stage)))
    counts = tables.stage_counts(run, stage)
    if not counts.empty:
        display(counts.set_index("count"))
    agents = tables.agents(run, stage_dir_name(stage))
    if not agents.empty:
        display(agents)


def show_all_notes(run: Any) -> None:
    """Display every stage's notes."""
    from IPython.display import Markdown, display

    from cogpo_kit.viz.widgets import as_run

    run = as_run(run)
    notes = all_notes(run)
    lines = [f"- **{stage}**: {html.escape(n, quote=False)}" for stage, ns in notes.items() for n in ns]
    display(Markdown("### Notes\n\n" + ("\n".join(lines) if lines else "none")))


def show_report(run: Any) -> None:
    """Display where the report is (open it in a browser: it needs no server)."""
    from IPython.display import Markdown, display

    from cogpo_kit.viz.widgets import as_run

    run = as_run(run)
    report, folder = artifact_path(run.path, "report"), artifact_path(run.path, "figures")
    if not report.exists():
        display(Markdown(f"No report yet: `{report}` does not exist."))
        return
    figs = sorted(p.name for p in folder.glob("*") if p.suffix in (".html", ".png"))
    display(Markdown(f"**Report:** `{report.resolve()}` ({report.stat().st_size / 1e6:.1f} MB, self-contained)\n\n"
                     f"**Figures** in `{folder}`: {', '.join(figs) or 'none'}"))
