"""Parameters of the CoT dataset a run starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass(frozen=True)
class DataParams:
    """Where the CoT training data comes from and how bad rows are handled."""

    source: str = "gsm8k_train"
    """A loader name (``gsm8k_train``, ``limo``, ``bespoke_stratos``, ``openthoughts``, ``sky_t1``),
    or ``file`` to read ``path`` (JSONL, JSON or parquet)."""
    path: Optional[str] = None
    """File to read when ``source`` is ``file`` (or a local copy of a hub dataset). JSONL, a JSON array,
    parquet, or a folder of such files (a hub snapshot's parquet shards). For ``gsm8k_train`` and
    ``limo`` it replaces the shipped file (same format)."""
    fields: dict[str, str] = field(default_factory=dict)
    """``file`` sources: map our fields to the file's, e.g. ``{problem: question, reasoning: cot}``."""
    limit: Optional[int] = None
    """Keep the first N valid rows after shuffling (``None``: all)."""
    shuffle: bool = True
    """Shuffle with ``seed`` before ``limit``."""
    seed: int = 0
    """Seed of the shuffle."""
    strip_format_instructions: bool = True
    """Remove the dataset's own answer-format instruction from each problem of a conversations source
    (``bespoke_stratos``, ``openthoughts``, ``sky_t1``; ``data check`` on a file in that format): every
    Bespoke-Stratos math problem starts ``Return your final response within \\boxed{}.``, every code
    problem ``Generate an executable Python function ...``. Only the known texts at the very start or
    end of the problem go (:data:`cogpo_kit.data.parsers.ANSWER_FORMAT_INSTRUCTIONS`); the removed text
    is kept in the record's ``meta["format_instructions"]`` and counted in the load report. ``false``:
    problems as the dataset has them."""
    on_invalid: Literal["error", "reject"] = "error"
    """Rows with missing/empty fields, wrong types or duplicate ids: ``error`` stops with the file, line
    and field named; ``reject`` writes them to ``rejects.jsonl`` with the reason and counts them."""
