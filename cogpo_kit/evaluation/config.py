"""Parameters of the evaluation stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cogpo_kit.engines.config import EngineConfig, SamplingConfig


@dataclass(frozen=True)
class EvalParams:
    """Stage 06: generate and grade on benchmarks, per model."""

    benchmarks: tuple[str, ...] = ("gsm8k", "math500")
    """Benchmark names from the registry (``cogpo-kit eval --list``)."""
    limit: Optional[int] = None
    """Problems per benchmark (first N after a fixed-seed shuffle; ``None``: all)."""
    limits: dict[str, int] = field(default_factory=dict)
    """Per-benchmark ``limit`` overriding the one above (e.g. ``{gsm8k: 100, math500: 50}``)."""
    models: tuple[str, ...] = ("zero_shot", "sft", "crv_sft", "cogpo", "dpo", "beta_dpo", "simpo")
    """Which models to evaluate: ``zero_shot`` (the student as is), SFT variants, preference methods,
    or any model spec."""
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(engine="transformers"))
    """Engine generating the answers (the model is filled in per evaluated model)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0, top_k=0, max_tokens=512))
    """Sampling (greedy by default; pass@k needs n > 1 and temperature > 0)."""
    n_samples: int = 1
    """Samples per problem (pass@1 is averaged over them)."""
    pass_k: tuple[int, ...] = (1,)
    """k values of the unbiased pass@k estimator."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed for shuffles (benchmark order, GPQA choices) and the bootstrap."""
    math_timeout_s: float = 5.0
    """Time limit of one math equivalence check."""
    grader_workers: int = 0
    """Processes grading math answers in parallel (0: up to 4, one per CPU)."""
    code_timeout_s: float = 6.0
    """Wall-clock limit of one program run on one test."""
    mmlu_subjects: tuple[str, ...] = ()
    """MMLU subjects to include (empty: all)."""
    mmlu_split: str = "test"
    """MMLU split file: ``test``, ``val`` or ``dev``."""
    livecodebench_path: Optional[str] = None
    """A LiveCodeBench ``code_generation_lite`` JSONL file (public + private tests), or ``hub:<file>`` (e.g.
    ``hub:test5.jsonl``) to fetch one from the hub dataset where it is reachable; ``None``: the shipped v5
    prompts with only the sample tests parsed from each statement."""
    data_dir: Optional[str] = None
    """Folder holding the benchmark files (``None``: the project's ``data/``)."""
    templates: dict[str, str] = field(default_factory=dict)
    """Per-benchmark prompt template overriding the registry's (``{question}``, ``{choices}`` are filled in)."""
    system_prompt: Optional[str] = None
    """System message sent before every prompt (``None``: none; the model's chat template still applies)."""
    choice_extractor: str = "default"
    """Letter extractor that gives the multiple-choice score (``strict``, ``leading``, ``flexible``, ``default``);
    all of them are reported side by side."""
    code_memory_mb: int = 1024
    """Address-space limit of one program run (MiB)."""
    compare_to: Optional[str] = "sft"
    """Reference model of the paired comparisons in ``comparison.csv`` (``None`` or absent: the first model)."""
    include_beta_sweep: bool = True
    """Also evaluate the ``cogpo_x<f>`` models of ``preference.beta_sweep`` when ``cogpo`` is evaluated."""
