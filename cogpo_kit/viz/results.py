"""Evaluation results as rows ``{model, benchmark, score, ci_low, ci_high, n, protocol, truncated,
truncated_correct}`` (scores in percent, as the evaluation stage writes them; ``protocol`` is the
decoding protocol's label, ``truncated_correct`` the correct answers that came from outputs cut at
``max_tokens``), plus ``beta_scale`` for a beta-sweep model of ``comparison.json``.

Reads the evaluation stage's ``comparison`` document or a model's ``results`` document, each checked
against its schema in :mod:`cogpo_kit.pipeline.schemas` (a missing or mistyped field is a
:class:`~cogpo_kit.io.DataError` naming the file and the field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from cogpo_kit.pipeline.schemas import COMPARISON, RESULTS


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(x)


def _row(model: str, bench: str, m: dict, protocol: Optional[str]) -> dict:
    return {"model": model, "benchmark": bench, "score": _num(m["score"]), "ci_low": _num(m["ci_low"]),
            "ci_high": _num(m["ci_high"]), "n": m["n"], "protocol": protocol, "truncated": m["truncated"],
            "truncated_correct": m["truncated_correct"]}


def parse_results(data: Any, source: Path) -> list[dict]:
    """One model's ``results.json``: a row per benchmark of ``benchmarks``."""
    RESULTS.check(data, path=source)
    return [_row(data["model"], bench, m, m["protocol"].get("label")) for bench, m in data["benchmarks"].items()]


def parse_comparison(data: Any, source: Path) -> list[dict]:
    """``comparison.json``: its ``rows``."""
    COMPARISON.check(data, path=source)
    out = []
    for r in data["rows"]:
        row = _row(r["model"], r["benchmark"], r, r["protocol"])
        if "beta_scale" in r:
            row["beta_scale"] = r["beta_scale"]
        out.append(row)
    return out
