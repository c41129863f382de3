"""The pairs file format, checked row by row before any training starts.

Each line of ``03_pairs/pairs.jsonl`` holds one pair: ``id``, ``prompt`` (chat messages),
``chosen`` and ``rejected`` (assistant texts), ``gap`` (small / medium / large) and ``beta`` (> 0),
plus provenance fields (``source_id``, ``chosen_kind``, ``rejected_kind``, token lengths, ...).
"""

from __future__ import annotations

import math
from pathlib import Path

from cogpo_kit.io import DataError, iter_jsonl

GAPS = ("small", "medium", "large")
REQUIRED = ("id", "prompt", "chosen", "rejected", "gap", "beta")


def check_pair(row: object, *, path: str | Path, line: int) -> dict:
    """Raise :class:`DataError` naming the row and field if ``row`` is not a usable pair; return it."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=line)
    for name in REQUIRED:
        if name not in row or row[name] is None:
            raise DataError("required field is missing", path=path, line=line, field=name)
    prompt = row["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise DataError("prompt must be a non-empty list of chat messages", path=path, line=line, field="prompt")
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"message {i} needs string 'role' and 'content'", path=path, line=line, field="prompt")
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise DataError("the last prompt message must be a non-empty user turn", path=path, line=line, field="prompt")
    for side in ("chosen", "rejected"):
        if not isinstance(row[side], str) or not row[side].strip():
            raise DataError("response is empty", path=path, line=line, field=side)
    if row["gap"] not in GAPS:
        raise DataError(f"gap must be one of {list(GAPS)}, got {row['gap']!r}", path=path, line=line, field="gap")
    beta = row["beta"]
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise DataError(f"beta must be a positive number, got {beta!r}", path=path, line=line, field="beta")
    return row


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
