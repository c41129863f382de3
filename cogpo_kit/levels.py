"""Difficulty levels and gap types: the names every stage, table and figure uses.

The Critic rates a CoT ``easy``, ``medium`` or ``hard`` for the student (paper section 3.2); CogPO's
preference pairs come in three gap types, ``small``, ``medium`` and ``large`` (section 3.3.2), each
with its own beta. Every module that needs these names imports them from here.
"""

from __future__ import annotations

LEVELS: tuple[str, ...] = ("easy", "medium", "hard")
"""CoT difficulty levels for the student, in order."""

GAPS: tuple[str, ...] = ("small", "medium", "large")
"""Gap types of preference pairs, in order of growing beta."""

SHORT_LEVEL: dict[str, str] = {"easy": "easy", "hard": "hard", "medium": "med"}
"""Level -> the short form used in response kinds (``r_med``, ``r~_med``, ``r_easy*``, ...)."""
