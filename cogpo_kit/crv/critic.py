"""Asking a label agent (Critic, Verifier) for a majority label, with early exit and re-asks.

Votes are numbered slots ``0 .. votes-1``; try ``k`` of slot ``i`` is the engine's sample index
``i + k * votes``. A slot's outcome therefore never depends on which other slots were asked, and
the early-exit label is exactly the label all votes would give on the same samples:

* a label needs a strict majority, ``votes // 2 + 1`` agreeing slots;
* the first round asks that many slots; later rounds ask only as many more as a majority still
  needs, and stop as soon as a label has its majority or none can reach it any more;
* an output that is no label (free text without one, empty, an error) is re-asked with the next
  sample index of its slot, up to ``max_reasks`` times; a slot with no label after that is invalid.

No majority (e.g. easy/medium/hard) gives the label ``None`` with ``reason="no_majority"``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

from cogpo_kit.crv.agents import Role
from cogpo_kit.crv.parse import completion_label
from cogpo_kit.crv.scheduler import Call, Workflow


@dataclass
class LabelResult:
    """The outcome of one label question."""

    label: Optional[str]
    """The majority label, or ``None``."""
    votes: list[Optional[str]] = field(default_factory=list)
    """Label of each slot asked, in slot order (``None``: no valid label after the re-asks)."""
    raw: list[list[str]] = field(default_factory=list)
    """Raw output of every try of every slot asked."""
    asked: int = 0
    """Samples requested (tries of all slots)."""
    invalid: int = 0
    """Tries whose output was not a valid label."""
    reasks: int = 0
    """Tries that were re-asks of an invalid output."""
    skipped: int = 0
    """Vote slots never asked because the outcome was already decided (early exit)."""
    errors: int = 0
    """Tries that came back as engine errors."""
    constrained: bool = True
    """Whether the requests used constrained decoding."""
    reason: Optional[str] = None
    """Why there is no label: ``no_majority`` or ``no_valid_label``."""

    def to_dict(self) -> dict:
        return asdict(self)


def decide(labels: list[Optional[str]], votes: int) -> tuple[bool, Optional[str]]:
    """``(decided, label)`` from the labels of the slots asked so far (in a ``votes``-slot vote)."""
    need = votes // 2 + 1
    counts = Counter(x for x in labels if x is not None)
    top = max(counts.values(), default=0)
    if top >= need:
        return True, counts.most_common(1)[0][0]
    remaining = votes - len(labels)
    if top + remaining < need:
        return True, None
    return False, None


def full_vote_label(labels: list[Optional[str]]) -> Optional[str]:
    """The strict-majority label of a complete vote (reference for the early-exit equivalence)."""
    return decide(labels, len(labels))[1] if labels else None


def ask_label(role: Role, messages: tuple[dict, ...], *, votes: int = 1, early_exit: bool = True,
              free: bool = False, tag: Optional[str] = None, max_reasks: Optional[int] = None) -> Workflow:
    """Workflow: the majority label of ``votes`` samples of ``role`` on ``messages``.

    ``max_reasks`` overrides the role's re-ask limit (a measurement probe asks each sample once)."""
    reask_limit = role.max_reasks if max_reasks is None else max_reasks
    choices = role.choices
    if not choices:
        raise ValueError(f"role '{role.name}' has no label set")
    constrained = role.constrained and not free
    need = votes // 2 + 1
    tries: list[list[str]] = []          # per opened slot
    labels: list[Optional[str]] = []     # per opened slot; None while open or invalid
    open_slots: list[int] = list(range(need if early_exit else votes))
    res = LabelResult(label=None, constrained=constrained)
    while True:
        for s in open_slots:
            if s >= len(tries):
                tries.append([])
                labels.append(None)
        # first tries of consecutive new slots go out as one request of n samples
        calls: list[Call] = []
        plan: list[list[int]] = []
        fresh = [s for s in open_slots if not tries[s]]
        if fresh:
            calls.append(Call(role.name, role.request(messages, n=len(fresh), sample_offset=fresh[0], free=free,
                                                      tag=tag)))
            plan.append(fresh)
        for s in open_slots:
            if tries[s]:
                k = len(tries[s])
                calls.append(Call(role.name, role.request(messages, n=1, sample_offset=s + k * votes, free=free,
                                                          tag=tag)))
                plan.append([s])
                res.reasks += 1
        got = yield calls
        still_open: list[int] = []
        for slots, comps in zip(plan, got):
            for s, comp in zip(slots, comps):
                res.asked += 1
                tries[s].append(comp.text if comp.finish_reason != "error" else f"<error: {comp.error}>")
                res.errors += int(comp.finish_reason == "error")
                lab = completion_label(comp, choices, think_end=role.think_end)
                if lab is None:
                    res.invalid += 1
                    if len(tries[s]) <= reask_limit:
                        still_open.append(s)
                else:
                    labels[s] = lab
        if still_open:
            open_slots = sorted(still_open)
            continue
        done, label = decide(labels, votes)
        if done:
            res.label = label
            break
        counts = Counter(x for x in labels if x is not None)
        more = need - max(counts.values(), default=0)
        first = len(labels)
        open_slots = list(range(first, min(votes, first + more)))
    res.votes = labels
    res.raw = tries
    res.skipped = votes - len(labels)
    if res.label is None:
        res.reason = "no_valid_label" if all(x is None for x in labels) else "no_majority"
    return res
