"""The run's tables as pandas DataFrames (shown by the notebooks, written into the report).

Every function takes a :class:`~cogpo_kit.viz.artifacts.Run` and returns a DataFrame, empty (with
its columns) when the stage has not produced the data.
"""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any

import pandas as pd

from cogpo_kit.pipeline.stage import STAGES
from cogpo_kit.viz.artifacts import (GAPS, LEVELS, MARGIN_PREFIX, METRIC_LOSS, METRIC_STEP, Run, bench_label,
                                     first_key, is_sweep_model, model_label, model_order, text_of)


def _words(text: Any) -> int:
    return len(text_of(text).split())


def stage_overview(run: Run) -> pd.DataFrame:
    """One row per stage: status, wall time, counts, notes."""
    rows = []
    for stage in STAGES:
        m = run.manifest(stage)
        if m is None:
            rows.append({"stage": stage, "status": "not run", "wall time (s)": None, "counts": "", "notes": 0})
            continue
        counts = m.get("counts") or {}
        shown = ", ".join(f"{k}: {v}" for k, v in counts.items() if isinstance(v, (int, float, str)))
        rows.append({"stage": stage, "status": "done", "wall time (s)": m.get("wall_time_s"),
                     "counts": shown, "notes": len(m.get("notes") or [])})
    return pd.DataFrame(rows, columns=["stage", "status", "wall time (s)", "counts", "notes"])


def stage_counts(run: Run, stage: str) -> pd.DataFrame:
    m = run.manifest(stage) or {}
    items = [(k, v) for k, v in (m.get("counts") or {}).items() if isinstance(v, (int, float, str, bool))]
    return pd.DataFrame(items, columns=["count", "value"])


def agents(run: Run, stage: str | None = None) -> pd.DataFrame:
    """LLM calls, cache hits and tokens per agent (of one stage, or of every stage)."""
    rows = []
    for st in ([stage] if stage else STAGES):
        for agent, stats in ((run.manifest(st) or {}).get("agents") or {}).items():
            if isinstance(stats, dict):
                rows.append({"stage": st, "agent": agent,
                             **{k: v for k, v in stats.items() if isinstance(v, (int, float))}})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["stage", "agent", "calls"])


def level_distribution(run: Run) -> pd.DataFrame:
    """Paper Table 1 style: CoTs per level as rated by the Critic, and the rows of D_SFT* per origin."""
    rated = Counter(r["level"] for r in run.critiques())
    sft = Counter(str(r.get("origin") or "").rstrip("*") for r in run.sft())
    total = sum(rated.values())
    rows = [{"level": lvl, "Critic: original CoTs": rated.get(lvl, 0),
             "share (%)": round(100.0 * rated.get(lvl, 0) / total, 1) if total else None,
             "in D_SFT* (by original level)": sft.get(lvl, 0)} for lvl in LEVELS]
    other = {k: v for k, v in rated.items() if k not in LEVELS}
    for lvl, n in other.items():
        rows.append({"level": str(lvl), "Critic: original CoTs": n,
                     "share (%)": round(100.0 * n / total, 1) if total else None, "in D_SFT* (by original level)": 0})
    df = pd.DataFrame(rows).set_index("level")
    if run.critiques():
        df.loc["total"] = [total, 100.0 if total else None, sum(sft.values())]
    return df


def critic_votes(run: Run) -> pd.DataFrame:
    """How the Critic's votes agreed, and how many answers had to be re-asked."""
    crits = run.critiques()
    kinds: Counter = Counter()
    for r in crits:
        votes = [v for v in (r.get("votes") or []) if v is not None]
        top = Counter(votes).most_common(1)[0][1] if votes else 0
        kinds["unanimous" if votes and top == len(votes) else "majority" if top > len(votes) / 2 else "no majority"] += 1
    reasks = sum(int(r.get("reasks") or 0) for r in crits)
    calls = sum(len(r.get("votes") or []) for r in crits)
    rows = [("CoTs rated", len(crits)), ("all votes agree", kinds["unanimous"]), ("majority only", kinds["majority"]),
            ("no majority", kinds["no majority"]), ("votes cast", calls), ("answers re-asked", reasks)]
    return pd.DataFrame(rows, columns=["", "count"]).set_index("")


def funnel(run: Run) -> pd.DataFrame:
    """The CRV funnel from the rethink manifest, with each step's share of the first."""
    steps = run.funnel()
    if not steps:
        return pd.DataFrame(columns=["step", "count", "% of first"])
    first = steps[0][1] or 1
    return pd.DataFrame([{"step": s, "count": n, "% of first": round(100.0 * n / first, 1)} for s, n in steps])


def rewrite_outcomes(run: Run) -> pd.DataFrame:
    """Per original level: examples rewritten, attempts, Verifier YES share, final outcomes."""
    by_id: dict[str, list[dict]] = {}
    for r in run.rewrites():
        by_id.setdefault(str(r["id"]), []).append(r)
    rows: dict[str, dict] = {}
    for rid, attempts in by_id.items():
        attempts.sort(key=lambda r: int(r.get("attempt") or 0))
        lvl = str(attempts[-1].get("level") or "?")
        row = rows.setdefault(lvl, {"examples": 0, "attempts": 0, "verifier YES": 0, "outcomes": Counter()})
        row["examples"] += 1
        row["attempts"] += len(attempts)
        row["verifier YES"] += sum(1 for a in attempts if str(a.get("verdict") or "").upper() == "YES")
        row["outcomes"][str(attempts[-1].get("outcome"))] += 1
    out = []
    for lvl in [lv for lv in LEVELS if lv in rows] + [lv for lv in rows if lv not in LEVELS]:
        r = rows[lvl]
        out.append({"level": lvl, "examples": r["examples"], "attempts": r["attempts"],
                    "verifier YES (%)": round(100.0 * r["verifier YES"] / r["attempts"], 1) if r["attempts"] else None,
                    "final outcome": ", ".join(f"{k}: {v}" for k, v in sorted(r["outcomes"].items()))})
    return pd.DataFrame(out, columns=["level", "examples", "attempts", "verifier YES (%)", "final outcome"])


def incorrect_summary(run: Run) -> pd.DataFrame:
    rows = run.incorrect()
    ok = sum(1 for r in rows if r.get("ok") is True)
    return pd.DataFrame([("incorrect CoTs written", len(rows)), ("usable (reach a wrong answer)", ok),
                         ("not usable", len(rows) - ok)], columns=["", "count"]).set_index("")


def pairs_by_gap(run: Run) -> pd.DataFrame:
    """Pairs per gap: count, beta, chosen/rejected kinds and mean lengths in words."""
    pairs = run.pairs()
    out = []
    for gap in list(GAPS) + sorted({str(p["gap"]) for p in pairs} - set(GAPS)):
        ps = [p for p in pairs if p["gap"] == gap]
        kinds = Counter(f"{p.get('chosen_kind')} > {p.get('rejected_kind')}" for p in ps)
        betas = sorted({p.get("beta") for p in ps if p.get("beta") is not None})
        out.append({"gap": gap, "pairs": len(ps), "beta": ", ".join(f"{b:g}" for b in betas),
                    "kinds (chosen > rejected)": ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())),
                    "chosen words (mean)": round(fmean(_words(p["chosen"]) for p in ps), 1) if ps else None,
                    "rejected words (mean)": round(fmean(_words(p["rejected"]) for p in ps), 1) if ps else None})
    return pd.DataFrame(out)


def training_summary(run: Run) -> pd.DataFrame:
    """Per trained model: logged steps, first and last loss, last reward margin."""
    rows = []
    for stage in ("04_sft", "05_preference"):
        for name, log in run.metric_runs(stage).items():
            losses = [(first_key(r, METRIC_STEP), first_key(r, ("loss",))) for r in log if first_key(r, ("loss",)) is not None]
            margins = [r[MARGIN_PREFIX] for r in log if r.get(MARGIN_PREFIX) is not None]
            final = next((first_key(r, METRIC_LOSS) for r in reversed(log) if "train_loss" in r), None)
            rows.append({"stage": stage, "model": name, "logged steps": len(losses),
                         "first loss": round(losses[0][1], 4) if losses else None,
                         "last loss": round(losses[-1][1], 4) if losses else None,
                         "train loss (mean)": round(final, 4) if isinstance(final, (int, float)) else None,
                         "last margin": round(margins[-1], 4) if margins else None})
    return pd.DataFrame(rows, columns=["stage", "model", "logged steps", "first loss", "last loss",
                                       "train loss (mean)", "last margin"])


def results(run: Run, *, with_ci: bool = False, sweep: bool = False) -> pd.DataFrame:
    """Paper Table 2 style: benchmarks as rows, models as columns, pass@1 in % (beta-sweep models only
    with ``sweep=True``)."""
    rows = [r for r in run.results() if sweep or not is_sweep_model(r["model"])]
    if not rows:
        return pd.DataFrame()
    models = model_order(r["model"] for r in rows)
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    table: dict[str, dict[str, Any]] = {bench_label(b): {} for b in benches}
    for r in rows:
        value: Any = round(r["score"], 1) if r["score"] is not None else None
        if with_ci and r.get("ci_low") is not None and r.get("ci_high") is not None:
            value = f"{r['score']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        table[bench_label(r["benchmark"])][model_label(r["model"])] = value
    df = pd.DataFrame.from_dict(table, orient="index")
    df = df[[model_label(m) for m in models]]
    df.index.name = "benchmark"
    return df


def sample_counts(run: Run) -> pd.DataFrame:
    """Evaluation samples per model and benchmark, and how many were graded correct."""
    c: dict[tuple[str, str], list[int]] = {}
    for s in run.samples():
        key = (s["model"], s["benchmark"])
        c.setdefault(key, [0, 0])
        c[key][0] += 1
        c[key][1] += int(s["correct"])
    return pd.DataFrame([{"model": m, "benchmark": b, "samples": n, "correct": k} for (m, b), (n, k) in c.items()],
                        columns=["model", "benchmark", "samples", "correct"])
