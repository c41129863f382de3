"""Loaders for the shipped benchmark files (``data/<name>/``, see each folder's SOURCE.md).

Each loader returns dicts with the fields of :class:`~cogpo_kit.evaluation.benchmarks.Problem`
(except ``kind``). A row missing a required field raises :class:`~cogpo_kit.io.DataError` naming
the file, line and field. GPQA is read from its password-protected zip in memory only. LiveCodeBench's
loaders live in :mod:`livecodebench`.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

from cogpo_kit.answers.extraction import boxed_answer
from cogpo_kit.evaluation.livecodebench import load_livecodebench, load_livecodebench_public  # noqa: F401
from cogpo_kit.io import DataError, iter_jsonl

AIME25_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def _rows(path: Path):
    if not path.exists():
        raise DataError("benchmark file not found (see data/*/SOURCE.md)", path=path)
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", path=path, line=lineno)
        yield lineno, obj


def _req(obj: dict, key: str, path: Path, line: int) -> Any:
    val = obj.get(key)
    if val is None or (isinstance(val, str) and not val.strip()):
        raise DataError("missing or empty", path=path, line=line, field=key)
    return val


def _num_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    s = str(v).strip()
    return s[:-2] if re.fullmatch(r"-?\d+\.0", s) else s


def load_aime24(d: Path, opt) -> list[dict]:
    p = d / "aime24" / "test.jsonl"
    return [{"id": f"aime24-{_req(o, 'id', p, n)}", "question": _req(o, "problem", p, n),
             "gold": _num_text(_req(o, "answer", p, n)), "meta": {"url": o.get("url", "")}} for n, o in _rows(p)]


def load_aime25(d: Path, opt) -> list[dict]:
    p = d / "aime25" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        q = _req(o, "prompt", p, n)
        q = q[: -len(AIME25_SUFFIX)] if q.endswith(AIME25_SUFFIX) else q
        out.append({"id": f"aime25-{n - 1}", "question": q.strip(), "gold": _num_text(_req(o, "answer", p, n)),
                    "meta": {"part": "I" if n <= 15 else "II"}})
    return out


def load_amc23(d: Path, opt) -> list[dict]:
    p = d / "amc23" / "test.jsonl"
    return [{"id": f"amc23-{_req(o, 'id', p, n)}", "question": _req(o, "problem", p, n),
             "gold": _num_text(_req(o, "answer", p, n)), "meta": {"url": o.get("url", "")}} for n, o in _rows(p)]


def load_math500(d: Path, opt) -> list[dict]:
    p = d / "math500" / "test.jsonl"
    return [{"id": _req(o, "unique_id", p, n), "question": _req(o, "problem", p, n),
             "gold": str(_req(o, "answer", p, n)),
             "meta": {"subject": _req(o, "subject", p, n), "level": int(_req(o, "level", p, n))}} for n, o in _rows(p)]


def load_gsm8k(d: Path, opt) -> list[dict]:
    p = d / "gsm8k" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        ans = _req(o, "answer", p, n)
        if "####" not in ans:
            raise DataError("answer has no '#### <number>' line", path=p, line=n, field="answer")
        gold = ans.rsplit("####", 1)[1].strip().replace(",", "")
        out.append({"id": f"gsm8k-{n - 1}", "question": _req(o, "question", p, n), "gold": gold, "meta": {}})
    return out


def load_olympiadbench(d: Path, opt) -> list[dict]:
    """The shipped file (675 problems), or ``eval.olympiadbench_path``: a JSONL copy of another version with
    the same fields (e.g. the Hugging Face ``Hothan/OlympiadBench`` split ``OE_TO_maths_en_COMP``, 674)."""
    p = Path(opt.olympiadbench_path) if getattr(opt, "olympiadbench_path", None) else d / "olympiadbench" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        finals = _req(o, "final_answer", p, n)
        if not isinstance(finals, list) or not finals:
            raise DataError("expected a non-empty list", path=p, line=n, field="final_answer")
        gold = ", ".join(str(a).strip().strip("$").strip() for a in finals)
        question = _req(o, "question", p, n)
        ctx = o.get("context")
        if ctx and str(ctx).strip() not in ("", "None"):
            question = f"{ctx}\n\n{question}"
        unit = o.get("unit")
        meta = {"subfield": o.get("subfield") or "unknown", "answer_type": o.get("answer_type"),
                "is_multiple_answer": bool(o.get("is_multiple_answer")),
                "unit": None if unit in (None, "None") else unit}
        out.append({"id": f"olympiadbench-{_req(o, 'id', p, n)}", "question": question, "gold": gold, "meta": meta})
    return out


def load_minerva(d: Path, opt) -> list[dict]:
    p = d / "minerva_math" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        gold = boxed_answer(_req(o, "solution", p, n))
        if gold is None:
            raise DataError("solution has no \\boxed{} answer", path=p, line=n, field="solution")
        out.append({"id": f"minerva-{o.get('idx', n - 1)}", "question": _req(o, "problem", p, n), "gold": gold,
                    "meta": {"type": o.get("type") or "unknown"}})
    return out


def load_mmlu(d: Path, opt) -> list[dict]:
    split = opt.mmlu_split
    p = d / "mmlu" / f"{split}.jsonl"
    wanted = set(opt.mmlu_subjects)
    out, seen = [], set()
    for n, o in _rows(p):
        subject = _req(o, "subject", p, n)
        seen.add(subject)
        if wanted and subject not in wanted:
            continue
        gold = str(_req(o, "answer", p, n)).strip().upper()
        if gold not in ("A", "B", "C", "D"):
            raise DataError(f"answer must be A-D, got {gold!r}", path=p, line=n, field="answer")
        choices = tuple(str(o.get(k, "")) for k in "ABCD")
        out.append({"id": f"mmlu-{split}-{n - 1}", "question": _req(o, "question", p, n), "gold": gold,
                    "choices": choices, "meta": {"subject": subject}})
    unknown = wanted - seen
    if unknown:
        raise DataError(f"unknown MMLU subject(s) {sorted(unknown)}; known: {', '.join(sorted(seen))}", path=p)
    return out


def _gpqa_password(folder: Path) -> bytes:
    env = os.environ.get("GPQA_ZIP_PASSWORD")
    if env:
        return env.encode()
    src = folder / "SOURCE.md"
    m = re.search(r"password:\s*`([^`]+)`", src.read_text(encoding="utf-8"), re.IGNORECASE) if src.exists() else None
    if not m:
        raise DataError("GPQA zip password not found (set GPQA_ZIP_PASSWORD or keep data/gpqa_diamond/SOURCE.md)",
                        path=src)
    return m.group(1).encode()


def load_gpqa_diamond(d: Path, opt) -> list[dict]:
    folder = d / "gpqa_diamond"
    zpath = folder / "dataset.zip"
    if not zpath.exists():
        raise DataError("GPQA zip not found", path=zpath)
    try:
        with zipfile.ZipFile(zpath) as zf:  # read in memory only: never extracted to disk
            raw = zf.read("dataset/gpqa_diamond.csv", pwd=_gpqa_password(folder))
    except RuntimeError as exc:
        raise DataError(f"cannot read dataset/gpqa_diamond.csv ({exc})", path=zpath) from None
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    out = []
    for n, row in enumerate(reader, start=2):
        rid = (row.get("Record ID") or "").strip()
        where = f"{zpath}!dataset/gpqa_diamond.csv"
        for key in ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"):
            if not (row.get(key) or "").strip():
                raise DataError("missing or empty", path=where, line=n, field=key)
        options = [row["Correct Answer"].strip()] + [row[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
        order = list(range(4))
        random.Random(f"{opt.seed}:{rid or n}").shuffle(order)
        choices = tuple(options[i] for i in order)
        gold = "ABCD"[order.index(0)]
        out.append({"id": f"gpqa-{rid or n}", "question": row["Question"].strip(), "gold": gold, "choices": choices,
                    "meta": {"domain": row.get("High-level domain") or "unknown", "subdomain": row.get("Subdomain")}})
    return out
