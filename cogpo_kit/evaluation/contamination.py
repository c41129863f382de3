"""Training problems that overlap benchmark problems, by normalised n-gram overlap.

Text is normalised to lower-case word and number tokens (punctuation, LaTeX braces and spacing
dropped, so ``\\frac{1}{2}`` and ``\\dfrac12`` both give ``frac 1 2``-like runs). A training problem
overlaps a benchmark problem when the share of its n-grams (``ngram`` tokens; the whole text for
shorter ones) that occur in that benchmark problem reaches ``threshold`` — or the other way round,
so a training problem that quotes a benchmark problem inside a longer text is caught too.

``cogpo-kit data contamination TRAIN... --bench B...`` (default: every shipped benchmark) prints the
counts per benchmark and the overlapping rows (training source and id, benchmark and problem id, both
shares), and writes them to ``--out`` as JSONL, so a researcher can drop them before training. Exit code: 0 no overlap,
1 overlaps found, 2 bad input.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

from cogpo_kit.io import DataError, atomic_write_jsonl

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-case word/number tokens; LaTeX command names kept as words (``\\frac`` -> ``frac``);
    ``dfrac``/``tfrac`` read as ``frac``."""
    t = re.sub(r"\\[dtc]frac", r"\\frac", str(text).lower())
    return _TOKEN.findall(t)


def ngrams(toks: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The set of n-grams (the whole sequence when it is shorter than ``n``)."""
    if not toks:
        return set()
    if len(toks) <= n:
        return {tuple(toks)}
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    """One training row overlapping one benchmark problem."""

    train_source: str
    train_id: str
    benchmark: str
    bench_id: str
    train_share: float
    """Share of the training problem's n-grams found in the benchmark problem."""
    bench_share: float
    """Share of the benchmark problem's n-grams found in the training problem."""
    train_text: str
    bench_text: str


class BenchmarkIndex:
    """n-gram -> benchmark problems containing it. A benchmark problem shorter than ``n`` tokens is
    indexed whole and matches a training problem that contains it and is not much longer
    (at most ``n`` tokens more), so a common short phrase does not flag every long text."""

    def __init__(self, n: int):
        self.n = n
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.problems: list[tuple[str, str, str, int]] = []  # (bench, id, text, n_grams)
        self.short_lengths: set[int] = set()

    def add(self, bench: str, pid: str, text: str) -> None:
        toks = tokens(text)
        grams = ngrams(toks, self.n)
        if 0 < len(toks) < self.n:
            self.short_lengths.add(len(toks))
        k = len(self.problems)
        self.problems.append((bench, pid, text, len(grams)))
        for g in grams:
            self.index[g].append(k)

    def matches(self, text: str, threshold: float) -> list[tuple[int, float, float]]:
        """``(problem index, train share, bench share)`` of problems reaching the threshold."""
        toks = tokens(text)
        grams = ngrams(toks, self.n)
        if not grams:
            return []
        hits: Counter = Counter()
        for g in grams:
            for k in self.index.get(g, ()):
                hits[k] += 1
        short_hits: set[int] = set()
        for length in self.short_lengths:
            if length >= len(toks) or len(toks) > length + self.n:
                continue
            for g in {tuple(toks[i:i + length]) for i in range(len(toks) - length + 1)}:
                short_hits.update(self.index.get(g, ()))
        out = []
        for k in set(hits) | short_hits:
            if k in short_hits:
                train_share, bench_share = hits[k] / len(grams), 1.0
            else:
                train_share = hits[k] / len(grams)
                bench_share = hits[k] / max(1, self.problems[k][3])
            if train_share >= threshold or bench_share >= threshold:
                out.append((k, float(train_share), float(bench_share)))
        return sorted(out, key=lambda x: -max(x[1], x[2]))


def find_overlaps(train_rows: Iterable[tuple[str, str, str]], bench_rows: Iterable[tuple[str, str, str]], *,
                  ngram: int = 13, threshold: float = 0.5) -> list[Overlap]:
    """``train_rows`` / ``bench_rows``: ``(source, id, text)``; every overlapping pair."""
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    if not 0 < threshold <= 1:
        raise ValueError("threshold must be in (0, 1]")
    idx = BenchmarkIndex(ngram)
    for bench, pid, text in bench_rows:
        idx.add(bench, pid, text)
    out = []
    for src, tid, text in train_rows:
        for k, ts, bs in idx.matches(text, threshold):
            bench, pid, btext, _ = idx.problems[k]
            out.append(Overlap(src, tid, bench, pid, round(ts, 4), round(bs, 4), text[:300], btext[:300]))
    return out


def _train_rows(sources: Sequence[str]) -> list[tuple[str, str, str]]:
    from cogpo_kit.data.loaders import load_source

    rows = []
    for src in sources:
        records, _ = load_source(src, on_invalid="reject")
        if not records:
            raise DataError("no valid rows", path=src)
        rows.extend((src, r.id, r.problem) for r in records)
    return rows


def _bench_rows(names: Sequence[str]) -> list[tuple[str, str, str]]:
    from cogpo_kit.evaluation.benchmarks import load_problems

    rows = []
    for name in names:
        rows.extend((name, p.id, p.question) for p in load_problems(name))
    return rows


def main(train: Sequence[str], bench: Optional[Sequence[str]] = None, ngram: int = 13, threshold: float = 0.5,
         out: Optional[str] = None) -> int:
    """Report training rows overlapping benchmark problems (see the module docstring)."""
    from cogpo_kit.evaluation.benchmarks import REGISTRY

    if isinstance(train, str):
        train = [train]
    # "livecodebench" reads release files given in the params (eval.livecodebench_path): named on request only
    names = list(bench) if bench else [b for b in REGISTRY if b != "livecodebench"]
    unknown = [b for b in names if b not in REGISTRY]
    if unknown:
        print(f"contamination: unknown benchmark(s) {unknown} (known: {', '.join(REGISTRY)})", file=sys.stderr)
        return 2
    train_rows = _train_rows(train)
    bench_rows = _bench_rows(names)
    overlaps = find_overlaps(train_rows, bench_rows, ngram=ngram, threshold=threshold)
    per_bench = Counter()
    for b in names:
        per_bench[b] = len({(o.train_source, o.train_id) for o in overlaps if o.benchmark == b})
    print(f"training rows: {len(train_rows)} from {', '.join(train)}; benchmark problems: {len(bench_rows)}; "
          f"{ngram}-grams, threshold {threshold:g}")
    print(f"{'benchmark':16s} {'problems':>8s} {'overlapping training rows':>26s}")
    counts = Counter(b for b, _, _ in bench_rows)
    for b in names:
        print(f"{b:16s} {counts[b]:8d} {per_bench[b]:26d}")
    for o in overlaps[:50]:
        print(f"  {o.train_source}:{o.train_id} ~ {o.benchmark}:{o.bench_id} "
              f"(train {o.train_share:.0%}, bench {o.bench_share:.0%}): {o.train_text[:90]!r}")
    if len(overlaps) > 50:
        print(f"  ... {len(overlaps) - 50} more" + (f" in {out}" if out else " (use --out to save all)"))
    if out:
        atomic_write_jsonl(out, [asdict(o) for o in overlaps])
        print(f"wrote {len(overlaps)} overlapping pairs to {out}")
    return 1 if overlaps else 0
