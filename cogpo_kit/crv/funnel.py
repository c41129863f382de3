"""The CRV funnel: how many CoTs went where, and what it cost.

Built from the stages' results: counts per level, per attempt, discards by reason, the invalid-label
share (constrained vs free decoding), calls and tokens per agent, cache hits, and the calls a naive
implementation (always all votes, no cache) would have made; for agents served over HTTP, what each
server did (requests, tokens, errors, time).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional, Sequence

from cogpo_kit.crv.agents import Agents
from cogpo_kit.crv.critic import LabelResult
from cogpo_kit.levels import LEVELS


def _share(part: int, whole: int) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def label_quality(results: Iterable[LabelResult]) -> dict:
    """Share of label outputs that were no valid label, split by constrained and free decoding."""
    acc = {"constrained": Counter(), "free": Counter()}
    for r in results:
        c = acc["constrained" if r.constrained else "free"]
        c["outputs"] += r.asked
        c["invalid"] += r.invalid
        c["reasks"] += r.reasks
        c["errors"] += r.errors
        c["questions"] += 1
        c["unlabeled"] += int(r.label is None)
    out = {}
    for mode, c in acc.items():
        if c["outputs"]:
            out[mode] = {**dict(c), "invalid_share": _share(c["invalid"], c["outputs"])}
    return out


def early_exit_stats(results: Iterable[LabelResult], votes: int) -> dict:
    """Critic samples asked vs the naive ``votes`` per slot; the share early exit saved."""
    asked = skipped = questions = 0
    for r in results:
        questions += 1
        asked += r.asked
        skipped += r.skipped
    return {"questions": questions, "samples_asked": asked, "votes_skipped": skipped,
            "naive_samples": asked + skipped, "saved_share": _share(skipped, asked + skipped),
            "votes_per_question": votes}


PROBE_SUFFIX = "_free"
"""Tags of the free-decoding measurement probes (``critic_free``, ``verifier_free``)."""


def call_stats(agents: Agents, n_examples: int, *, skipped_votes: int) -> dict:
    """Calls per tag from the kit's counters and the engines' ``stats_by_tag``, the per-server counts of
    engines over several servers (``fleet``), and the naive count.

    ``samples``/``paid``/``naive`` count the algorithm's calls; the free-decoding probes (measurement
    only) are counted apart in ``probe_samples``."""
    by_tag = agents.counter_dict()
    algo = {t: c for t, c in by_tag.items() if not t.endswith(PROBE_SUFFIX)}
    samples = sum(c["samples"] for c in algo.values())
    cached = sum(c["cached"] for c in algo.values())
    naive = samples + skipped_votes
    return {
        "by_tag": by_tag,
        "engine_stats": agents.engine_stats(),
        "fleet": agents.fleet_stats(),
        "samples": samples,
        "cache_hits": cached,
        "paid": samples - cached,
        "naive": naive,
        "per_example": _share(samples, n_examples),
        "naive_per_example": _share(naive, n_examples),
        "probe_samples": sum(c["samples"] for t, c in by_tag.items() if t.endswith(PROBE_SUFFIX)),
        "probe_paid": sum(c["samples"] - c["cached"] for t, c in by_tag.items() if t.endswith(PROBE_SUFFIX)),
        "prompt_tokens": sum(c["prompt_tokens"] for c in by_tag.values()),
        "completion_tokens": sum(c["completion_tokens"] for c in by_tag.values()),
    }


def level_counts(levels: Sequence[Optional[str]]) -> dict:
    c = Counter(x if x in LEVELS else "none" for x in levels)
    return {k: c.get(k, 0) for k in (*LEVELS, "none")}


def level_notes(levels: dict, *, what: str = "CoTs") -> list[str]:
    """Plain-language remarks on an empty or skewed level distribution."""
    notes = []
    rated = sum(levels[k] for k in LEVELS)
    total = rated + levels.get("none", 0)
    if total and levels.get("none"):
        notes.append(f"{levels['none']} of {total} {what} got no Critic label (no majority or no valid vote).")
    if not rated:
        return notes + [f"the Critic rated none of the {what}: nothing to train on."]
    if levels["medium"] == 0:
        notes.append(f"no medium {what}: D_SFT* can only hold rewrites (and no large-gap (r_med, r~_med) pairs).")
    if levels["easy"] + levels["hard"] == 0:
        notes.append(f"no easy or hard {what}: the Rethinker has nothing to rewrite (no small-gap pairs).")
    for k in LEVELS:
        if rated >= 5 and levels[k] / rated >= 0.8:
            notes.append(f"skewed ratings: the Critic rated {levels[k]} of {rated} {what} {k} "
                         f"({100 * levels[k] / rated:.0f}%).")
    return notes


def rethink_funnel(levels: dict, outcomes: Sequence[Any], incorrect: Sequence[Any]) -> dict:
    """Counts of the rethink stage (outcomes: ExampleOutcome, incorrect: IncorrectOutcome)."""
    medium = Counter()
    per_attempt: dict[str, dict[str, Counter]] = {}
    discards = Counter()
    gates: dict[str, Counter] = {"rewrite": Counter(), "incorrect": Counter()}
    kept = Counter()
    kept_by_attempt = Counter()
    for o in outcomes:
        for row in o.attempts:
            if row["kind"] == "medium":
                medium[row["outcome"]] += 1
            else:
                per_attempt.setdefault(row["kind"], {}).setdefault(str(row["attempt"]), Counter())[row["outcome"]] += 1
                if "gate" in row:
                    gates["rewrite"][row["gate"]] += 1
        if o.kept:
            kept[o.origin] += 1
            if o.origin != "medium":
                kept_by_attempt[str(o.attempt)] += 1
        else:
            discards[o.reason] += 1
    inc_found = Counter()
    inc_failed = Counter()
    inc_attempts: dict[str, Counter] = {}
    for o in incorrect:
        for row in o.attempts:
            inc_attempts.setdefault(str(row["attempt"]), Counter())[row["outcome"]] += 1
            if "gate" in row:
                gates["incorrect"][row["gate"]] += 1
        if o.found:
            inc_found[str(o.attempt)] += 1
        else:
            inc_failed[o.reason] += 1
    return {
        "examples": len(outcomes),
        "levels": levels,
        "medium": dict(medium),
        "rewrite_attempts": {k: {a: dict(c) for a, c in sorted(v.items())} for k, v in sorted(per_attempt.items())},
        "rewrites_kept_by_attempt": dict(sorted(kept_by_attempt.items())),
        "sft": {"total": sum(kept.values()), **{k: kept.get(k, 0) for k in ("medium", "easy*", "hard*")}},
        "discards": dict(sorted(discards.items())),
        "answer_gate": {k: dict(sorted(c.items())) for k, c in gates.items()},
        "incorrect": {"found": sum(inc_found.values()), "found_by_attempt": dict(sorted(inc_found.items())),
                      "failed": dict(sorted(inc_failed.items())),
                      "attempt_outcomes": {a: dict(c) for a, c in sorted(inc_attempts.items())}},
    }


def funnel_table(funnel: dict) -> str:
    """A markdown table of the funnel (for logs, notebooks and reports)."""
    lv = funnel["levels"]
    sft = funnel["sft"]
    med = funnel.get("medium", {})
    lines = ["| step | count |", "|---|---|", f"| CoTs in | {funnel['examples']} |"]
    for k in (*LEVELS, "none"):
        lines.append(f"| rated {k} | {lv.get(k, 0)} |")
    for outcome, n in sorted(med.items()):
        lines.append(f"| medium: {outcome} | {n} |")
    for kind, attempts in funnel.get("rewrite_attempts", {}).items():
        for a, outcomes in attempts.items():
            desc = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            lines.append(f"| {kind} attempt {a} | {sum(outcomes.values())} ({desc}) |")
    lines.append(f"| D_SFT* | {sft['total']} (medium {sft['medium']}, easy* {sft['easy*']}, hard* {sft['hard*']}) |")
    for reason, n in funnel.get("discards", {}).items():
        lines.append(f"| discarded: {reason} | {n} |")
    for what, outcomes in funnel.get("answer_gate", {}).items():
        for outcome, n in outcomes.items():
            lines.append(f"| answer gate ({what}): {outcome} | {n} |")
    inc = funnel["incorrect"]
    lines.append(f"| incorrect CoTs found | {inc['found']} of {funnel['examples']} |")
    for reason, n in inc.get("failed", {}).items():
        lines.append(f"| no incorrect CoT: {reason} | {n} |")
    return "\n".join(lines)
