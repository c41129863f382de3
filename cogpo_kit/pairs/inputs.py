"""Reading the CRV artifacts the pairs and SFT stages start from, strictly.

Every row is checked against its artifact's schema (:mod:`cogpo_kit.pipeline.schemas`), the one the
critique and rethink stages write with; a missing field, a field of the wrong type, or an empty text
is a :class:`~cogpo_kit.io.DataError` naming the file, the line and the field. Files (where they live:
:mod:`cogpo_kit.pipeline.stages`):

- ``input``: the CoT records (id, problem, answer, reasoning, ...);
- ``critiques``: the Critic's level per id (easy / medium / hard, or null: no label);
- ``sft``: D_SFT* (id, problem, answer, reasoning, response, origin, ...);
- ``rewrites``: every attempt (id, kind, attempt, outcome, the text in ``rewrite``, ...);
- ``incorrect``: the incorrect CoT found per id (id, reasoning, reached_answer, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from cogpo_kit.io import DataError, iter_jsonl
from cogpo_kit.levels import LEVELS
from cogpo_kit.pipeline.schemas import schema
from cogpo_kit.pipeline.stages import artifact_path

SFT_ORIGINS = ("medium", "easy*", "hard*")
NOT_REWRITE_KINDS = ("medium", "corrupt")
CRV_FILES = ("input", "critiques", "sft", "rewrites", "incorrect")
"""The artifacts :func:`read_crv` reads (keys of :mod:`cogpo_kit.pipeline.stages`)."""


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
    """id -> the kept rewrite (the last kept attempt; its text in ``rewrite``)."""
    incorrect: dict[str, dict] = field(default_factory=dict)
    """id -> incorrect CoT row (its text in ``reasoning``; a row is written
    only for an incorrect CoT the rethink stage found)."""
    paths: dict[str, Path] = field(default_factory=dict)
    """name -> file read."""


def _rows(key: str, path: Path, *, nonempty: Iterable[str] = ()) -> Iterator[tuple[int, dict]]:
    """``(line, row)`` of an artifact file, each row checked against the artifact's schema."""
    if not path.exists():
        raise DataError("file not found (did the previous stage run?)", path=path)
    sch = schema(key)
    nonempty = tuple(nonempty)
    for line, obj in iter_jsonl(path):
        row = sch.check(obj, path=path, line=line)
        for name in nonempty:
            if not row[name].strip():
                raise DataError("required field is empty", path=path, line=line, field=name)
        yield line, row


def _unique(index: dict, key: str, path: Path, line: int) -> None:
    if key in index:
        raise DataError(f"duplicate id '{key}'", path=path, line=line, field="id")


def read_records(path: Path) -> dict[str, dict]:
    """``input``: id -> CoT record."""
    out: dict[str, dict] = {}
    for line, row in _rows("input", path, nonempty=("id", "problem", "answer", "reasoning")):
        _unique(out, row["id"], path, line)
        out[row["id"]] = row
    return out


def read_levels(path: Path) -> dict[str, str]:
    """``critiques``: id -> level (ids the Critic gave no level are left out)."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for line, row in _rows("critiques", path):
        if row["id"] in seen:
            raise DataError(f"duplicate id '{row['id']}'", path=path, line=line, field="id")
        seen.add(row["id"])
        if row["level"] is None:  # the Critic gave no label: the example is skipped (and counted)
            continue
        if row["level"] not in LEVELS:
            raise DataError(f"level must be one of {list(LEVELS)} or null, got {row['level']!r}", path=path,
                            line=line, field="level")
        out[row["id"]] = row["level"]
    return out


def read_sft(path: Path) -> dict[str, dict]:
    """``sft``: id -> D_SFT* row."""
    out: dict[str, dict] = {}
    for line, row in _rows("sft", path, nonempty=("id", "problem", "answer", "response")):
        _unique(out, row["id"], path, line)
        if row["origin"] not in SFT_ORIGINS:
            raise DataError(f"origin must be one of {list(SFT_ORIGINS)}, got {row['origin']!r}", path=path,
                            line=line, field="origin")
        out[row["id"]] = row
    return out


def read_level_subset(path: Path, level: str) -> dict[str, dict]:
    """``sft_level`` (paper Table 5, written with ``crv.equal_level_subsets``): id -> row of an original
    CoT the Critic rated ``level``."""
    out: dict[str, dict] = {}
    for line, row in _rows("sft_level", path, nonempty=("id", "problem", "answer", "reasoning")):
        _unique(out, row["id"], path, line)
        if row["level"] != level:
            raise DataError(f"level must be {level!r} in this file, got {row['level']!r}", path=path, line=line,
                            field="level")
        out[row["id"]] = row
    return out


def read_kept_rewrites(path: Path) -> dict[str, dict]:
    """``rewrites``: id -> the last kept rewrite of an easy or hard CoT (its text in ``rewrite``).

    Rows of other kinds in the same file (``medium`` verifications, ``corrupt`` incorrect CoTs) are not
    rewrites.
    """
    out: dict[str, dict] = {}
    for line, row in _rows("rewrites", path):
        if row["outcome"] != "kept" or row["kind"] in NOT_REWRITE_KINDS:
            continue
        text = row.get("rewrite")
        if not isinstance(text, str) or not text.strip():
            raise DataError("a kept rewrite has no text", path=path, line=line, field="rewrite")
        prev = out.get(row["id"])
        if prev is None or row["attempt"] >= prev["attempt"]:
            out[row["id"]] = row
    return out


def read_incorrect(path: Path) -> dict[str, dict]:
    """``incorrect``: id -> incorrect CoT row (its text in ``reasoning``)."""
    out: dict[str, dict] = {}
    for line, row in _rows("incorrect", path):
        _unique(out, row["id"], path, line)
        out[row["id"]] = row
    return out


def crv_paths(run_path: str | Path) -> dict[str, Path]:
    return {key: artifact_path(run_path, key) for key in CRV_FILES}


def read_crv(run_path: str | Path, which: Iterable[str] = CRV_FILES) -> CRVArtifacts:
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
