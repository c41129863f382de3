"""``cogpo-kit data check``: validate a CoT dataset and print counts, lengths and problems found.

``source`` is a loader name (``gsm8k_train``, ``limo``, ``bespoke_stratos`` with ``path``, ...) or a
file/folder. A file's format is recognised from its first row (GSM8K, LIMO, conversations with
thought/solution markers, or ``problem``/``answer``/``reasoning`` fields); a JSONL/JSON/parquet file
with no known CoT mapping (a benchmark, say) gets a generic check: row count, fields seen and decode
errors. A zip archive is listed, never extracted. Exit code 0 when no problem was found, 1 otherwise.
"""

from __future__ import annotations

import statistics
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable, TextIO

from cogpo_kit.data.loaders import LOADERS, first_object, load_source, write_rejects
from cogpo_kit.data.parsers import FORMAT_NAMES, detect_format
from cogpo_kit.data.readers import count_blank_lines, data_root, iter_rows
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.data.validate import LoadReport, Reject
from cogpo_kit.io import DataError

MAX_PROBLEMS_SHOWN = 10


def length_stats(values: Iterable[float]) -> dict[str, float]:
    """``{min, median, mean, max}`` of a list of numbers (zeros when empty)."""
    vals = list(values)
    if not vals:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    return {"min": min(vals), "median": statistics.median(vals), "mean": statistics.fmean(vals), "max": max(vals)}


def record_length_stats(records: list[CoTRecord]) -> dict[str, dict[str, dict[str, float]]]:
    """``{field: {"chars": stats, "words": stats}}`` for problem, reasoning and answer."""
    out = {}
    for name in ("problem", "reasoning", "answer"):
        texts = [getattr(r, name) for r in records]
        out[name] = {"chars": length_stats(len(t) for t in texts),
                     "words": length_stats(len(t.split()) for t in texts)}
    return out


def _fmt(x: float) -> str:
    return f"{x:,.1f}" if isinstance(x, float) and not float(x).is_integer() else f"{int(x):,}"


def _print_problems(rejects: list[Reject], counts: dict[str, int], out: TextIO) -> None:
    total = sum(counts.values())
    if not total:
        print("problems found: none", file=out)
        return
    print(f"problems found: {total}", file=out)
    for r in rejects[:MAX_PROBLEMS_SHOWN]:
        print(f"  {r.describe()}", file=out)
    if total > MAX_PROBLEMS_SHOWN:
        print(f"  ... and {total - MAX_PROBLEMS_SHOWN} more (write them all with --rejects FILE)", file=out)


def _print_cot_report(records: list[CoTRecord], report: LoadReport, blank: int, out: TextIO) -> None:
    print(f"rows read:      {report.read}", file=out)
    if blank:
        print(f"blank lines:    {blank} (no rows, skipped)", file=out)
    print(f"valid:          {report.valid}", file=out)
    print(f"rejected:       {report.n_rejected}", file=out)
    for reason, n in sorted(report.rejected.items()):
        print(f"  {reason:<14}{n}", file=out)
    if report.stripped:
        print(f"format instruction removed from problems: {report.stripped}", file=out)
        for name, n in sorted(report.stripped_by_instruction.items()):
            print(f"  {name:<20}{n}", file=out)
    if records:
        stats = record_length_stats(records)
        print("lengths (valid rows)   chars min / median / mean / max          words min / median / mean / max",
              file=out)
        for name, s in stats.items():
            c = " / ".join(_fmt(s["chars"][k]) for k in ("min", "median", "mean", "max"))
            w = " / ".join(_fmt(s["words"][k]) for k in ("min", "median", "mean", "max"))
            print(f"  {name:<21}{c:<40} {w}", file=out)
    if report.rejects_path:
        print(f"rejects written to {report.rejects_path}", file=out)
    _print_problems(report.rejects, report.rejected, out)


def _check_cot(source: str, path: str | None, on_invalid: str, rejects: str | None, out: TextIO) -> int:
    """Validate a loader name, or a file in a recognised CoT format, and print the report."""
    records, report = load_source(source, path=path, on_invalid=on_invalid, rejects_path=rejects)
    blank = sum(count_blank_lines(p) for p in report.paths if not p.startswith("hf:"))
    _print_cot_report(records, report, blank, out)
    return 1 if report.n_rejected else 0


def _check_generic(path: Path, on_invalid: str, rejects: str | None, out: TextIO) -> int:
    print("format: no CoT field mapping known for these rows; generic check (rows, fields, decode errors)", file=out)
    report = LoadReport(source="generic", paths=[str(path)])
    fields: Counter[str] = Counter()
    for raw in iter_rows(path):
        report.read += 1
        if raw.reason or not isinstance(raw.obj, dict):
            r = (Reject(raw.path, raw.line, raw.reason, None, raw.message or raw.reason, raw.raw) if raw.reason else
                 Reject(raw.path, raw.line, "not_object", None,
                        f"expected a JSON object, got {type(raw.obj).__name__}", raw.obj))
            if on_invalid == "error":
                raise r.to_error()
            report.add_reject(r)
            continue
        fields.update(raw.obj.keys())
    report.valid = report.read - report.n_rejected
    print(f"rows read:      {report.read}", file=out)
    blank = count_blank_lines(path)
    if blank:
        print(f"blank lines:    {blank} (no rows, skipped)", file=out)
    print(f"decoded:        {report.valid}", file=out)
    print(f"decode errors:  {report.n_rejected}", file=out)
    for reason, n in sorted(report.rejected.items()):
        print(f"  {reason:<14}{n}", file=out)
    print("fields seen:    " + (", ".join(f"{k} ({n})" for k, n in fields.items()) or "(none)"), file=out)
    if rejects:
        write_rejects(report, rejects)
        print(f"rejects written to {report.rejects_path}", file=out)
    _print_problems(report.rejects, report.rejected, out)
    return 1 if report.n_rejected else 0


def _check_zip(path: Path, out: TextIO) -> int:
    print("format: zip archive; members listed, nothing extracted", file=out)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        print(f"problems found: 1\n  {path}: not a readable zip archive ({exc})", file=out)
        return 1
    print(f"members:        {len(infos)}", file=out)
    for i in infos:
        flag = ", encrypted" if i.flag_bits & 0x1 else ""
        print(f"  {i.filename} ({i.file_size:,} bytes{flag})", file=out)
    print("problems found: none", file=out)
    return 0


def main(source: str, path: str | None = None, on_invalid: str = "reject", rejects: str | None = None,
         *, out: TextIO | None = None) -> int:
    """Check a CoT dataset (loader name or file); print the findings; 0 if clean, 1 if problems, 2 if unusable."""
    out = out or sys.stdout
    if on_invalid not in ("error", "reject"):
        print(f"error: on_invalid must be 'error' or 'reject', got {on_invalid!r}", file=sys.stderr)
        return 2
    try:
        if source in LOADERS:
            spec = LOADERS[source]
            where = path or (str(data_root() / spec.default_path) if spec.default_path else f"hf:{spec.hub}"
                             if spec.hub else "data.path not given")
            print(f"data check: {source} ({where})", file=out)
            return _check_cot(source, path, on_invalid, rejects, out)
        file = Path(source)
        if not file.exists():
            print(f"error: '{source}' is neither a data source ({', '.join(LOADERS)}) nor an existing file",
                  file=sys.stderr)
            return 2
        print(f"data check: {file}", file=out)
        if file.is_file() and file.suffix.lower() == ".zip":
            return _check_zip(file, out)
        fmt = detect_format(first_object(file))
        if fmt is None:
            return _check_generic(file, on_invalid, rejects, out)
        print(f"format: {FORMAT_NAMES[fmt]}", file=out)
        return _check_cot(str(file), None, on_invalid, rejects, out)
    except DataError as exc:
        if exc.line is None:  # the source as a whole cannot be used (missing file, no hub, bad params)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"problems found: 1\n  {exc}", file=out)
        return 1
