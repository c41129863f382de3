"""Parameters of the CogPO preference pairs (paper section 3.3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PairsConfig:
    """Which mini-task pairs to build and the beta each gap carries."""

    beta_small: float = 0.1
    """Beta of small-gap pairs (r*, r_orig): both correct, different suitability."""
    beta_medium: float = 0.2
    """Beta of medium-gap pairs (r_orig, r~): correct but unsuitable vs incorrect."""
    beta_large: float = 0.5
    """Beta of large-gap pairs (r_med, r~_med) and (r*, r~): suitable and correct vs incorrect."""
    gaps: tuple[str, ...] = ("small", "medium", "large")
    """Mini-tasks to include."""
    max_length: int = 1024
    """Prompt + response token budget of one side of a pair (the training max length)."""
    overlength: Literal["drop", "truncate"] = "truncate"
    """Pairs longer than ``max_length``: ``drop`` them or ``truncate`` the responses (both reported)."""
