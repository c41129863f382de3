"""What the CRV stages (01 critique, 02 rethink) will ask their agents, from the data size, and what they yield.

The per-example workflow is the one of :mod:`cogpo_kit.crv.critic` and :mod:`cogpo_kit.crv.rethink`:

- **Critic** (01): ``votes`` samples, or with ``early_exit`` a majority's worth first (2 of 3) and the rest only
  when those disagree; an invalid label is re-asked up to ``max_reasks`` times (the maximum counts them);
- **medium** CoTs: one **Verifier** sample (``verify_medium``, ablation ``CRV``); kept on YES;
- **easy / hard** CoTs (``CRV``): up to ``max_attempts`` attempts of one **Rethinker** sample (expand / simplify),
  one Verifier sample and, on YES, a Critic re-rating (votes as above); an attempt succeeds when verified and
  re-rated medium. ``CR``: one Rethinker sample, nothing checked; ``C``: nothing;
- **incorrect** CoTs (``incorrect_cots``): one corrupting Rethinker sample per example (retried up to
  ``incorrect_max_attempts`` only after a failed output), plus one Verifier sample with ``incorrect_check:
  verifier_no``;
- ``free_label_probe`` CoTs are also rated with every vote and judged once without constrained decoding.

Expected counts need the level shares (from ``01_critique/critiques.jsonl`` once it exists, else
:attr:`~cogpo_kit.planning.config.PlanSettings.level_shares`) and three stated probabilities (the first two votes
agree, the Verifier says YES, a rewrite is re-rated medium); the maximum needs none. The same probabilities give
the expected size of D_SFT* and the expected number of pairs, which the time estimate uses until stages 02 and 03
have written the real ones. Prompt tokens are the agent's prompt around the CoT (its real mean length where the
data are on this machine); completion tokens are budgets (``max_tokens``), an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cogpo_kit.planning.config import PlanSettings


@dataclass(frozen=True)
class Funnel:
    """Per-example probabilities of the CRV outcome, and where the level shares came from."""

    examples: int
    """CoTs the Critic rates."""
    shares: tuple[float, float, float]
    """Shares of easy, medium and hard CoTs (the rest got no label)."""
    keep_medium: float
    """Chance that a medium CoT is kept (verified)."""
    attempt_success: float
    """Chance that one rewrite attempt is kept (verified and re-rated medium)."""
    keep_rewrite: float
    """Chance that an easy / hard CoT ends with a kept rewrite."""
    expected_attempts: float
    """Expected rewrite attempts per easy / hard CoT."""
    incorrect: float
    """Chance that an example gets an incorrect CoT."""
    source: str
    """Where the level shares came from."""

    def sft_rows(self) -> float:
        """Expected size of D_SFT*."""
        e, m, h = self.shares
        return self.examples * (m * self.keep_medium + (e + h) * self.keep_rewrite)

    def pairs(self, gaps=("small", "medium", "large")) -> float:
        """Expected CogPO pairs (paper 3.3.2): small (r*, r_orig), medium (r_orig, r~), large (r_med, r~), (r*, r~)."""
        e, m, h = self.shares
        per = 0.0
        if "small" in gaps:
            per += (e + h) * self.keep_rewrite
        if "medium" in gaps:
            per += (e + h) * self.incorrect
        if "large" in gaps:
            per += (m * self.keep_medium + (e + h) * self.keep_rewrite) * self.incorrect
        return self.examples * per


@dataclass
class AgentLoad:
    """Samples and tokens one agent role is expected to produce over the whole data set."""

    agent: str
    """Role (``critic``, ``verifier``, ``rethinker``, ``corrupter``, ``student``)."""
    stage: str
    """``critique`` or ``rethink``."""
    model: str
    """The model serving it."""
    samples: float
    """Expected samples (completions)."""
    samples_max: float
    """At most (every vote, attempt and re-ask)."""
    prompt_tokens: Optional[float]
    """Expected prompt tokens (samples x its prompt; ``None`` where the CoT length is unknown)."""
    completion_budget: float
    """Expected samples x ``max_tokens``: an upper bound on the completion tokens of the expected samples."""

    def to_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class CRVOutlook:
    """The CRV stages' agent work and what they are expected to yield."""

    funnel: Funnel
    loads: list[AgentLoad]
    cot_tokens: Optional[float]
    """Mean tokens of a CoT (problem + answer + reasoning) the prompts carry."""
    cot_source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        f = self.funnel
        return {"examples": f.examples, "level_shares": [round(s, 4) for s in f.shares], "level_source": f.source,
                "expected_sft_rows": round(f.sft_rows(), 1), "keep_rewrite": round(f.keep_rewrite, 4),
                "cot_tokens": None if self.cot_tokens is None else round(self.cot_tokens, 1),
                "cot_source": self.cot_source, "agents": [a.to_dict() for a in self.loads], "notes": self.notes}


def critic_samples(votes: int, early_exit: bool, agree: float) -> float:
    """Expected Critic samples of one question (valid labels): a majority first, the rest when it is not reached.

    ``agree``: the chance that the first majority's worth of votes agree. Exact for three votes (the paper's: two
    first, the third when they differ); for more votes it counts every remaining vote asked, an upper side."""
    if not early_exit:
        return float(votes)
    need = votes // 2 + 1
    return need + (1.0 - agree) * (votes - need)


def make_funnel(crv, examples: int, settings: PlanSettings, levels: Optional[list[Optional[str]]] = None) -> Funnel:
    """The per-example probabilities; ``levels``: the Critic's real labels (``01_critique``), when they exist."""
    if levels:
        n = len(levels)
        shares = tuple(sum(1 for x in levels if x == lv) / n for lv in ("easy", "medium", "hard"))
        source = f"the Critic's labels of {n} CoTs (stage 01)"
    else:
        total = sum(settings.level_shares)
        shares = tuple(s / total for s in settings.level_shares)
        source = "assumed (PlanSettings.level_shares)"
    yes, medium = settings.verifier_yes, settings.rerated_medium
    if crv.ablation == "CRV":
        keep_medium = yes if crv.verify_medium else 1.0
        success = yes * medium
        attempts = sum((1 - success) ** k for k in range(crv.max_attempts))
        keep_rewrite = 1 - (1 - success) ** crv.max_attempts
    elif crv.ablation == "CR":
        keep_medium, success, attempts, keep_rewrite = 1.0, 1.0, 1.0, 1.0
    else:  # C
        keep_medium, success, attempts, keep_rewrite = 1.0, 0.0, 0.0, 0.0
    return Funnel(examples=examples, shares=shares, keep_medium=keep_medium, attempt_success=success,
                  keep_rewrite=keep_rewrite, expected_attempts=attempts,
                  incorrect=1.0 if crv.incorrect_cots else 0.0, source=source)


def _agent_model(agent, student_model: str) -> str:
    return agent.engine.model or student_model


def crv_outlook(params, settings: PlanSettings, examples: int, *, levels=None, cot_tokens: Optional[float] = None,
                cot_source: str = "unknown", prompt_overhead: Optional[dict[str, float]] = None) -> CRVOutlook:
    """Expected and maximum agent samples and tokens of stages 01 and 02 on ``examples`` CoTs.

    ``prompt_overhead``: tokens of each role's prompt around the CoT (system prompt and template), by role."""
    crv = params.crv
    f = make_funnel(crv, examples, settings, levels)
    e, m, h = f.shares
    agree = settings.vote_agreement
    reask = 1 + crv.critic.max_reasks
    c_exp = critic_samples(crv.votes, crv.early_exit, agree)
    c_max = crv.votes * reask
    v_max = 1 + crv.verifier.max_reasks
    eh = e + h
    overhead = prompt_overhead or {}
    rethinker = crv.rethinker
    corrupter = crv.corrupter or rethinker
    judge = crv.verifier_mode == "judge"
    verifier_name, verifier = ("verifier", crv.verifier) if judge else ("student", params.student)
    verifier_model = _agent_model(crv.verifier, params.student.model) if judge else params.student.model

    rows: list[tuple[str, str, str, float, float, str, float]] = []  # agent, stage, model, exp, max, role, max_tokens
    critic_model = _agent_model(crv.critic, params.student.model)
    probe = min(crv.free_label_probe, examples)
    rows.append(("critic", "critique", critic_model, examples * c_exp + probe * crv.votes,
                 examples * c_max + probe * crv.votes, "critic", crv.critic.sampling.max_tokens))
    verify_medium = crv.ablation == "CRV" and crv.verify_medium
    v_exp = examples * m * (1.0 if verify_medium else 0.0)
    v_top = examples * m * (v_max if verify_medium else 0)
    rerate_exp = rerate_max = rewrite_exp = rewrite_max = 0.0
    if crv.ablation == "CRV":
        v_exp += examples * eh * f.expected_attempts
        v_top += examples * eh * crv.max_attempts * v_max
        rerate_exp = examples * eh * f.expected_attempts * settings.verifier_yes * c_exp
        rerate_max = examples * eh * crv.max_attempts * c_max
        rewrite_exp, rewrite_max = examples * eh * f.expected_attempts, examples * eh * crv.max_attempts
    elif crv.ablation == "CR":
        rewrite_exp = rewrite_max = examples * eh
    inc_exp = inc_max = 0.0
    inc_verify_exp = inc_verify_max = 0.0
    if crv.incorrect_cots:
        inc_exp, inc_max = float(examples), float(examples * crv.incorrect_max_attempts)
        if crv.incorrect_check == "verifier_no":
            inc_verify_exp, inc_verify_max = float(examples), float(examples * crv.incorrect_max_attempts * v_max)
    rows.append((verifier_name, "rethink", verifier_model, v_exp + inc_verify_exp + probe,
                 v_top + inc_verify_max + probe, "verifier" if judge else "student", verifier.sampling.max_tokens))
    if rerate_max:
        rows.append(("critic (re-rating)", "rethink", critic_model, rerate_exp, rerate_max, "critic",
                     crv.critic.sampling.max_tokens))
    if rewrite_max:
        rows.append(("rethinker", "rethink", _agent_model(rethinker, params.student.model), rewrite_exp, rewrite_max,
                     "expand", rethinker.sampling.max_tokens))
    if inc_max:
        rows.append(("corrupter", "rethink", _agent_model(corrupter, params.student.model), inc_exp, inc_max,
                     "corrupt", corrupter.sampling.max_tokens))
    loads = []
    for agent, stage, model, exp, top, role, max_tokens in rows:
        prompt = None if cot_tokens is None else exp * (cot_tokens + overhead.get(role, 0.0))
        loads.append(AgentLoad(agent=agent, stage=stage, model=model, samples=exp, samples_max=top,
                               prompt_tokens=prompt, completion_budget=exp * max_tokens))
    notes = []
    if levels is None:
        notes.append("CRV: expected counts assume level shares "
                     f"{'/'.join(f'{s:.2f}' for s in f.shares)} (easy/medium/hard), the first two Critic votes agreeing "
                     f"{agree:.0%} of the time, the Verifier saying YES {settings.verifier_yes:.0%} and a verified "
                     f"rewrite re-rated medium {settings.rerated_medium:.0%}; the maximum assumes none")
    return CRVOutlook(funnel=f, loads=loads, cot_tokens=cot_tokens, cot_source=cot_source, notes=notes)
