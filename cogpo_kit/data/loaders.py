"""CoT data loaders: every source becomes a list of validated :class:`CoTRecord`.

Sources (``DataParams.source``):

===================  ===============================================================================
``gsm8k_train``      ``data/gsm8k/train.jsonl`` (or ``path``): ``#### n`` -> answer, ``<<...>>`` removed
``limo``             ``data/limo_r1_distill_cot/deepseek-r1-distill-qwen-32b.jsonl`` (or ``path``)
``file``             ``path`` (JSONL, JSON array, parquet, or a folder of them) with ``fields`` mapping
``bespoke_stratos``  hub ``bespokelabs/Bespoke-Stratos-17k``, or a local export at ``path``
``openthoughts``     hub ``open-thoughts/OpenThoughts-114k``, or a local export at ``path``
``sky_t1``           hub ``NovaSky-AI/Sky-T1_data_17k``, or a local export at ``path``
===================  ===============================================================================

Every row is validated (:mod:`cogpo_kit.data.validate`). With ``on_invalid: error`` the first bad
row stops the load with a :class:`~cogpo_kit.io.DataError` naming file, line and field; with
``reject`` bad rows are collected with their reason, counted in the :class:`LoadReport` and written
to ``rejects_path`` (atomically) when one is given. Valid rows are then shuffled with ``seed``
(when ``shuffle``) and the first ``limit`` kept.

Conversations sources lose the dataset's own answer-format instruction from their problems
(``Return your final response within \\boxed{}.`` and the like, see
:data:`~cogpo_kit.data.parsers.ANSWER_FORMAT_INSTRUCTIONS`) unless ``strip_format_instructions`` is
off; the load report counts the problems stripped (``stripped``) and each instruction removed.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from cogpo_kit.data.config import DataParams
from cogpo_kit.data.parsers import OUR_FIELDS, PARSERS, RowContext, RowProblem, detect_format
from cogpo_kit.data.readers import RawRow, data_root, iter_hub_rows, iter_rows
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.data.validate import LoadReport, Reject, to_record
from cogpo_kit.io import DataError, atomic_write_jsonl
from cogpo_kit.progress import progress

log = logging.getLogger("cogpo_kit.data")


@dataclass(frozen=True)
class LoaderSpec:
    """A named CoT source: its row format, its shipped file and/or its hub dataset."""

    name: str
    format: str
    default_path: str | None = None
    """Relative to the kit's ``data/`` folder."""
    hub: str | None = None
    description: str = ""


LOADERS: dict[str, LoaderSpec] = {s.name: s for s in (
    LoaderSpec("gsm8k_train", "gsm8k", default_path="gsm8k/train.jsonl",
               description="GSM8K train (7473 problems, short worked solutions)"),
    LoaderSpec("limo", "limo", default_path="limo_r1_distill_cot/deepseek-r1-distill-qwen-32b.jsonl",
               description="LIMO problems with DeepSeek-R1-Distill-Qwen-32B long traces (291 rows)"),
    LoaderSpec("file", "mapped", description="a JSONL / JSON-array / parquet file at data.path, fields mapped"),
    LoaderSpec("bespoke_stratos", "conversations", hub="bespokelabs/Bespoke-Stratos-17k",
               description="Bespoke-Stratos-17k (hub, or a local export at data.path)"),
    LoaderSpec("openthoughts", "conversations", hub="open-thoughts/OpenThoughts-114k",
               description="OpenThoughts-114k (hub, or a local export at data.path)"),
    LoaderSpec("sky_t1", "conversations", hub="NovaSky-AI/Sky-T1_data_17k",
               description="Sky-T1_data_17k (hub, or a local export at data.path)"),
)}
"""Loader name -> spec."""


def loader_spec(name: str) -> LoaderSpec:
    try:
        return LOADERS[name]
    except KeyError:
        raise DataError(f"unknown data source '{name}' (known: {', '.join(LOADERS)})", field="data.source") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connection (offline mode counts as unreachable)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_rows(spec: LoaderSpec) -> Iterator[RawRow]:
    """Rows of the hub dataset's train split; a clear error when it cannot be had."""
    offline = not _hub_reachable()
    hint = (f"cannot load hub dataset '{spec.hub}' (source '{spec.name}')"
            + (": no hub is reachable" if offline else "")
            + f"; download it where the hub is reachable (e.g. datasets.load_dataset('{spec.hub}', split='train')"
            f".to_json('{spec.name}.jsonl')) and set data.path to that JSONL/JSON/parquet file or folder")
    try:
        import datasets
        import huggingface_hub.constants as hub_constants
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{hint} (the 'datasets' package is not importable: {exc})", field="data.path") from None
    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    try:
        if offline:  # a copy in the local datasets cache still loads, without minutes of retries
            datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
        ds = datasets.load_dataset(spec.hub, split="train")
    except Exception as exc:  # the hub client raises many types (ConnectionError, HfHubHTTPError, ...)
        raise DataError(f"{hint} ({type(exc).__name__}: {exc})", field="data.path") from None
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    return iter_hub_rows(spec.hub, ds)


def _source_rows(spec: LoaderSpec, config: DataParams) -> tuple[list[str], Iterator[RawRow]]:
    if config.path:
        return [str(config.path)], iter_rows(config.path)
    if spec.default_path:
        path = data_root() / spec.default_path
        return [str(path)], iter_rows(path)
    if spec.hub:
        return [f"hf:{spec.hub}"], _hub_rows(spec)
    raise DataError(f"data source '{spec.name}' needs data.path (a JSONL, JSON or parquet file)", field="data.path")


def _check_config(config: DataParams, spec: LoaderSpec) -> None:
    if config.on_invalid not in ("error", "reject"):
        raise DataError(f"data.on_invalid must be 'error' or 'reject', got {config.on_invalid!r}",
                        field="data.on_invalid")
    if config.fields and spec.format != "mapped":
        raise DataError(f"data.fields applies to source 'file' only, not '{spec.name}'", field="data.fields")
    unknown = sorted(set(config.fields) - set(OUR_FIELDS))
    if unknown:
        raise DataError(f"data.fields maps unknown field(s) {unknown}; ours are {list(OUR_FIELDS)}",
                        field="data.fields")
    if config.limit is not None and config.limit < 0:
        raise DataError(f"data.limit must be >= 0 or null, got {config.limit}", field="data.limit")


def validate_rows(rows: Iterable[RawRow], *, source: str, fmt: str, fields: dict[str, str] | None = None,
                  on_invalid: str = "error", report: LoadReport | None = None,
                  strip_instructions: bool = True) -> tuple[list[CoTRecord], LoadReport]:
    """Parse and validate rows in order; returns the valid records (file order) and the report.

    ``strip_instructions``: remove known answer-format instructions from the problems (formats that
    carry them), counted in the report."""
    parser = PARSERS[fmt]
    report = report or LoadReport(source=source)
    records: list[CoTRecord] = []
    seen: dict[str, tuple[str, int]] = {}

    def reject(r: Reject) -> None:
        if on_invalid == "error":
            raise r.to_error()
        report.add_reject(r)

    for index, raw in enumerate(progress(rows, desc=f"load {source}", unit="row")):
        report.read += 1
        if raw.reason:
            reject(Reject(raw.path, raw.line, raw.reason, None, raw.message or raw.reason, raw.raw))
            continue
        ctx = RowContext(source=source, path=raw.path, line=raw.line, fields=dict(fields or {}), index=index,
                         strip_instructions=strip_instructions)
        try:
            parsed = parser(raw.obj, ctx)
            record = to_record(parsed, source)
        except RowProblem as p:
            reject(Reject(raw.path, raw.line, p.reason, p.field, p.message, raw.obj))
            continue
        if record.id in seen:
            fpath, fline = seen[record.id]
            first = f"line {fline}" if fpath == raw.path else f"{fpath} line {fline}"
            reject(Reject(raw.path, raw.line, "duplicate_id", "id",
                          f"id '{record.id}' already used at {first}", raw.obj))
            continue
        seen[record.id] = (raw.path, raw.line)
        report.add_stripped(parsed.stripped)
        records.append(record)
    report.valid = len(records)
    return records, report


def select(records: list[CoTRecord], config: DataParams) -> list[CoTRecord]:
    """Shuffle with ``config.seed`` (when ``config.shuffle``), then keep the first ``config.limit``."""
    out = list(records)
    if config.shuffle:
        random.Random(config.seed).shuffle(out)
    if config.limit is not None:
        out = out[:config.limit]
    return out


def write_rejects(report: LoadReport, path: str | os.PathLike) -> Path:
    """Write the report's rejected rows (one JSON object each, with reason, file, line, field) atomically."""
    out = atomic_write_jsonl(path, [dict(r.to_dict(), source=report.source) for r in report.rejects])
    report.rejects_path = str(out)
    return out


def load_cot(config: DataParams, *, rejects_path: str | os.PathLike | None = None,
             logger: logging.Logger | None = None) -> tuple[list[CoTRecord], LoadReport]:
    """Load, validate, shuffle and limit a CoT dataset (see the module docstring).

    ``logger`` (e.g. a stage's ``Stage.logger``) receives the counts and the first rejected rows.
    """
    lg = logger or log
    spec = loader_spec(config.source)
    _check_config(config, spec)
    paths, rows = _source_rows(spec, config)
    report = LoadReport(source=spec.name, paths=paths)
    records, report = validate_rows(rows, source=spec.name, fmt=spec.format, fields=config.fields,
                                    on_invalid=config.on_invalid, report=report,
                                    strip_instructions=config.strip_format_instructions)
    kept = select(records, config)
    report.kept = len(kept)
    if rejects_path is not None and config.on_invalid == "reject":
        write_rejects(report, rejects_path)
    lg.info("data %s: read %d rows from %s, %d valid, %d rejected %s, kept %d", spec.name, report.read,
             ", ".join(paths), report.valid, report.n_rejected, report.rejected or "", report.kept)
    if report.stripped:
        lg.info("data %s: answer-format instruction removed from %d problems %s", spec.name, report.stripped,
                report.stripped_by_instruction)
    for r in report.rejects[:20]:
        lg.warning("rejected: %s", r.describe())
    return kept, report


def describe_sources() -> list[tuple[str, str]]:
    """``[(name, description)]`` of the registered loaders."""
    return [(s.name, s.description) for s in LOADERS.values()]


def first_object(path: str | os.PathLike) -> object | None:
    """The first decodable row of a file or folder (``None`` when there is none)."""
    for raw in iter_rows(path):
        if raw.reason is None:
            return raw.obj
    return None


def load_source(source: str, *, path: str | os.PathLike | None = None, on_invalid: str = "error",
                rejects_path: str | os.PathLike | None = None,
                strip_format_instructions: bool = True) -> tuple[list[CoTRecord], LoadReport]:
    """Load a loader name, or a file/folder whose CoT format is recognised from its first row.

    No shuffle and no limit: all valid rows in file order. A file whose rows match no known CoT
    format raises :class:`DataError`.
    """
    if source in LOADERS:
        config = DataParams(source=source, path=str(path) if path else None, shuffle=False,
                            on_invalid=on_invalid,  # type: ignore[arg-type]
                            strip_format_instructions=strip_format_instructions)
        return load_cot(config, rejects_path=rejects_path)
    fmt = detect_format(first_object(source))
    if fmt is None:
        raise DataError("no CoT format recognised (expected GSM8K, LIMO, conversations, or problem/answer/"
                        "reasoning fields; map other fields with data.source: file and data.fields)", path=source)
    _check_config(DataParams(source="file", path=str(source), on_invalid=on_invalid), LOADERS["file"])  # type: ignore[arg-type]
    report = LoadReport(source=fmt, paths=[str(source)])
    records, report = validate_rows(iter_rows(source), source=fmt, fmt=fmt, on_invalid=on_invalid, report=report,
                                    strip_instructions=strip_format_instructions)
    report.kept = len(records)
    if rejects_path is not None and on_invalid == "reject":
        write_rejects(report, rejects_path)
    return records, report
