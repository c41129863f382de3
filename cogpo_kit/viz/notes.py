"""Plain-language notes on a run: each stage's own notes plus what the artifacts show on their face
(a stage not run, an empty artifact, a skewed level distribution, a missing gap type, tiny samples).

A derived note is left out when a stage already said the same thing in its own words (a note of the
run holding the derived note's topic, e.g. "skew" or "no medium").
"""

from __future__ import annotations

from collections import Counter

from cogpo_kit.pipeline.stages import STAGES, stage_dir_name, stage_spec
from cogpo_kit.viz.artifacts import GAPS, LEVELS, Run, level_of

SKEW_SHARE = 0.7
"""A level holding at least this share of the rated CoTs is called skewed."""
SMALL_N = 30
"""Benchmarks scored on fewer problems than this get a note on their wide intervals."""


def _derived(run: Run) -> list[tuple[str, str, str]]:
    """``(stage folder, topic, note)`` computed from the artifacts."""
    critique, rethink, pairs, evaluate = map(stage_dir_name, ("critique", "rethink", "pairs", "evaluate"))
    out = []
    for stage in stage_spec("report").upstream_folders:  # the report itself is being written
        if run.manifest(stage) is None:
            out.append((stage, "has not run", f"stage {stage} has not run: its tables and figures are empty"))
    crits = run.critiques()
    if run.manifest(critique) is not None:
        levels = Counter(level_of(r["level"]) for r in crits)
        if not crits:
            out.append((critique, "no cots were rated", "no CoTs were rated"))
        else:
            top, n = levels.most_common(1)[0]
            if n / len(crits) >= SKEW_SHARE and len(crits) > 1:
                out.append((critique, "skew", f"skewed levels: the Critic rated {n} of {len(crits)} CoTs {top}"))
            for lvl in LEVELS:
                if levels.get(lvl, 0) == 0:
                    out.append((critique, f"no {lvl}", f"no {lvl} CoTs"))
    if run.manifest(rethink) is not None:
        if not run.sft():
            out.append((rethink, "d_sft* is empty",
                        "D_SFT* is empty: no CoT was kept, so SFT on D_SFT* has nothing to train on"))
        if crits and not run.incorrect():
            out.append((rethink, "no usable incorrect", "no usable incorrect CoT: no medium- or large-gap pairs"))
    if run.manifest(pairs) is not None:
        gaps = Counter(p["gap"] for p in run.pairs())
        if not gaps:
            out.append((pairs, "zero pairs", "no preference pairs: the preference methods have nothing to train on"))
        for g in GAPS if gaps else ():
            if gaps.get(g, 0) == 0:
                out.append((pairs, f"no {g}-gap", f"no {g}-gap pairs"))
    for stage in map(stage_dir_name, ("sft", "preference")):
        if run.manifest(stage) is not None and not any(run.metric_runs(stage).values()):
            out.append((stage, "no training metrics", "no training metrics were logged"))
    if run.manifest(evaluate) is not None:
        rows = run.results()
        if not rows:
            out.append((evaluate, "no evaluation results", "no evaluation results"))
        small = sorted({r["benchmark"] for r in rows if isinstance(r.get("n"), int) and r["n"] < SMALL_N})
        if small:
            ns = sorted({r["n"] for r in rows if r["benchmark"] in small})
            out.append((evaluate, "intervals are wide",
                        f"{', '.join(small)}: scored on {'/'.join(map(str, ns))} problems, so the 95% intervals are "
                        "wide and differences between methods are mostly noise"))
    return out


def all_notes(run: Run) -> dict[str, list[str]]:
    """``{stage: [note]}``: each stage's own manifest notes, then the derived notes no stage already made."""
    own = {stage: run.notes(stage) for stage in STAGES}
    said = " ".join(n for notes in own.values() for n in notes).lower()
    out = {stage: list(notes) for stage, notes in own.items()}
    for stage, topic, note in _derived(run):
        if topic not in said and note not in out[stage]:
            out[stage].append(note)
    return out
