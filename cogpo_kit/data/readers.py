"""Row readers for JSONL, JSON-array and parquet files, folders of them, and hub datasets.

Each reader yields :class:`RawRow` objects: the file, the line (for parquet: the row number, for a
JSON array: the line where the element starts) and either the decoded object or the reason it could
not be decoded. Undecodable lines are yielded, not raised, so a caller can reject them and go on;
a file that cannot be read at all (missing, unsupported type, a JSON array that does not parse)
raises :class:`~cogpo_kit.io.DataError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from cogpo_kit.io import DataError

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
"""File types the readers understand."""


@dataclass
class RawRow:
    """One row as read from a file: the decoded object, or why it could not be decoded."""

    path: str
    """File the row came from (``hf:<name>`` for a hub dataset)."""
    line: int
    """1-based line number (parquet and hub datasets: 1-based row number)."""
    obj: Any = None
    """The decoded JSON value (``None`` when ``reason`` is set)."""
    reason: str | None = None
    """``bad_utf8`` or ``bad_json`` when the line could not be decoded."""
    message: str | None = None
    """What went wrong, in words."""
    raw: str | None = None
    """The undecodable line as text (invalid bytes escaped), for the rejects file."""


def data_root() -> Path:
    """The kit's ``data/`` folder: ``$COGPO_DATA_DIR``, else the one beside the package, else ``./data``."""
    env = os.environ.get("COGPO_DATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "data"
    if beside.is_dir():
        return beside
    return Path.cwd() / "data"


def list_files(path: str | os.PathLike) -> list[Path]:
    """The readable files at ``path``: the file itself, or every supported file under a folder."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"folder holds no {', '.join(SUFFIXES)} files", path=path)
        return files
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"unsupported file type '{path.suffix or '(none)'}' (expected one of {', '.join(SUFFIXES)})",
                        path=path)
    return [path]


def iter_rows(path: str | os.PathLike) -> Iterator[RawRow]:
    """Yield every row of a file or folder (see module docstring)."""
    for file in list_files(path):
        suffix = file.suffix.lower()
        if suffix == ".parquet":
            yield from _iter_parquet(file)
        elif suffix == ".json":
            yield from _iter_json_array(file)
        else:
            yield from _iter_jsonl(file)


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(str(path), lineno, reason="bad_utf8",
                             message=f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                             raw=raw.decode("utf-8", errors="backslashreplace").rstrip("\r\n"))
                continue
            if not text.strip():
                continue
            text = text.rstrip("\r\n")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(str(path), lineno, reason="bad_json",
                             message=f"invalid JSON ({exc.msg} at column {exc.colno})", raw=text)
                continue
            yield RawRow(str(path), lineno, obj=obj)


def count_blank_lines(path: str | os.PathLike) -> int:
    """Blank lines of the JSONL files at ``path`` (they hold no row and are skipped)."""
    n = 0
    for file in list_files(path):
        if file.suffix.lower() in (".jsonl", ".ndjson"):
            with open(file, "rb") as fh:
                n += sum(1 for raw in fh if not raw.strip())
    return n


def _iter_json_array(path: Path) -> Iterator[RawRow]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"file is not valid UTF-8 ({exc.reason} at byte {exc.start})", path=path,
                        line=data[:exc.start].count(b"\n") + 1) from None
    decoder = json.JSONDecoder()
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip_ws(0)
    if i >= n or text[i] != "[":
        raise DataError("expected a JSON array of objects (a .json file must start with '[')", path=path,
                        line=line_at(i))
    i = skip_ws(i + 1)
    if i < n and text[i] == "]":
        return
    line, last = 1, 0
    while True:
        line += text.count("\n", last, i)
        last = i
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=path, line=exc.lineno) from None
        yield RawRow(str(path), line, obj=obj)
        i = skip_ws(end)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            break
        raise DataError("invalid JSON (expected ',' or ']' after an array element)", path=path, line=line_at(i))
    if skip_ws(i + 1) != n:
        raise DataError("invalid JSON (extra data after the array)", path=path, line=line_at(skip_ws(i + 1)))


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read parquet file ({exc})", path=path) from None
    rowno = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            rowno += 1
            yield RawRow(str(path), rowno, obj=obj)


def iter_hub_rows(name: str, rows: Iterable[dict]) -> Iterator[RawRow]:
    """Wrap the rows of a loaded hub dataset as :class:`RawRow` (``path`` is ``hf:<name>``)."""
    for i, obj in enumerate(rows, start=1):
        yield RawRow(f"hf:{name}", i, obj=dict(obj))
