"""Reading the CRV artifacts the pairs and SFT stages start from, strictly.

Extra fields are accepted; a missing or empty required field is a :class:`~cogpo_kit.io.DataError`
naming the file, the line and the field. Files:

- ``01_critique/input.jsonl``: the CoT records (id, problem, answer, reasoning, ...);
- ``01_critique/critiques.jsonl``: the Critic's level per id (easy / medium / hard);
- ``02_rethink/sft.jsonl``: D_SFT* (id, problem, answer, reasoning, response, origin, ...);
- ``02_rethink/rewrites.jsonl``: every attempt (id, kind, attempt, text or rewrite, outcome, ...);
- ``02_rethink/incorrect.jsonl``: the incorrect CoT per id (id, text or reasoning, reached_answer, ok?, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cogpo_kit.io import DataError, iter_jsonl

LEVELS = ("easy", "medium", "hard")
SFT_ORIGINS = ("medium", "easy*", "hard*")
NOT_REWRITE_KINDS = ("medium", "corrupt")


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


def read_records(path: Path) -> dict[str, dict]:
    """``input.jsonl``: id -> CoT record."""
    out: dict[str, dict] = {}
    for line, row in _rows(path, ("id", "problem", "answer", "reasoning")):
        key = str(row["id"])
        _unique(out, key, path, line)
        out[key] = row
    return out


def read_levels(path: Path) -> dict[str, str]:
    """``critiques.jsonl``: id -> level."""
    out: dict[str, str] = {}
    for line, row in _rows(path, ("id", "level"), allow_empty=("level",)):
        key = str(row["id"])
        _unique(out, key, path, line)
        if row["level"] is None:  # the Critic gave no label: the example is skipped (and counted)
            continue
        if row["level"] not in LEVELS:
            raise DataError(f"level must be one of {list(LEVELS)} or null, got {row['level']!r}", path=path,
                            line=line, field="level")
        out[key] = row["level"]
    return out


def read_sft(path: Path) -> dict[str, dict]:
    """``sft.jsonl``: id -> D_SFT* row (needs a response or a reasoning)."""
    out: dict[str, dict] = {}
    for line, row in _rows(path, ("id", "problem", "answer", "origin")):
        key = str(row["id"])
        _unique(out, key, path, line)
        if row["origin"] not in SFT_ORIGINS:
            raise DataError(f"origin must be one of {list(SFT_ORIGINS)}, got {row['origin']!r}", path=path,
                            line=line, field="origin")
        text = row.get("response") or row.get("reasoning")
        if not isinstance(text, str) or not text.strip():
            raise DataError("row has neither a response nor a reasoning", path=path, line=line, field="response")
        out[key] = row
    return out


def read_level_subset(path: Path, level: str) -> dict[str, dict]:
    """``sft_<level>.jsonl`` (paper Table 5, written with ``crv.equal_level_subsets``): id -> row of an
    original CoT the Critic rated ``level``."""
    out: dict[str, dict] = {}
    for line, row in _rows(path, ("id", "problem", "answer", "reasoning", "level")):
        key = str(row["id"])
        _unique(out, key, path, line)
        if row["level"] != level:
            raise DataError(f"level must be {level!r} in this file, got {row['level']!r}", path=path, line=line,
                            field="level")
        out[key] = row
    return out


def _text(row: dict, names: tuple[str, ...]) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def read_kept_rewrites(path: Path) -> dict[str, dict]:
    """``rewrites.jsonl``: id -> the last kept rewrite of an easy or hard CoT, with its text in ``text``.

    Rows of other kinds in the same file (``medium`` verifications, ``corrupt`` incorrect CoTs) are not
    rewrites. The text is read from ``text`` or ``rewrite``.
    """
    out: dict[str, dict] = {}
    for line, row in _rows(path, ("id", "attempt", "outcome")):
        if row["outcome"] != "kept" or row.get("kind") in NOT_REWRITE_KINDS:
            continue
        text = _text(row, ("text", "rewrite"))
        if not text:
            raise DataError("a kept rewrite has no text", path=path, line=line, field="text")
        row = dict(row, text=text)
        try:
            attempt = int(row["attempt"])
        except (TypeError, ValueError):
            raise DataError(f"attempt must be an integer, got {row['attempt']!r}", path=path, line=line,
                            field="attempt") from None
        key = str(row["id"])
        prev = out.get(key)
        if prev is None or attempt >= int(prev["attempt"]):
            out[key] = row
    return out


def read_incorrect(path: Path) -> dict[str, dict]:
    """``incorrect.jsonl``: id -> incorrect CoT row, its text in ``text`` (read from ``text`` or ``reasoning``).

    ``ok`` (the CoT was confirmed incorrect) defaults to true: a row is written only for a CoT found.
    """
    out: dict[str, dict] = {}
    for line, row in _rows(path, ("id", "reached_answer"), allow_empty=("reached_answer",)):
        key = str(row["id"])
        _unique(out, key, path, line)
        if "text" not in row and "reasoning" not in row:
            raise DataError("required field is missing", path=path, line=line, field="text")
        ok = row.get("ok", True)
        if not isinstance(ok, bool):
            raise DataError(f"expected true/false, got {ok!r}", path=path, line=line, field="ok")
        out[key] = dict(row, text=_text(row, ("text", "reasoning")), ok=ok)
    return out


def crv_paths(run_path: str | Path) -> dict[str, Path]:
    run_path = Path(run_path)
    crit, rethink = run_path / "01_critique", run_path / "02_rethink"
    return {"input": crit / "input.jsonl", "critiques": crit / "critiques.jsonl", "sft": rethink / "sft.jsonl",
            "rewrites": rethink / "rewrites.jsonl", "incorrect": rethink / "incorrect.jsonl"}


def read_crv(run_path: str | Path, which: Iterable[str] = ("input", "critiques", "sft", "rewrites", "incorrect")
             ) -> CRVArtifacts:
    """Read and check the CRV files of a run named in ``which`` (all five by default)."""
    which = tuple(which)
    paths = crv_paths(run_path)
    art = CRVArtifacts(paths={k: v for k, v in paths.items() if k in which})
    readers = {"input": ("records", read_records), "critiques": ("levels", read_levels), "sft": ("sft", read_sft),
               "rewrites": ("kept_rewrites", read_kept_rewrites), "incorrect": ("incorrect", read_incorrect)}
    for name in which:
        attr, reader = readers[name]
        setattr(art, attr, reader(paths[name]))
    if "input" in which:
        for name, index in (("critiques", art.levels), ("sft", art.sft), ("incorrect", art.incorrect)):
            unknown = sorted(set(index) - set(art.records))
            if unknown:
                raise DataError(f"{len(unknown)} id(s) not in {paths['input'].name}, e.g. '{unknown[0]}'",
                                path=paths[name], field="id")
    return art
