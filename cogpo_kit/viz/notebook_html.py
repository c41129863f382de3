"""Export an executed stage notebook to one HTML file that opens from disk with no network and no kernel.

The executed copies under ``outputs/<run>/notebooks/`` are what people share. nbconvert's own HTML
export fetches require.js, MathJax and the widget manager from CDNs and prefers a widget's live view
(empty without that manager) to its static HTML. This export keeps nbconvert's JupyterLab template
but loads nothing from the network and shows each output's ``text/html`` first: a plotly figure's
static copy (plotly.js embedded once per notebook, see :func:`cogpo_kit.viz.display.setup_notebook`)
and a browser widget's current item (:mod:`cogpo_kit.viz.widgets`).

    python -m cogpo_kit.viz.notebook_html outputs/demo/notebooks/*.ipynb   # writes NN_stage.html beside each
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

TEMPLATE = "cogpo_offline.html.j2"
"""Name of the template below (nbconvert's ``lab`` template with every network fetch left out)."""
TEMPLATE_TEXT = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
PRIORITY = ("text/html", "application/vnd.jupyter.widget-view+json", "application/javascript", "text/markdown",
            "image/svg+xml", "image/png", "image/jpeg", "text/latex", "text/plain")
"""Which representation of an output is shown, best first: the static HTML before a widget's live view."""


def exporter():
    """The nbconvert ``HTMLExporter`` of this module (template ``lab``, nothing fetched, :data:`PRIORITY`)."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.HTMLExporter.template_name = "lab"
    config.HTMLExporter.template_file = TEMPLATE
    config.NbConvertBase.display_data_priority = list(PRIORITY)
    return HTMLExporter(config=config, extra_loaders=[DictLoader({TEMPLATE: TEMPLATE_TEXT})])


def export_html(notebook: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``notebook`` (an executed ``.ipynb``) as HTML to ``out`` (default: beside it, ``.html``)."""
    import nbformat

    notebook = Path(notebook)
    out = Path(out) if out is not None else notebook.with_suffix(".html")
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{notebook}: not a readable notebook: {exc}") from exc
    body, _ = exporter().from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", help="executed .ipynb files")
    ap.add_argument("--out-dir", help="write the HTML files here instead of beside each notebook")
    args = ap.parse_args(argv)
    for path in args.notebooks:
        out = Path(args.out_dir) / (Path(path).stem + ".html") if args.out_dir else None
        print(export_html(path, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
