"""What the notebooks show about a stage: its status, counts, agent calls and notes, in plain words.

Importing this module inside a kernel makes plotly render figures as the plotly MIME type
(JupyterLab's plotly extension draws them), so executed notebooks do not carry a copy of
plotly.js per figure; ``PLOTLY_RENDERER`` in the environment wins over this default.
"""

from __future__ import annotations

import html
import os
from typing import Any

from cogpo_kit.pipeline.stages import artifact_path, manifest_path, stage_dir_name, stage_path
from cogpo_kit.viz import tables
from cogpo_kit.viz.artifacts import Run
from cogpo_kit.viz.notes import all_notes

if "PLOTLY_RENDERER" not in os.environ:
    try:
        from IPython import get_ipython

        if get_ipython() is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell":
            import plotly.io as pio

            pio.renderers.default = "plotly_mimetype"
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        pass


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
