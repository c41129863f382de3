"""The cross-model table (paper Table 2 style): benchmark x model, with intervals and paired tests.

``comparison.json`` holds ``rows`` (one per model and benchmark: score, 95% interval, n, the
decoding ``protocol``, ``truncated`` outputs and ``truncated_correct`` answers) and ``paired`` (every
pair of models on every benchmark they share: the difference in points, its paired-bootstrap
interval, a p-value — McNemar's exact test for single samples, else a sign-flip permutation test —
``within_noise``, and for the comparisons with the reference model ``p_holm``: Holm's correction
over all of them, every benchmark and model together). ``comparison.csv`` is the table a paper would
print: one line per benchmark with its protocol, a ``score [low, high]`` cell per model, the correct
answers that came from outputs cut at ``max_tokens`` per model, and a ``<model> vs <reference>`` cell
per model with ``p_holm`` and ``(noise)`` when the interval contains 0.
"""

from __future__ import annotations

import csv
import io
from itertools import combinations
from typing import Mapping, Optional, Sequence

from cogpo_kit.evaluation.metrics import holm, paired_comparison


def build_comparison(results: Mapping[str, Mapping[str, dict]], scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                     *, resamples: int, seed: int, beta_scales: Optional[Mapping[str, float]] = None,
                     reference: Optional[str] = None, skipped: Optional[Mapping[str, str]] = None,
                     correction: str = "holm") -> dict:
    """``results[model][bench]`` (benchmark summaries) and ``scores[model][bench][problem_id]`` ->
    the ``comparison.json`` document."""
    models = list(results)
    rows = []
    for m in models:
        for bench, r in results[m].items():
            row = {"model": m, "benchmark": bench, "score": r["score"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                   "n": r["n"], "n_samples": r.get("n_samples"), "protocol": (r.get("protocol") or {}).get("label"),
                   "truncated": r.get("truncated"), "truncated_correct": r.get("truncated_correct")}
            if beta_scales and m in beta_scales:
                row["beta_scale"] = beta_scales[m]
            rows.append(row)
    paired = []
    for a, b in combinations(models, 2):
        for bench in results[a]:
            if bench in results[b]:
                cmp = paired_comparison(scores[a][bench], scores[b][bench], resamples=resamples, seed=seed)
                paired.append({"benchmark": bench, "model_a": a, "model_b": b, **cmp})
    ref = reference if reference in models else (models[0] if models else None)
    family = [p for p in paired if ref in (p["model_a"], p["model_b"])]
    if correction == "holm" and family:
        for p, adj in zip(family, holm([p["p"] for p in family])):
            p["p_holm"] = adj
    protocols = sorted({(r.get("protocol") or {}).get("label") for res in results.values()
                        for r in res.values()} - {None})
    return {"reference": ref, "models": models, "rows": rows, "paired": paired, "skipped": dict(skipped or {}),
            "correction": {"method": correction, "family": f"{len(family)} comparisons with the reference",
                           "alpha": 0.05} if correction == "holm" else {"method": "none"},
            "protocols": protocols}


def _cell(score, lo, hi) -> str:
    return "" if score is None else f"{score:.1f} [{lo:.1f}, {hi:.1f}]"


def comparison_csv(doc: dict) -> str:
    """The wide table as CSV text."""
    models: Sequence[str] = doc["models"]
    ref = doc.get("reference")
    benches = list(dict.fromkeys(r["benchmark"] for r in doc["rows"]))
    by = {(r["model"], r["benchmark"]): r for r in doc["rows"]}
    pair = {}
    for p in doc["paired"]:
        pair[(p["model_a"], p["model_b"], p["benchmark"])] = p
    others = [m for m in models if m != ref]
    header = (["benchmark", "n", "protocol"] + list(models) + [f"{m} truncated correct" for m in models]
              + [f"{m} vs {ref}" for m in others])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for bench in benches:
        n = next((by[(m, bench)]["n"] for m in models if (m, bench) in by), "")
        protos = sorted({str(by[(m, bench)].get("protocol")) for m in models
                         if (m, bench) in by and by[(m, bench)].get("protocol")})
        line = [bench, n, "; ".join(protos)]
        for m in models:
            r = by.get((m, bench))
            line.append(_cell(r["score"], r["ci_low"], r["ci_high"]) if r else "")
        for m in models:
            r = by.get((m, bench))
            line.append("" if r is None or r.get("truncated_correct") is None else r["truncated_correct"])
        for m in others:
            p = pair.get((m, ref, bench))
            sign = 1
            if p is None:
                p, sign = pair.get((ref, m, bench)), -1
            if p is None:
                line.append("")
                continue
            # "+ 0.0" turns a negated zero (-0.0) into 0.0, so it prints as +0.0
            d, lo, hi = sign * p["diff"] + 0.0, sign * (p["ci_low"] if sign > 0 else p["ci_high"]) + 0.0, \
                sign * (p["ci_high"] if sign > 0 else p["ci_low"]) + 0.0
            ph = p.get("p_holm")
            holm_p = f" p_holm={ph:.3g}" if ph is not None else ""
            line.append(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]{holm_p}" + (" (noise)" if p["within_noise"] else ""))
        w.writerow(line)
    return buf.getvalue()
