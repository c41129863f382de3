"""Progress bars with counts and rates (tqdm: a widget in Jupyter, text in a terminal or log)."""

from __future__ import annotations

import os
import sys


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm bar that works in notebooks, terminals and papermill (``COGPO_NO_PROGRESS=1`` hides it)."""
    from tqdm.auto import tqdm

    disable = os.environ.get("COGPO_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                file=kwargs.pop("file", sys.stderr), **kwargs)
