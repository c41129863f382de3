"""The run's tables as pandas DataFrames (shown by the notebooks, written into the report).

Every function takes a :class:`~cogpo_kit.viz.artifacts.Run` and returns a DataFrame, empty (with
its columns) when the stage has not produced the data.
"""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any

import pandas as pd

from cogpo_kit.pipeline.stages import STAGES, stage_dir_name
from cogpo_kit.viz.artifacts import (GAPS, INCORRECT_KIND, LEVELS, NO_LABEL, Run, bench_label, is_sweep_model,
                                     level_of, margin_gap, model_label, model_order, text_of, verdict_of)


def _words(text: Any) -> int:
    return len(text_of(text).split())


def stage_overview(run: Run, writing: str | None = None) -> pd.DataFrame:
    """One row per stage: status, wall time, counts, notes.

    ``writing``: the stage producing this table right now (the report stage writing its report),
    shown as such instead of as not run or as its previous run.
    """
    rows = []
    for stage in STAGES:
        m = run.manifest(stage)
        if stage == writing:
            rows.append({"stage": stage, "status": "running (writes this report)", "wall time (s)": None,
                         "counts": "", "notes": 0})
            continue
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
    """LLM calls, cache hits and tokens per agent (of one stage, or of every stage); an agent whose stats
    are kept per request tag gets one row per tag."""
    rows = []
    for st in ([stage] if stage else STAGES):
        for agent, stats in ((run.manifest(st) or {}).get("agents") or {}).items():
            if not isinstance(stats, dict):
                continue
            flat = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if flat:
                rows.append({"stage": st, "agent": agent, **flat})
            for tag, sub in stats.items():
                if isinstance(sub, dict):
                    rows.append({"stage": st, "agent": f"{agent} ({tag})",
                                 **{k: v for k, v in sub.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["stage", "agent", "calls"])


def crv_counts(run: Run) -> dict:
    """CoTs in, per Critic level, kept in D_SFT* per original level, incorrect CoTs found, discards by reason."""
    crits = run.critiques()
    return {"in": len(run.inputs()) or len(crits),
            "levels": Counter(level_of(r["level"]) for r in crits),
            "kept": Counter(level_of(r["origin"].rstrip("*")) for r in run.sft()),
            "sft": len(run.sft()),
            "incorrect": len(run.incorrect()),
            "discards": {str(k): v for k, v in (run.funnel().get("discards") or {}).items()
                         if isinstance(v, (int, float))}}


def level_distribution(run: Run) -> pd.DataFrame:
    """Paper Table 1 style: CoTs per level as rated by the Critic, and the rows of D_SFT* per original level."""
    c = crv_counts(run)
    rated, kept = c["levels"], c["kept"]
    total = sum(rated.values())
    names = list(LEVELS) + sorted(k for k in rated if k not in LEVELS)
    rows = [{"level": lvl, "Critic: original CoTs": rated.get(lvl, 0),
             "share (%)": round(100.0 * rated.get(lvl, 0) / total, 1) if total else None,
             "in D_SFT* (by original level)": kept.get(lvl, 0)} for lvl in names]
    df = pd.DataFrame(rows).set_index("level")
    if total:
        df.loc["total"] = [total, 100.0, c["sft"]]
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
    """The CRV funnel: CoTs in, rated per level, kept in D_SFT*, incorrect CoTs found, discards by reason."""
    c = crv_counts(run)
    if not c["in"]:
        return pd.DataFrame(columns=["step", "count", "% of CoTs in"])
    steps = [("CoTs in", c["in"])]
    steps += [(f"rated {lvl}", c["levels"].get(lvl, 0)) for lvl in LEVELS]
    if c["levels"].get(NO_LABEL):
        steps.append(("no Critic label", c["levels"][NO_LABEL]))
    if run.manifest("rethink") is not None:
        steps += [("kept: medium (verified)", c["kept"].get("medium", 0)),
                  ("kept: easy* (expanded, verified, re-rated medium)", c["kept"].get("easy", 0)),
                  ("kept: hard* (simplified, verified, re-rated medium)", c["kept"].get("hard", 0)),
                  ("D_SFT*", c["sft"]), ("incorrect CoTs found", c["incorrect"])]
        steps += [(f"discarded: {reason}", n) for reason, n in sorted(c["discards"].items())]
    return pd.DataFrame([{"step": s, "count": n, "% of CoTs in": round(100.0 * n / c["in"], 1)} for s, n in steps])


def rewrite_outcomes(run: Run) -> pd.DataFrame:
    """Per Critic level (and for the incorrect CoTs): examples, attempts, Verifier YES share, last outcomes."""
    levels = {r["id"]: level_of(r["level"]) for r in run.critiques()}
    by_id: dict[tuple[str, str], list[dict]] = {}
    for r in run.rewrites():
        group = "incorrect CoT" if r["kind"] == INCORRECT_KIND else levels.get(r["id"], NO_LABEL)
        by_id.setdefault((group, r["id"]), []).append(r)
    rows: dict[str, dict] = {}
    for (group, _), attempts in by_id.items():
        attempts.sort(key=lambda r: r["attempt"])
        row = rows.setdefault(group, {"examples": 0, "attempts": 0, "verdicts": 0, "yes": 0, "outcomes": Counter()})
        row["examples"] += 1
        row["attempts"] += len(attempts)
        verdicts = [str(verdict_of(a)).upper() for a in attempts if verdict_of(a) is not None]
        row["verdicts"] += len(verdicts)
        row["yes"] += verdicts.count("YES")
        row["outcomes"][attempts[-1]["outcome"]] += 1
    order = [g for g in (*LEVELS, NO_LABEL) if g in rows] + sorted(g for g in rows if g not in (*LEVELS, NO_LABEL))
    out = [{"level": g, "examples": rows[g]["examples"], "attempts": rows[g]["attempts"],
            "verifier YES (%)": round(100.0 * rows[g]["yes"] / rows[g]["verdicts"], 1) if rows[g]["verdicts"] else None,
            "last attempt's outcome": ", ".join(f"{k}: {v}" for k, v in sorted(rows[g]["outcomes"].items()))}
           for g in order]
    return pd.DataFrame(out, columns=["level", "examples", "attempts", "verifier YES (%)", "last attempt's outcome"])


def incorrect_summary(run: Run) -> pd.DataFrame:
    """Examples with a usable incorrect CoT (one the rethink stage found and kept) and those without."""
    ok = len(run.incorrect())
    n = crv_counts(run)["in"]
    return pd.DataFrame([("examples", n), ("with a usable incorrect CoT", ok), ("without one", max(n - ok, 0))],
                        columns=["", "count"]).set_index("")


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
    for stage in map(stage_dir_name, ("sft", "preference")):
        logs = run.metric_runs(stage)
        for name in model_order(logs):
            log = logs[name]
            losses = [(r["step"], r["loss"]) for r in log if r.get("loss") is not None]
            margins = [v for r in log for k, v in r.items() if margin_gap(k) == "all" and v is not None]
            final = next((r["train_loss"] for r in reversed(log) if "train_loss" in r), None)
            rows.append({"stage": stage, "model": name, "logged steps": len(losses),
                         "first loss": round(losses[0][1], 4) if losses else None,
                         "last loss": round(losses[-1][1], 4) if losses else None,
                         "train loss (mean)": round(final, 4) if isinstance(final, (int, float)) else None,
                         "last margin": round(margins[-1], 4) if margins else None})
    return pd.DataFrame(rows, columns=["stage", "model", "logged steps", "first loss", "last loss",
                                       "train loss (mean)", "last margin"])


def results(run: Run, *, with_ci: bool = False, sweep: bool = False, details: bool | None = None) -> pd.DataFrame:
    """Paper Table 2 style: benchmarks as rows, models as columns, pass@1 in % (beta-sweep models only
    with ``sweep=True``).

    ``details`` (default: as ``with_ci``) adds two columns after the models: ``protocol`` (how the
    answers were decoded: ``greedy, 16k tok``, ``r1 (T=0.6, top-p 0.95), pass@1 of 16, 32k tok``) and
    ``truncated correct`` (correct answers that came from outputs cut at ``max_tokens``, per model
    where any: ``SFT 2, CogPO 1``; ``0`` when none). Without details every cell is a number."""
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
    if with_ci if details is None else details:
        protocols: dict[str, list[str]] = {bench_label(b): [] for b in benches}
        cut: dict[str, list[str]] = {bench_label(b): [] for b in benches}
        for m in models:
            for r in rows:
                if r["model"] != m:
                    continue
                label = bench_label(r["benchmark"])
                if r.get("protocol") and r["protocol"] not in protocols[label]:
                    protocols[label].append(r["protocol"])
                if r.get("truncated_correct"):
                    cut[label].append(f"{model_label(m)} {r['truncated_correct']}")
        known = {bench_label(r["benchmark"]) for r in rows if r.get("truncated_correct") is not None}
        df["protocol"] = ["; ".join(protocols[b]) or "not recorded" for b in df.index]
        df["truncated correct"] = [", ".join(cut[b]) or ("0" if b in known else "not recorded") for b in df.index]
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
