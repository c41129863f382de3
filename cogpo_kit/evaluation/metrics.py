"""Scores with their uncertainty: accuracy, pass@k, breakdowns, bootstrap intervals, paired tests.

- ``pass_at_k(n, c, k)`` is the unbiased estimator of Chen et al. (2021): the probability that at
  least one of k samples drawn without replacement from n (c of them correct) is correct.
- A benchmark score is the mean over problems of a per-problem score (pass@1 = c/n averaged over
  the n samples of each problem), with a 95% percentile bootstrap interval over problems.
- Two models on the same problems are compared with a paired bootstrap of the per-problem score
  difference, and a p-value: McNemar's exact test when each problem has one sample (0/1 scores),
  else a paired sign-flip permutation test. A difference whose interval contains 0 is flagged as
  within noise: on AIME (30 problems) one problem is 3.3 points.
- Many comparisons at once get Holm's step-down correction of their p-values (:func:`holm`).
- Resamples default to 10,000 (percentile intervals from 1,000 resamples move by about a point
  between seeds on small benchmarks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Mapping, Optional, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"k must be in 1..n (n={n}), got {k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k), as a stable product
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def accuracy(correct: Sequence[bool | float]) -> float:
    """Mean of per-problem scores (booleans or fractions); NaN for no problems."""
    return float(np.mean(np.asarray(correct, dtype=float))) if len(correct) else float("nan")


def bootstrap_ci(scores: Sequence[float], *, resamples: int = 10000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem scores."""
    x = np.asarray(scores, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if resamples <= 0 or len(x) == 1:
        m = float(x.mean())
        return (m, m)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(x))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(x), size=(stop - start, len(x)))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def score_summary(scores: Sequence[float], *, resamples: int = 10000, seed: int = 0) -> dict:
    """``{"n", "score", "ci_low", "ci_high", "points_per_problem"}`` in percent."""
    lo, hi = bootstrap_ci(scores, resamples=resamples, seed=seed)
    n = len(scores)
    return {"n": n, "score": round(100 * accuracy(scores), 2) if n else None,
            "ci_low": round(100 * lo, 2) if n else None, "ci_high": round(100 * hi, 2) if n else None,
            "points_per_problem": round(100 / n, 2) if n else None}


def per_problem_pass(samples_correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[int, list[float]]:
    """Per-problem pass@k for each k (k larger than a problem's sample count is skipped)."""
    out: dict[int, list[float]] = {}
    for k in ks:
        vals = []
        for row in samples_correct:
            n, c = len(row), int(sum(bool(v) for v in row))
            if n == 0:
                raise ValueError("a problem has no samples")
            if k <= n:
                vals.append(pass_at_k(n, c, k))
        if len(vals) == len(samples_correct):
            out[k] = vals
    return out


def breakdown(scores: Sequence[float], groups: Sequence[object], *, resamples: int = 10000,
              seed: int = 0) -> dict[str, dict]:
    """Score summary per group value (subject, level, ...), groups sorted by name."""
    by: dict[str, list[float]] = defaultdict(list)
    for s, g in zip(scores, groups):
        by[str(g)].append(s)
    return {g: score_summary(v, resamples=resamples, seed=seed) for g, v in sorted(by.items())}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` problems only A solved, ``c`` only B solved."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(0, k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def sign_flip_p(diff: Sequence[float], *, resamples: int = 10000, seed: int = 0) -> Optional[float]:
    """Two-sided paired permutation test of mean difference 0: each problem's difference keeps or flips its
    sign at random; ``p = (1 + #{|mean*| >= |mean|}) / (1 + resamples)`` (``None`` without resamples)."""
    d = np.asarray(diff, dtype=float)
    if len(d) == 0 or not np.any(d):
        return 1.0
    if resamples <= 0:
        return None
    obs = abs(d.mean()) - 1e-12
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // len(d))
    for start in range(0, resamples, chunk):
        k = min(resamples, start + chunk) - start
        signs = rng.integers(0, 2, size=(k, len(d))) * 2 - 1
        hits += int(np.sum(np.abs((signs * d).mean(axis=1)) >= obs))
    return (1 + hits) / (1 + resamples)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest of m is multiplied by
    ``m - i`` (i from 0), made monotone, capped at 1. A missing p (``None``) stays missing and does not count."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and p == p]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 10000, seed: int = 0,
                      binary: Optional[bool] = None) -> dict:
    """Model A minus model B on the problems both were scored on (percentage points).

    Returns the difference, its paired-bootstrap 95% interval, a p-value (``p``; ``test`` names it:
    McNemar's exact test when scores are 0/1, with the counts of problems only one model solved;
    else a sign-flip permutation test), and ``within_noise`` (the interval contains 0)."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("the two models share no scored problems")
    xa = np.array([a[i] for i in ids], dtype=float)
    xb = np.array([b[i] for i in ids], dtype=float)
    diff = xa - xb
    lo, hi = bootstrap_ci(diff, resamples=resamples, seed=seed)
    out = {"n": len(ids), "diff": round(100 * float(diff.mean()), 2), "ci_low": round(100 * lo, 2),
           "ci_high": round(100 * hi, 2), "points_per_problem": round(100 / len(ids), 2)}
    is_binary = binary if binary is not None else bool(np.all(np.isin(xa, (0, 1))) and np.all(np.isin(xb, (0, 1))))
    if is_binary:
        only_a = int(np.sum((xa == 1) & (xb == 0)))
        only_b = int(np.sum((xa == 0) & (xb == 1)))
        mp = mcnemar_exact(only_a, only_b)
        out.update({"only_a": only_a, "only_b": only_b, "mcnemar_p": round(mp, 4), "p": mp, "test": "mcnemar_exact"})
    else:
        out.update({"p": sign_flip_p(diff, resamples=resamples, seed=seed), "test": "sign_flip"})
    out["within_noise"] = bool(lo <= 0 <= hi)
    return out
