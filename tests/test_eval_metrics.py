"""pass@k, bootstrap intervals, breakdowns and paired comparisons."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from cogpo_kit.evaluation.metrics import (accuracy, bootstrap_ci, breakdown, mcnemar_exact, paired_comparison,
                                          pass_at_k, per_problem_pass, score_summary)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 2), (8, 7, 4), (10, 1, 10), (4, 4, 2)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))


def test_pass_at_1_is_the_sample_average():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    rows = [[True, False, False, True], [False] * 4, [True] * 4]
    p = per_problem_pass(rows, [1, 2, 8])
    assert p[1] == pytest.approx([0.5, 0.0, 1.0])
    assert 8 not in p  # more than the samples per problem
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    rng = random.Random(0)
    small = [rng.random() < 0.5 for _ in range(30)]
    big = [rng.random() < 0.5 for _ in range(3000)]
    lo, hi = bootstrap_ci(small, resamples=2000)
    assert lo <= accuracy(small) <= hi
    blo, bhi = bootstrap_ci(big, resamples=500)
    assert (bhi - blo) < (hi - lo) / 4
    # 30 problems at ~50%: the interval is about +-18 points
    assert 0.25 < hi - lo < 0.45
    assert bootstrap_ci([1.0], resamples=100) == (1.0, 1.0)


def test_score_summary_and_breakdown():
    s = score_summary([1, 0, 1, 1], resamples=200)
    assert s["score"] == 75.0 and s["n"] == 4 and s["points_per_problem"] == 25.0
    b = breakdown([1, 0, 1, 1], ["a", "b", "a", "b"], resamples=50)
    assert {k: v["score"] for k, v in b.items()} == {"a": 100.0, "b": 50.0}


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * sum(math.comb(10, i) for i in range(3)) / 2 ** 10)


def test_paired_comparison_flags_noise_on_aime_sized_sets():
    ids = [f"p{i}" for i in range(30)]
    a = {i: 1.0 if k < 10 else 0.0 for k, i in enumerate(ids)}
    b = dict(a)
    b["p0"] = 0.0  # one problem apart: 3.3 points
    cmp = paired_comparison(a, b, resamples=2000)
    assert cmp["diff"] == pytest.approx(3.33, abs=0.01) and cmp["within_noise"] is True
    assert cmp["only_a"] == 1 and cmp["only_b"] == 0 and cmp["points_per_problem"] == pytest.approx(3.33, abs=0.01)
    # a consistent 500-problem gap is not noise
    big_a = {f"q{i}": 1.0 if i % 2 else 0.0 for i in range(500)}
    big_b = {f"q{i}": 1.0 if i % 4 == 1 else 0.0 for i in range(500)}
    cmp = paired_comparison(big_a, big_b, resamples=500)
    assert cmp["within_noise"] is False and cmp["mcnemar_p"] < 1e-6
    with pytest.raises(ValueError):
        paired_comparison({"x": 1.0}, {"y": 1.0})


def test_comparison_csv_prints_no_negative_zero():
    from cogpo_kit.evaluation.comparison import build_comparison, comparison_csv

    summary = {"score": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 3}
    better = {"score": 33.3, "ci_low": 0.0, "ci_high": 100.0, "n": 3}
    results = {"zero_shot": {"gsm8k": summary}, "sft": {"gsm8k": summary}, "cogpo": {"gsm8k": better}}
    scores = {"zero_shot": {"gsm8k": {"a": 0.0, "b": 0.0, "c": 0.0}},
              "sft": {"gsm8k": {"a": 0.0, "b": 0.0, "c": 0.0}},
              "cogpo": {"gsm8k": {"a": 1.0, "b": 0.0, "c": 0.0}}}
    doc = build_comparison(results, scores, resamples=200, seed=0, reference="sft")
    text = comparison_csv(doc)
    assert "-0.0" not in text
    assert "+0.0 [+0.0, +0.0] p_holm=1 (noise)" in text  # zero_shot vs sft, listed as (sft, zero_shot): negated
