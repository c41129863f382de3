"""Evaluation results as rows ``{model, benchmark, score (%), ci_low, ci_high, n}``.

Parses ``06_evaluate/comparison.json`` and each model's ``results.json`` in the shapes listed in
:func:`parse_comparison` and :func:`parse_results`; the key spellings live in
:mod:`cogpo_kit.viz.artifacts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogpo_kit.io import DataError
from cogpo_kit.viz.artifacts import CI_HIGH_KEYS, CI_KEYS, CI_LOW_KEYS, N_KEYS, SCORE_KEYS, first_key


def _as_percent(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _bench_metrics(model: str, bench: str, metrics: Any, source: Path) -> dict:
    if isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
        metrics = {"score": metrics}
    if not isinstance(metrics, dict):
        raise DataError(f"results of benchmark '{bench}' must be a mapping, got {type(metrics).__name__}",
                        path=source, field=bench)
    score = first_key(metrics, SCORE_KEYS)
    if score is None and isinstance(metrics.get("pass_at_k"), dict):
        score = first_key(metrics["pass_at_k"], ("1", 1, "pass@1"))
    if score is None:
        raise DataError(f"no score for benchmark '{bench}' (looked for {', '.join(SCORE_KEYS)})",
                        path=source, field=bench)
    ci = first_key(metrics, CI_KEYS)
    lo, hi = (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (
        first_key(metrics, CI_LOW_KEYS), first_key(metrics, CI_HIGH_KEYS))
    return {"model": model, "benchmark": bench, "score": _as_percent(score), "ci_low": _as_percent(lo),
            "ci_high": _as_percent(hi), "n": first_key(metrics, N_KEYS)}


def scale_percent(rows: list[dict]) -> list[dict]:
    """Scores as percentages: fractions (every score <= 1) are multiplied by 100."""
    values = [r[k] for r in rows for k in ("score", "ci_low", "ci_high") if r.get(k) is not None]
    if values and max(values) <= 1.0:
        for r in rows:
            for k in ("score", "ci_low", "ci_high"):
                if r.get(k) is not None:
                    r[k] = r[k] * 100.0
    return rows


def parse_results(model: str, data: Any, source: Path) -> list[dict]:
    """One model's ``results.json``: ``{"benchmarks": {bench: metrics}}`` or ``{bench: metrics}``."""
    if not isinstance(data, dict):
        raise DataError("results must be a JSON object", path=source)
    model = str(data.get("model") or model)
    benches = data.get("benchmarks", data.get("results"))
    if isinstance(benches, list):
        return [_bench_metrics(model, str(first_key(b, ("benchmark", "name"), "?")), b, source) for b in benches]
    if not isinstance(benches, dict):
        benches = {k: v for k, v in data.items() if isinstance(v, (dict, int, float)) and not isinstance(v, bool)
                   and k not in ("model", "params", "counts", "timing")}
    return [_bench_metrics(model, str(b), m, source) for b, m in benches.items()]


def parse_comparison(data: Any, source: Path) -> list[dict]:
    """``comparison.json``: a list of rows (model, benchmark, score, ...) or ``{"rows": [...]}``,
    or ``{model: {benchmark: metrics}}``."""
    rows = data.get("rows", data.get("results")) if isinstance(data, dict) else data
    if isinstance(rows, list):
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or "model" not in r or "benchmark" not in r:
                raise DataError("each comparison row needs 'model' and 'benchmark'", path=source, line=i + 1)
            row = _bench_metrics(str(r["model"]), str(r["benchmark"]), r, source)
            if r.get("beta_scale") is not None:
                row["beta_scale"] = r["beta_scale"]
            out.append(row)
        return out
    if isinstance(data, dict):
        return [row for model, benches in data.items() if isinstance(benches, dict)
                for row in parse_results(model, {"benchmarks": benches}, source)]
    raise DataError("comparison must be a list of rows or a mapping", path=source)
