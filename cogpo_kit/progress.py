"""Progress bars with counts, rates and ETA: a widget in JupyterLab, text in a terminal or a log.

Every stage reports its progress through :func:`progress`. Where it shows:

- in JupyterLab (an IPython kernel with ``ipywidgets``): ``tqdm.auto`` widgets;
- in a terminal or an in-process run: text bars on stderr;
- in a notebook executed by ``cogpo-kit run``: the runner starts the kernel with
  ``COGPO_PROGRESS=text`` (:data:`MODE_ENV`), so the bars are text on the kernel's stderr, which the
  runner forwards to the terminal as they are drawn (and the executed notebook keeps them as text
  instead of widgets that have no state once saved). Text bars in a kernel are redrawn at most every
  :data:`KERNEL_INTERVAL_S` seconds (``COGPO_PROGRESS_INTERVAL`` sets another), so a long stage does
  not flood the notebook or the terminal.

``COGPO_NO_PROGRESS=1`` hides every bar.
"""

from __future__ import annotations

import os
import sys

MODE_ENV = "COGPO_PROGRESS"
"""``text``: plain text bars even inside a Jupyter kernel; unset: widgets there when ``ipywidgets`` is present."""
INTERVAL_ENV = "COGPO_PROGRESS_INTERVAL"
"""Seconds between redraws of a text bar inside a kernel."""
KERNEL_INTERVAL_S = 2.0
"""Default seconds between redraws of a text bar inside a kernel (its output is forwarded line by line)."""
TEXT_COLUMNS = 100
"""Width of a text bar where no terminal tells it (a kernel's stderr)."""


def _in_kernel() -> bool:
    return "ipykernel" in sys.modules and type(sys.stderr).__module__.startswith("ipykernel")


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm bar that works in notebooks, terminals and papermill (``COGPO_NO_PROGRESS=1`` hides it)."""
    disable = os.environ.get("COGPO_NO_PROGRESS") == "1"
    file = kwargs.pop("file", sys.stderr)
    if os.environ.get(MODE_ENV) == "text":
        from tqdm.std import tqdm

        if _in_kernel():
            kwargs.setdefault("mininterval", float(os.environ.get(INTERVAL_ENV, KERNEL_INTERVAL_S)))
            kwargs.setdefault("ncols", TEXT_COLUMNS)
    else:
        from tqdm.auto import tqdm
    kwargs.setdefault("dynamic_ncols", "ncols" not in kwargs)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=file, **kwargs)
