"""The pairs file, checked row by row before any training starts.

Each line of the ``pairs`` artifact (``pairs.jsonl`` of the pairs stage) holds one pair; its fields
are the ``pairs`` schema of :mod:`cogpo_kit.pipeline.schemas`: ``id``, ``prompt`` (chat messages
ending with a user turn), ``chosen`` and ``rejected`` (non-empty assistant texts), ``gap`` (small /
medium / large) and ``beta`` (> 0), plus provenance fields (``source_id``, ``chosen_kind``,
``rejected_kind``, token lengths, ...).
"""

from __future__ import annotations

from pathlib import Path

from cogpo_kit.io import DataError, iter_jsonl
from cogpo_kit.pipeline.schemas import PAIRS

REQUIRED = PAIRS.required


def check_pair(row: object, *, path: str | Path, line: int) -> dict:
    """Raise :class:`DataError` naming the row and field if ``row`` is not a usable pair; return it."""
    return PAIRS.check(row, path=path, line=line)


def load_pairs(path: str | Path) -> list[dict]:
    """Every pair of a pairs file, each checked; duplicate ids are errors."""
    path = Path(path)
    if not path.exists():
        raise DataError("pairs file not found (run the pairs stage first)", path=path)
    rows, seen = [], set()
    for line, obj in iter_jsonl(path):
        row = check_pair(obj, path=path, line=line)
        if row["id"] in seen:
            raise DataError(f"duplicate id {row['id']!r}", path=path, line=line, field="id")
        seen.add(row["id"])
        rows.append(row)
    return rows
