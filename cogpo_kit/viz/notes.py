"""Plain-language notes on a run: each stage's own notes plus what the artifacts show on their face
(a stage not run, an empty artifact, a skewed level distribution, a missing gap type, tiny samples)."""

from __future__ import annotations

from collections import Counter

from cogpo_kit.pipeline.stage import STAGES
from cogpo_kit.viz.artifacts import GAPS, LEVELS, Run

SKEW_SHARE = 0.7
"""A level holding at least this share of the rated CoTs is called skewed."""
SMALL_N = 30
"""Benchmarks scored on fewer problems than this get a note on their wide intervals."""


def derived_notes(run: Run) -> dict[str, list[str]]:
    """``{stage: [note]}`` computed from the artifacts."""
    out: dict[str, list[str]] = {s: [] for s in STAGES}
    for stage in STAGES[:-1]:
        if run.manifest(stage) is None:
            out[stage].append(f"stage {stage} has not run: its tables and figures are empty")
    crits = run.critiques()
    if run.manifest("01_critique") is not None:
        levels = Counter(r["level"] for r in crits)
        if not crits:
            out["01_critique"].append("no CoTs were rated")
        else:
            top, n = levels.most_common(1)[0]
            if n / len(crits) >= SKEW_SHARE and len(crits) > 1:
                out["01_critique"].append(f"skewed levels: the Critic rated {n} of {len(crits)} CoTs {top}")
            for lvl in LEVELS:
                if levels.get(lvl, 0) == 0:
                    out["01_critique"].append(f"no {lvl} CoTs")
    if run.manifest("02_rethink") is not None:
        if not run.sft():
            out["02_rethink"].append("D_SFT* is empty: no CoT was kept, so SFT on D_SFT* has nothing to train on")
        if run.incorrect() and not any(r.get("ok") for r in run.incorrect()):
            out["02_rethink"].append("no usable incorrect CoT: every one still reached the gold answer")
    if run.manifest("03_pairs") is not None:
        gaps = Counter(p["gap"] for p in run.pairs())
        if not gaps:
            out["03_pairs"].append("no preference pairs: the preference methods have nothing to train on")
        else:
            missing = [g for g in GAPS if gaps.get(g, 0) == 0]
            if missing:
                out["03_pairs"].append(f"no {' / '.join(missing)}-gap pairs")
    for stage in ("04_sft", "05_preference"):
        if run.manifest(stage) is not None and not run.metric_runs(stage):
            out[stage].append("no training metrics were logged")
    if run.manifest("06_evaluate") is not None:
        rows = run.results()
        if not rows:
            out["06_evaluate"].append("no evaluation results")
        small = sorted({r["benchmark"] for r in rows if isinstance(r.get("n"), int) and r["n"] < SMALL_N})
        if small:
            ns = sorted({r["n"] for r in rows if r["benchmark"] in small})
            out["06_evaluate"].append(
                f"{', '.join(small)}: scored on {'/'.join(map(str, ns))} problems, so the 95% intervals are wide "
                "and differences between methods are mostly noise")
    return out


def all_notes(run: Run) -> dict[str, list[str]]:
    """Each stage's own manifest notes followed by the derived ones (duplicates dropped)."""
    derived = derived_notes(run)
    out = {}
    for stage in STAGES:
        notes = run.notes(stage) + derived.get(stage, [])
        out[stage] = list(dict.fromkeys(notes))
    return out
