"""Parameters of the evaluation stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from cogpo_kit.engines.config import EngineParams, SamplingParams


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
    engine: EngineParams = field(default_factory=lambda: EngineParams(engine="transformers"))
    """Engine generating the answers (the model is filled in per evaluated model)."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_tokens=512))
    """Sampling (greedy by default): the token budget (``max_tokens``), stop strings, seed, and — without a
    ``protocol`` — temperature, top-p, top-k. Long reasoners need a large budget: the paper's setting is
    16384 new tokens, SkyThought's 32768."""
    protocol: Optional[str] = None
    """Decoding protocol recorded with every number: ``greedy`` (temperature 0, one sample; the paper's
    1/30 granularity on AIME) or ``r1`` (temperature 0.6, top-p 0.95, ``n_samples`` samples, default 16,
    pass@1 averaged); ``null``: ``sampling`` as given (named ``greedy`` at temperature 0, else ``custom``).
    Several samples at temperature 0 are refused."""
    n_samples: Optional[int] = None
    """Samples per problem (pass@1 is averaged over them); ``null``: the protocol's (greedy 1, r1 16; 1
    without a protocol)."""
    pass_k: tuple[int, ...] = (1,)
    """k values of the unbiased pass@k estimator."""
    truncated_as_wrong: bool = False
    """Count an answer whose output was cut at ``max_tokens`` (finish reason ``length``) as wrong, even when
    the text so far holds the right answer. Either way every table counts the correct answers that came
    from cut outputs (``truncated_correct``)."""
    bootstrap: int = 10000
    """Bootstrap resamples for the 95% confidence intervals and paired tests."""
    multiple_comparisons: Literal["holm", "none"] = "holm"
    """Correction of the paired tests' p-values when several models are compared with the reference on the
    same benchmark: Holm's step-down (family-wise error 5%), or none."""
    expect_sizes: Optional[Literal["paper"]] = None
    """``paper``: every benchmark must have its size in the paper's Table 7 (no ``limit``, no subset, the
    right release); a documented departure (OlympiadBench: 675 shipped vs 674) is a note. ``null``: no check."""
    seed: int = 0
    """Seed for shuffles (benchmark order, GPQA choices) and the bootstrap."""
    math_timeout_s: float = 5.0
    """Time limit of one math equivalence check."""
    grader_workers: int = 0
    """Processes grading math answers in parallel (0: up to 4, one per CPU)."""
    code_timeout_s: float = 6.0
    """Time limit of one program on one test (LiveCodeBench's default: 6 s; 1 s of wall clock is added for the
    interpreter start)."""
    mmlu_subjects: tuple[str, ...] = ()
    """MMLU subjects to include (empty: all)."""
    mmlu_split: str = "test"
    """MMLU split file: ``test``, ``val`` or ``dev``."""
    livecodebench_path: Optional[str] = None
    """Benchmark ``livecodebench``: a folder holding the ``code_generation_lite`` release shards (``test.jsonl``,
    ``test2.jsonl``, ...: public and hidden tests), one such JSONL file, ``hub`` (download the release's
    shards where the hub is reachable) or ``hub:<file>``. Required by ``livecodebench``; the shipped v5
    statements with their sample tests only are the separate benchmark ``livecodebench_public``."""
    livecodebench_release: Optional[str] = "release_v2"
    """Release whose shards are read and joined, its size checked (``release_v1`` 400, ``release_v2`` 511 —
    the paper's "LiveCodeBench V2", May 2023 – May 2024 — ``release_v3`` 612, ... ``release_v6`` 1055; ``vN`` /
    ``vA_vB``: release steps); ``null``: every shard in the folder, unchecked."""
    olympiadbench_path: Optional[str] = None
    """A JSONL copy of another OlympiadBench version with the same fields (e.g. the Hugging Face split
    ``Hothan/OlympiadBench`` ``OE_TO_maths_en_COMP``, the paper's 674); ``null``: the shipped file (675)."""
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Problem ids to leave out, per benchmark (``{olympiadbench: [olympiadbench-2319]}``); each must exist."""
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
    code_allow_unisolated: bool = False
    """Run generated programs even where the code sandbox can only apply resource limits (its ``rlimits``
    mode: not root, and user namespaces switched off), so that nothing isolates the network or the files and
    the programs run with your uid. ``false``: an evaluation with a code benchmark stops before generating
    anything and says what is missing."""
    compare_to: Optional[str] = "sft"
    """Reference model of the paired comparisons in ``comparison.csv`` (``None`` or absent: the first model)."""
    include_beta_sweep: bool = True
    """Also evaluate the ``cogpo_x<f>`` models of ``preference.beta_sweep`` when ``cogpo`` is evaluated."""
    stop_at_final_answer: bool = False
    """End a completion of a benchmark graded on its boxed answer (math, multiple choice) once it has written
    the line holding its boxed answer and started another line (the text is cut at the end of that line);
    code benchmarks always run to the end of turn or ``max_tokens``. ``false`` is the paper's (generation
    runs to the end of turn or the budget). Served by the transformers engine; other engines ignore it
    (a note in the manifest says so)."""
    batch_models: bool = False
    """Models that share one base (the student and the LoRA adapters trained on it, chains of adapters included)
    generate together: the base is loaded once, each adapter chain is a stacked low-rank update on it, and the
    rows of all these models share each batch (``engine.batch_size`` rows per model). Transformers engine only;
    each model's answers are those of its own engine up to rounding (its update is added to the base's output
    instead of being merged into bfloat16 weights). ``false`` (default): one engine per model, each model merged.
    Opt-in: 2.8x faster on the demo's evaluation, but the extracted answers agreed with the one-engine path on
    only 38% of problems there (verdicts on 98%), below the 95% the kit asks of a faster path that changes
    outputs (``benchmarks/results/evaluate.md``)."""
    reuse: bool = True
    """Serve a model's answers on a benchmark from ``<output_dir>/cache/evaluations`` when the same model
    content (weights fingerprint, not folder) was evaluated before with the same prompts, decoding and
    output-changing engine settings: no engine is built for it, and it is graded again. ``false``: every
    model generates again (the response cache may still serve its samples)."""

    def __post_init__(self) -> None:
        self.decoding()  # refuses an unknown protocol and several samples at temperature 0
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.code_timeout_s <= 0:
            raise ValueError(f"code_timeout_s must be > 0, got {self.code_timeout_s}")
        if self.livecodebench_release is not None:
            from cogpo_kit.evaluation.livecodebench import release_shards

            release_shards(self.livecodebench_release)

    def decoding(self):
        """The :class:`~cogpo_kit.evaluation.protocol.Decoding` of ``protocol``, ``sampling``, ``n_samples``."""
        from cogpo_kit.evaluation.protocol import resolve_decoding

        return resolve_decoding(self.protocol, self.sampling, self.n_samples)
