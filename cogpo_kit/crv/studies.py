"""The paper's studies built on the Critic.

* :func:`equal_level_subsets` (Table 5): equal-size SFT sets of the original CoTs the Critic rated
  easy, medium and hard.
* :func:`rate_models` (Table 1): the Critic's majority rating of CoTs written by several models,
  tabulated per model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

from cogpo_kit.answers.response import answer_kind, format_response
from cogpo_kit.crv.agents import Agents
from cogpo_kit.crv.critic import ask_label
from cogpo_kit.crv.funnel import LEVELS, label_quality
from cogpo_kit.crv.scheduler import Scheduler
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.io import stable_hash


def equal_level_subsets(records: Sequence[CoTRecord], levels: dict[str, Optional[str]], size: int,
                        *, seed: int = 0) -> tuple[dict[str, list[dict]], list[str]]:
    """``({level: sft rows}, notes)``: ``size`` rows per level (fewer, equal across levels, when a level
    has fewer CoTs; the shortfall is named in ``notes``). Rows are picked by a seeded hash order."""
    pools: dict[str, list[CoTRecord]] = {k: [] for k in LEVELS}
    for rec in records:
        lv = levels.get(rec.id)
        if lv in pools:
            pools[lv].append(rec)
    n = min([size] + [len(p) for p in pools.values()])
    notes = []
    if n < size:
        have = ", ".join(f"{k} {len(p)}" for k, p in pools.items())
        notes.append(f"equal-size level subsets hold {n} rows each, not {size}: the Critic rated {have}.")
    position = {r.id: i for i, r in enumerate(records)}
    out = {}
    for lv, pool in pools.items():
        chosen = sorted(pool, key=lambda r: stable_hash([seed, r.id]))[:n]
        chosen.sort(key=lambda r: position[r.id])
        out[lv] = [{"id": r.id, "problem": r.problem, "answer": r.answer, "reasoning": r.reasoning,
                    "response": format_response(r.reasoning, r.answer, answer_kind(r.answer)), "origin": lv, "attempt": 0, "level": lv}
                   for r in chosen]
    return out, notes


@dataclass(frozen=True)
class ModelCoT:
    """A CoT written by one model for one problem."""

    model: str
    problem: str
    cot: str
    answer: str = ""


def rate_models(items: Iterable[Union[ModelCoT, Sequence[Any], dict]], agents: Agents, *, votes: int = 3,
                early_exit: bool = True, logger: Optional[logging.Logger] = None) -> dict:
    """Critic ratings of each model's CoTs (paper Table 1).

    ``items``: :class:`ModelCoT`, ``(model, problem, cot[, answer])`` tuples or dicts with those keys.
    Returns ``{"rows": [{model, problem, level, votes, raw}], "table": {model: {easy, medium, hard, none}},
    "labels": invalid-label shares, "markdown": the table}``.
    """
    cots: list[ModelCoT] = []
    for i, it in enumerate(items):
        if isinstance(it, ModelCoT):
            cots.append(it)
        elif isinstance(it, dict):
            try:
                cots.append(ModelCoT(model=str(it["model"]), problem=it["problem"], cot=it["cot"],
                                     answer=str(it.get("answer", ""))))
            except KeyError as exc:
                raise ValueError(f"item {i}: missing key {exc} (need model, problem, cot)") from None
        else:
            if len(it) not in (3, 4):
                raise ValueError(f"item {i}: expected (model, problem, cot[, answer]), got {len(it)} fields")
            cots.append(ModelCoT(*[str(x) for x in it]))
    critic = agents.role("critic")
    jobs = [ask_label(critic, critic.messages(problem=c.problem, answer=c.answer or "(not given)",
                                              reasoning=c.cot), votes=votes, early_exit=early_exit)
            for c in cots]
    results = Scheduler(agents, logger=logger, desc="rate models").run(jobs)
    table: dict[str, dict[str, int]] = {}
    rows = []
    for c, r in zip(cots, results):
        slot = table.setdefault(c.model, {k: 0 for k in (*LEVELS, "none")})
        slot[r.label or "none"] += 1
        rows.append({"model": c.model, "problem": c.problem, "level": r.label, "votes": r.votes, "raw": r.raw})
    models = list(table)
    md = ["| level | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for k in (*LEVELS, "none"):
        md.append(f"| {k} | " + " | ".join(str(table[m][k]) for m in models) + " |")
    return {"rows": rows, "table": table, "labels": label_quality(results), "markdown": "\n".join(md)}
