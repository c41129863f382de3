"""The whole run: one YAML file (or several, later wins) maps onto :class:`RunParams`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from cogpo_kit.crv.config import CRVParams
from cogpo_kit.data.config import DataParams
from cogpo_kit.engines.config import EngineParams, SamplingParams
from cogpo_kit.evaluation.config import EvalParams
from cogpo_kit.pairs.config import PairsParams
from cogpo_kit.params import loader
from cogpo_kit.params.loader import params_dict  # noqa: F401  (its home is the loader; importable from here too)
from cogpo_kit.training.config import PreferenceParams, SFTParams
from cogpo_kit.viz.config import ReportParams


@dataclass(frozen=True)
class RunSection:
    """Identity and location of the run."""

    run_id: str = "demo"
    """Folder name under ``output_dir``: artifacts go to ``<output_dir>/<run_id>/<NN_stage>/``."""
    output_dir: str = "outputs"
    """Root folder of all runs (relative paths are taken from the current directory)."""
    seed: int = 0
    """Global seed (stages derive theirs from it unless they set their own)."""
    description: str = ""
    """Free text shown in the report."""


@dataclass(frozen=True)
class StudentSection:
    """The small model being taught, and how it generates when a stage needs its own outputs."""

    model: str = "embedded:smollm2-135m-instruct"
    """Student model spec (zero-shot baseline and SFT starting point)."""
    engine: EngineParams = field(default_factory=lambda: EngineParams(engine="transformers"))
    """Engine for the student's own generations (``student_solve`` verification)."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_tokens=512))
    """Student sampling."""


@dataclass(frozen=True)
class RunParams:
    """Every parameter of one run, grouped by stage."""

    run: RunSection = field(default_factory=RunSection)
    """Run identity and output location."""
    data: DataParams = field(default_factory=DataParams)
    """The CoT dataset."""
    student: StudentSection = field(default_factory=StudentSection)
    """The student model."""
    crv: CRVParams = field(default_factory=CRVParams)
    """Stages 01-02: Critic, Rethinker, Verifier."""
    pairs: PairsParams = field(default_factory=PairsParams)
    """Stage 03: CogPO pairs."""
    sft: SFTParams = field(default_factory=SFTParams)
    """Stage 04: SFT."""
    preference: PreferenceParams = field(default_factory=PreferenceParams)
    """Stage 05: CogPO and baselines."""
    eval: EvalParams = field(default_factory=EvalParams)
    """Stage 06: evaluation."""
    report: ReportParams = field(default_factory=ReportParams)
    """Stage 07: report."""


def load_params(paths: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = ()) -> RunParams:
    """Load a run's parameters from YAML files and ``section.key=value`` overrides."""
    return loader.load(RunParams, paths, overrides)
