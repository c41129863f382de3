"""The normalized CoT record every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

REQUIRED_FIELDS = ("id", "problem", "answer", "reasoning")


@dataclass(frozen=True)
class CoTRecord:
    """One training example: a problem, its gold answer and a reasoning process reaching it."""

    id: str
    """Unique within the dataset."""
    problem: str
    """The question x."""
    answer: str
    """The gold final answer y (no reasoning)."""
    reasoning: str
    """The original reasoning process r_orig from the large model."""
    source: str = ""
    """Dataset the record came from."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source fields kept as they were (level, subject, original solution, ...)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CoTRecord":
        return cls(id=str(d["id"]), problem=d["problem"], answer=d["answer"], reasoning=d["reasoning"],
                   source=d.get("source", ""), meta=dict(d.get("meta") or {}))
