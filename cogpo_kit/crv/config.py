"""Parameters of the CRV agents (Critic, Rethinker, Verifier) and of the CRV algorithm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from cogpo_kit.engines.config import EngineParams, SamplingParams


@dataclass(frozen=True)
class AgentParams:
    """One agent: its engine, model, sampling and prompt."""

    engine: EngineParams = field(default_factory=EngineParams)
    """Engine and model serving this agent."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Sampling settings (paper: T=0.7, top_p=0.9, top_k=50)."""
    system_prompt: Optional[str] = None
    """Override of the paper's Table 13 prompt for this agent (``None``: the paper's)."""
    constrained: bool = True
    """Label agents: restrict the answer to the label set with the engine's constrained decoding."""
    max_reasks: int = 2
    """Label agents: re-ask an unparseable answer up to this many times (counted)."""
    user_template: Optional[str] = None
    """Override of the user message (a format string with ``{problem}``, ``{answer}``, ``{reasoning}``;
    ``None``: the kit's default for this agent)."""

    def __post_init__(self) -> None:
        if self.max_reasks < 0:
            raise ValueError(f"max_reasks must be >= 0, got {self.max_reasks}")
        if self.user_template is not None:
            from cogpo_kit.crv.prompts import check_template

            check_template(self.user_template, role="agent")


@dataclass(frozen=True)
class CRVParams:
    """The Critique-Rethink-Verify algorithm (paper section 3.2)."""

    critic: AgentParams = field(default_factory=lambda: AgentParams(sampling=SamplingParams(max_tokens=8)))
    """The Critic: rates each CoT easy / medium / hard for the student."""
    rethinker: AgentParams = field(default_factory=AgentParams)
    """The Rethinker: expands easy CoTs (and serves ``simplifier``/``corrupter`` when they are unset)."""
    simplifier: Optional[AgentParams] = None
    """The Rethinker simplifying hard CoTs (``None``: ``rethinker``'s engine and sampling with the
    paper's simplifying prompt)."""
    corrupter: Optional[AgentParams] = None
    """The Rethinker writing incorrect CoTs (``None``: ``rethinker``'s engine and sampling with the
    paper's corrupting prompt)."""
    verifier: AgentParams = field(default_factory=lambda: AgentParams(sampling=SamplingParams(max_tokens=8)))
    """The Verifier (``judge`` mode) or the student (``student_solve`` mode)."""
    votes: int = 3
    """Critic votes per CoT; majority wins."""
    early_exit: bool = True
    """Stop asking once a label has a majority (two agreeing votes of three): same label, fewer calls."""
    stream: bool = True
    """Where one engine that takes requests while it runs (llama.cpp) serves every agent: each example
    goes on as soon as its calls are answered, its next calls joining the running batch. ``false``, or
    other engines: rounds, each sending all pending calls of all examples at once."""
    max_attempts: int = 3
    """Rewrite-verify-recritique attempts before an easy/hard example is discarded."""
    verifier_mode: Literal["judge", "student_solve"] = "judge"
    """``judge``: the paper's Verifier prompt; ``student_solve``: the student follows the CoT and its
    final answer is graded against the gold answer (paper Appendix A.5)."""
    verify_medium: bool = True
    """Send medium CoTs to the Verifier too (paper 3.2.3)."""
    ablation: Literal["C", "CR", "CRV"] = "CRV"
    """Paper Table 6: ``C`` keeps the Critic's medium CoTs only; ``CR`` keeps the medium CoTs and the first
    rewrite of each easy/hard CoT, neither verified nor re-rated; ``CRV`` is the full system."""
    incorrect_cots: bool = True
    """Write an incorrect CoT for every example (the rejected side of medium- and large-gap pairs); ``false``
    where no preference training follows (the paper's SFT-only studies, Tables 4-6), saving one Rethinker
    call or more per example."""
    incorrect_max_attempts: int = 3
    """Attempts at an incorrect CoT: an attempt that fails (an error, an empty or truncated output, or the
    ``incorrect_check``) is asked again with the next sample index."""
    incorrect_check: Literal["none", "answer_differs", "verifier_no"] = "none"
    """What an incorrect CoT must pass. ``none`` (the paper: the Table 13 corrupting prompt, nothing checked;
    its own examples in Tables 11-12 still reach the gold answer); ``answer_differs``: its final answer is
    not the gold one (code: it fails the row's tests; unchecked without tests); ``verifier_no``: that, and
    the Verifier says NO."""
    equal_level_subsets: Optional[int] = None
    """Paper Table 5: also write equal-size easy/medium/hard SFT sets of this many rows each."""
    check_final_answer: bool = False
    """``CRV``: a rewrite must reach the gold answer before it goes to the Verifier (short answers: the
    grader on the answer it reaches; code: the row's tests where it has them, else skipped and counted).
    The paper leaves this to the Verifier alone (``false``)."""
    free_label_probe: int = 0
    """Measure free decoding: the first N CoTs are also rated by the Critic (all votes) and judged by the
    Verifier without constrained decoding; only the share of invalid labels is reported, the labels
    are not used."""

    def __post_init__(self) -> None:
        for name in ("votes", "max_attempts", "incorrect_max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.free_label_probe < 0:
            raise ValueError(f"free_label_probe must be >= 0, got {self.free_label_probe}")
        if self.equal_level_subsets is not None and self.equal_level_subsets < 1:
            raise ValueError(f"equal_level_subsets must be >= 1 or null, got {self.equal_level_subsets}")
