"""Parameters of the CogPO preference pairs (paper section 3.3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from cogpo_kit.answers.response import PROMPT_TEMPLATE
from cogpo_kit.levels import GAPS


@dataclass(frozen=True)
class PairsParams:
    """Which mini-task pairs to build and the beta each gap carries."""

    beta_small: float = 0.1
    """Beta of small-gap pairs (r*, r_orig): both correct, different suitability."""
    beta_medium: float = 0.2
    """Beta of medium-gap pairs (r_orig, r~): correct but unsuitable vs incorrect."""
    beta_large: float = 0.5
    """Beta of large-gap pairs (r_med, r~_med) and (r*, r~): suitable and correct vs incorrect."""
    gaps: tuple[str, ...] = GAPS
    """Mini-tasks to include."""
    max_length: int = 1024
    """Prompt + response token budget of one side of a pair (the training max length)."""
    overlength: Literal["drop", "truncate"] = "truncate"
    """Pairs longer than ``max_length``: ``drop`` them or ``truncate`` the responses (both reported)."""
    prompt_template: str = PROMPT_TEMPLATE
    """User turn of every SFT row and pair (``{problem}`` is replaced); evaluation should prompt the same way."""
    tokenizer: Optional[str] = None
    """Model spec whose tokenizer and chat template measure lengths (``None``: ``student.model``)."""

    def __post_init__(self) -> None:
        for name in ("beta_small", "beta_medium", "beta_large"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        unknown = [g for g in self.gaps if g not in GAPS]
        if unknown:
            raise ValueError(f"gaps: unknown gap {unknown[0]!r} (known: {', '.join(GAPS)})")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the placeholder {problem}")

    def beta(self, gap: str) -> float:
        """The beta of a gap type."""
        return {"small": self.beta_small, "medium": self.beta_medium, "large": self.beta_large}[gap]
