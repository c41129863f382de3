"""Evaluation results as rows ``{model, benchmark, score, ci_low, ci_high, n, protocol, truncated_correct}``
(scores in percent, as the evaluation stage writes them; ``protocol`` is the decoding protocol's label,
``truncated_correct`` the correct answers that came from outputs cut at ``max_tokens``; both ``None``
in files written before they were recorded).

Parses ``06_evaluate/comparison.json`` and each model's ``results.json`` in the shapes listed in
:func:`parse_comparison` and :func:`parse_results`; the key spellings live in
:mod:`cogpo_kit.viz.artifacts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogpo_kit.io import DataError
from cogpo_kit.viz.artifacts import CI_HIGH_KEYS, CI_KEYS, CI_LOW_KEYS, N_KEYS, SCORE_KEYS, first_key


def _number(x: Any, what: str, source: Path, field: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise DataError(f"{what} must be a number, got {x!r}", path=source, field=field)
    return float(x)


def bench_row(model: str, bench: str, metrics: Any, source: Path) -> dict:
    """``{model, benchmark, score, ci_low, ci_high, n}`` from one benchmark's metrics (scores in percent)."""
    if not isinstance(metrics, dict):
        raise DataError(f"results of benchmark '{bench}' must be a mapping, got {type(metrics).__name__}",
                        path=source, field=bench)
    score = first_key(metrics, SCORE_KEYS)
    if score is None:
        raise DataError(f"no score for benchmark '{bench}' (looked for {', '.join(SCORE_KEYS)})",
                        path=source, field=bench)
    ci = first_key(metrics, CI_KEYS)
    lo, hi = (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (
        first_key(metrics, CI_LOW_KEYS), first_key(metrics, CI_HIGH_KEYS))
    row = {"model": model, "benchmark": bench, "score": _number(score, "score", source, bench),
           "ci_low": _number(lo, "ci_low", source, bench), "ci_high": _number(hi, "ci_high", source, bench),
           "n": first_key(metrics, N_KEYS)}
    proto = metrics.get("protocol")
    row["protocol"] = proto.get("label") if isinstance(proto, dict) else proto
    row["truncated_correct"] = metrics.get("truncated_correct")
    row["truncated"] = metrics.get("truncated")
    if metrics.get("beta_scale") is not None:
        row["beta_scale"] = metrics["beta_scale"]
    return row


def parse_results(model: str, data: Any, source: Path) -> list[dict]:
    """One model's ``results.json``: ``{"model": ..., "benchmarks": {bench: metrics}}``."""
    benches = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benches, dict):
        raise DataError("expected a JSON object with a 'benchmarks' mapping", path=source, field="benchmarks")
    model = str(data.get("model") or model)
    return [bench_row(model, str(b), m, source) for b, m in benches.items()]


def parse_comparison(data: Any, source: Path) -> list[dict]:
    """``comparison.json``: ``{"rows": [{model, benchmark, score, ci_low, ci_high, n, ...}], ...}`` (or the
    list of rows alone)."""
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DataError("expected a list of rows, or an object with 'rows'", path=source, field="rows")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "model" not in r or "benchmark" not in r:
            raise DataError(f"row {i} needs 'model' and 'benchmark'", path=source, field="rows")
        out.append(bench_row(str(r["model"]), str(r["benchmark"]), r, source))
    return out
