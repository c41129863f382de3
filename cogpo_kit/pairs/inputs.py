"""Reading the CRV artifacts the pairs and SFT stages start from, strictly.

Extra fields are accepted; a missing or empty required field is a :class:`~cogpo_kit.io.DataError`
naming the file, the line and the field. Files:

- ``01_critique/input.jsonl``: the CoT records (id, problem, answer, reasoning, ...);
- ``01_critique/critiques.jsonl``: the Critic's level per id (easy / medium / hard);
- ``02_rethink/sft.jsonl``: D_SFT* (id, problem, answer, reasoning, response, origin, ...);
- ``02_rethink/rewrites.jsonl``: every rewrite attempt (id, attempt, text, outcome, ...);
- ``02_rethink/incorrect.jsonl``: the incorrect CoT per id (id, text, reached_answer, ok, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cogpo_kit.io import DataError, iter_jsonl

LEVELS = ("easy", "medium", "hard")
SFT_ORIGINS = ("medium", "easy*", "hard*")


@dataclass
class CRVArtifacts:
    """The CRV outputs one run produced, indexed by example id."""

    records: dict[str, dict] = field(default_factory=dict)
    """id -> CoT record (problem, answer, reasoning)."""
    levels: dict[str, str] = field(default_factory=dict)
    """id -> the Critic's level of the original CoT."""
    sft: dict[str, dict] = field(default_factory=dict)
    """id -> D_SFT* row (origin medium / easy* / hard*)."""
    kept_rewrites: dict[str, dict] = field(default_factory=dict)
    """id -> the kept rewrite (the last kept attempt)."""
    incorrect: dict[str, dict] = field(default_factory=dict)
    """id -> incorrect CoT row."""
    paths: dict[str, Path] = field(default_factory=dict)
    """name -> file read."""


def _require(obj: Any, path: Path, line: int, fields: Iterable[str], *, allow_empty: Iterable[str] = ()) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    for name in fields:
        if name not in obj:
            raise DataError("required field is missing", path=path, line=line, field=name)
        value = obj[name]
        if name in allow_empty:
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError("required field is empty", path=path, line=line, field=name)
    return obj


def _rows(path: Path, fields: Iterable[str], *, allow_empty: Iterable[str] = ()) -> Iterable[tuple[int, dict]]:
    if not path.exists():
        raise DataError("file not found (did the previous stage run?)", path=path)
    fields = tuple(fields)
    for line, obj in iter_jsonl(path):
        yield line, _require(obj, path, line, fields, allow_empty=allow_empty)


def _unique(index: dict, key: str, path: Path, line: int) -> None:
    if key in index:
        raise DataError(f"duplicate id '{key}'", path=path, line=line, field="id")


def read_crv(run_path: str | Path) -> CRVArtifacts:
    """Read and check the five CRV files of a run (``<run>/01_critique``, ``<run>/02_rethink``)."""
    run_path = Path(run_path)
    crit, rethink = run_path / "01_critique", run_path / "02_rethink"
    art = CRVArtifacts(paths={
        "input": crit / "input.jsonl", "critiques": crit / "critiques.jsonl", "sft": rethink / "sft.jsonl",
        "rewrites": rethink / "rewrites.jsonl", "incorrect": rethink / "incorrect.jsonl",
    })
    p = art.paths["input"]
    for line, row in _rows(p, ("id", "problem", "answer", "reasoning")):
        key = str(row["id"])
        _unique(art.records, key, p, line)
        art.records[key] = row
    p = art.paths["critiques"]
    for line, row in _rows(p, ("id", "level")):
        key = str(row["id"])
        _unique(art.levels, key, p, line)
        if row["level"] not in LEVELS:
            raise DataError(f"level must be one of {list(LEVELS)}, got {row['level']!r}", path=p, line=line,
                            field="level")
        art.levels[key] = row["level"]
    p = art.paths["sft"]
    for line, row in _rows(p, ("id", "problem", "answer", "origin")):
        key = str(row["id"])
        _unique(art.sft, key, p, line)
        if row["origin"] not in SFT_ORIGINS:
            raise DataError(f"origin must be one of {list(SFT_ORIGINS)}, got {row['origin']!r}", path=p, line=line,
                            field="origin")
        text = row.get("response") or row.get("reasoning")
        if not isinstance(text, str) or not text.strip():
            raise DataError("row has neither a response nor a reasoning", path=p, line=line, field="response")
        art.sft[key] = row
    p = art.paths["rewrites"]
    for line, row in _rows(p, ("id", "attempt", "text", "outcome"), allow_empty=("text",)):
        if row["outcome"] != "kept":
            continue
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError("a kept rewrite has no text", path=p, line=line, field="text")
        key = str(row["id"])
        prev = art.kept_rewrites.get(key)
        if prev is None or int(row["attempt"]) >= int(prev["attempt"]):
            art.kept_rewrites[key] = row
    p = art.paths["incorrect"]
    for line, row in _rows(p, ("id", "text", "reached_answer", "ok"), allow_empty=("text", "reached_answer")):
        key = str(row["id"])
        _unique(art.incorrect, key, p, line)
        if not isinstance(row["ok"], bool):
            raise DataError(f"expected true/false, got {row['ok']!r}", path=p, line=line, field="ok")
        art.incorrect[key] = row
    for name, index in (("critiques", art.levels), ("sft", art.sft), ("incorrect", art.incorrect)):
        unknown = sorted(set(index) - set(art.records))
        if unknown:
            raise DataError(f"{len(unknown)} id(s) not in {art.paths['input'].name}, e.g. '{unknown[0]}'",
                            path=art.paths[name], field="id")
    return art
