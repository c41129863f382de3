"""The CogPO preference pairs of paper section 3.3.2, built from the CRV artifacts.

Three kinds of reasoning per problem x with gold answer y:

- suitable and correct: r_med (verified medium), r_easy* / r_hard* (kept rewrites);
- correct but unsuitable: r_easy / r_hard (the original easy / hard CoTs);
- incorrect: r~ (the corrupting Rethinker's CoT; checked as ``crv.incorrect_check`` says in the rethink
  stage, which is the one place that decides whether an incorrect CoT is usable).

Mini-tasks (chosen, rejected) and their beta:

- small gap  (beta_S): (r_easy*, r_easy), (r_hard*, r_hard);
- medium gap (beta_M): (r_easy, r~_easy), (r_hard, r~_hard);
- large gap  (beta_L): (r_med, r~_med), (r_easy*, r~_easy), (r_hard*, r~_hard).

Every response is shaped by :func:`cogpo_kit.answers.response.format_response`, the one writer of
training responses: correct responses end with the gold answer, an incorrect one with the answer it
reaches itself, all with the same final line, so the two sides of a pair differ only in reasoning.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from cogpo_kit.answers.response import answer_kind, format_response, student_messages
from cogpo_kit.levels import GAPS, SHORT_LEVEL
from cogpo_kit.pairs.config import PairsParams
from cogpo_kit.pairs.inputs import CRVArtifacts


@dataclass(frozen=True)
class Response:
    """One side of a pair: the assistant text, its kind (e.g. ``r_easy*``) and the answer it ends with."""

    text: str
    kind: str
    answer: Optional[str]


def incorrect_response(row: dict, gold: str, level: str) -> tuple[Optional[Response], Optional[str]]:
    """The incorrect CoT of one example as a response, or ``(None, reason)`` when it cannot be used.

    It ends with the answer it reaches (``reached_answer``, as the rethink stage recorded it), never
    with the gold answer unless the reasoning itself reaches it.
    """
    text = (row.get("reasoning") or "").strip()
    if not text:
        return None, "incorrect CoT is empty"
    reached = row.get("reached_answer")
    reached = str(reached).strip() if reached is not None and str(reached).strip() else None
    resp = format_response(text, reached, answer_kind(gold))
    return Response(resp, f"r~_{SHORT_LEVEL[level]}", reached), None


def build_pairs(art: CRVArtifacts, config: PairsParams) -> tuple[list[dict], dict]:
    """All pairs of the configured gaps, in input order, and a report of counts and skip reasons."""
    pairs: list[dict] = []
    skipped: Counter = Counter()
    levels: Counter = Counter()
    mismatch: Counter = Counter()
    wanted = set(config.gaps)

    def add(sid: str, level: str, prompt: list, gold: str, gap: str, chosen: Response, rejected: Response) -> None:
        if gap not in wanted:
            return
        pairs.append({
            "id": f"{sid}|{gap}|{chosen.kind}>{rejected.kind}",
            "source_id": sid,
            "level": level,
            "gap": gap,
            "beta": config.beta(gap),
            "prompt": prompt,
            "chosen": chosen.text,
            "rejected": rejected.text,
            "chosen_kind": chosen.kind,
            "rejected_kind": rejected.kind,
            "chosen_answer": chosen.answer,
            "rejected_answer": rejected.answer,
            "gold": gold,
        })

    for sid, rec in art.records.items():
        level = art.levels.get(sid)
        if level is None:
            skipped["no Critic level"] += 1
            continue
        levels[level] += 1
        gold = str(rec["answer"]).strip()
        kind = answer_kind(gold)
        prompt = student_messages(rec["problem"], config.prompt_template, kind)
        short = SHORT_LEVEL[level]
        r_tilde: Optional[Response] = None
        inc = art.incorrect.get(sid)
        if inc is None:
            skipped["no incorrect CoT"] += 1
        else:
            r_tilde, why = incorrect_response(inc, gold, level)
            if why:
                skipped[why] += 1
        sft_row = art.sft.get(sid)
        if level == "medium":
            if sft_row is None or sft_row["origin"] != "medium":
                skipped["medium CoT not in D_SFT* (not verified)"] += 1
                continue
            r_med = Response(format_response(sft_row["reasoning"], gold, kind), "r_med", gold)
            if r_tilde is not None:
                add(sid, level, prompt, gold, "large", r_med, r_tilde)
            continue
        r_orig = Response(format_response(rec["reasoning"], gold, kind), f"r_{short}", gold)
        kept = art.kept_rewrites.get(sid)
        r_star = Response(format_response(kept["rewrite"], gold, kind), f"r_{short}*", gold) if kept else None
        in_sft = sft_row is not None and sft_row["origin"] == f"{level}*"
        if r_star is not None and not in_sft:
            mismatch["kept rewrite missing from D_SFT*"] += 1
        if r_star is None and in_sft:
            mismatch["D_SFT* rewrite without a kept attempt in rewrites.jsonl"] += 1
        if r_star is None:
            skipped[f"{level} CoT has no kept rewrite"] += 1
        else:
            add(sid, level, prompt, gold, "small", r_star, r_orig)
        if r_tilde is not None:
            add(sid, level, prompt, gold, "medium", r_orig, r_tilde)
            if r_star is not None:
                add(sid, level, prompt, gold, "large", r_star, r_tilde)

    per_gap = Counter(p["gap"] for p in pairs)
    per_kind = Counter(f"{p['chosen_kind']} > {p['rejected_kind']}" for p in pairs)
    report = {
        "examples": len(art.records),
        "levels": dict(levels),
        "pairs_built": len(pairs),
        "pairs_per_gap": {g: per_gap.get(g, 0) for g in GAPS if g in wanted},
        "pairs_per_kind": dict(sorted(per_kind.items())),
        "skipped": dict(skipped),
        "inconsistencies": dict(mismatch),
    }
    return pairs, report
