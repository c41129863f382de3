"""Parameters of the report stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportParams:
    """Stage 07: the run's tables, figures and one self-contained HTML report."""

    title: str = "cogpo-kit run report"
    """Heading of the report."""
    png: bool = True
    """Also write PNG figures where the offline exporter works."""
