"""Per-example workflows of the Rethinker and the Verifier (paper 3.2.2-3.2.3) and the incorrect CoTs.

* medium CoTs go to the Verifier (``verify_medium``) and are kept on YES;
* easy/hard CoTs are rewritten (expand / simplify), verified and re-rated by the Critic, up to
  ``max_attempts`` times; an attempt is kept only when verified YES and re-rated medium, and a failed
  attempt goes back to the Rethinker with the next sample index;
* every example gets an incorrect CoT from the corrupting prompt (paper Table 13), checked as
  ``incorrect_check`` says (the paper checks nothing);
* an output cut at ``max_tokens``, or whose thinking never closed, fails its attempt (``truncated``,
  ``thinking_unclosed``) and never becomes data.

Ablations (paper Table 6): ``C`` keeps the Critic's medium CoTs only; ``CR`` keeps the medium CoTs and
the first rewrite of each easy/hard CoT, neither verified nor re-rated; ``CRV`` is the full system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from cogpo_kit.answers.response import answer_kind, format_response, reached_answer, same_answer
from cogpo_kit.crv.agents import Agents
from cogpo_kit.crv.config import CRVParams
from cogpo_kit.crv.critic import ask_label
from cogpo_kit.crv.gates import answer_gate, output_problem
from cogpo_kit.crv.parse import answer_part
from cogpo_kit.crv.scheduler import Call, Workflow
from cogpo_kit.data.records import CoTRecord

REWRITE_ROLE = {"easy": "expand", "hard": "simplify"}


@dataclass
class Verdict:
    """A Verifier's answer on one reasoning process."""

    verdict: Optional[str]
    """``YES``, ``NO`` or ``None`` (no valid label)."""
    mode: str
    raw: list = field(default_factory=list)
    """Judge: raw outputs of each try; student_solve: the student's output."""
    student_answer: Optional[str] = None

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "mode": self.mode, "raw": self.raw, "student_answer": self.student_answer}


@dataclass
class ExampleOutcome:
    """What happened to one example in the rethink stage."""

    id: str
    level: Optional[str]
    kept: bool = False
    origin: Optional[str] = None
    """``medium``, ``easy*`` or ``hard*`` when kept."""
    attempt: int = 0
    """Attempt that was kept (0: the original medium CoT)."""
    reasoning: Optional[str] = None
    reached: Optional[str] = None
    reason: Optional[str] = None
    """Why it was discarded."""
    attempts: list[dict] = field(default_factory=list)
    """One row per attempt (or the medium verification)."""


@dataclass
class IncorrectOutcome:
    id: str
    found: bool = False
    reasoning: Optional[str] = None
    reached: Optional[str] = None
    attempt: int = 0
    reason: Optional[str] = None
    attempts: list[dict] = field(default_factory=list)


class Rethink:
    """The workflows of one stage run, bound to its agents and CRV parameters."""

    def __init__(self, agents: Agents, crv: CRVParams):
        self.agents = agents
        self.crv = crv
        self.label_results: list = []
        """Every Verifier / Critic label question asked (for the invalid-label share)."""

    # --- verification -------------------------------------------------------------------------
    def verify(self, rec: CoTRecord, reasoning: str) -> Workflow:
        """Workflow: the Verifier's verdict on ``reasoning`` (judge or student_solve)."""
        if self.crv.verifier_mode == "student_solve":
            student = self.agents.role("student")
            msgs = student.messages(problem=rec.problem, answer=rec.answer, reasoning=reasoning)
            got = yield [Call("student", student.request(msgs))]
            comp = got[0][0]
            if comp.finish_reason == "error":
                return Verdict(None, "student_solve", raw=[f"<error: {comp.error}>"])
            text = answer_part(comp.text, student.think_end)
            ans = reached_answer(text) if text.strip() else None
            return Verdict("YES" if same_answer(ans, rec.answer) else "NO", "student_solve", raw=[comp.text],
                           student_answer=ans)
        verifier = self.agents.role("verifier")
        msgs = verifier.messages(problem=rec.problem, answer=rec.answer, reasoning=reasoning)
        res = yield from ask_label(verifier, msgs, votes=1)
        self.label_results.append(res)
        return Verdict(res.label, "judge", raw=res.raw[0] if res.raw else [])

    def rerate(self, rec: CoTRecord, reasoning: str) -> Workflow:
        critic = self.agents.role("critic")
        msgs = critic.messages(problem=rec.problem, answer=rec.answer, reasoning=reasoning)
        res = yield from ask_label(critic, msgs, votes=self.crv.votes, early_exit=self.crv.early_exit)
        self.label_results.append(res)
        return res

    # --- D_SFT* -------------------------------------------------------------------------------
    def example(self, rec: CoTRecord, level: Optional[str], reason: Optional[str] = None) -> Workflow:
        """Workflow: the SFT outcome of one example rated ``level`` by the Critic."""
        out = ExampleOutcome(id=rec.id, level=level)
        crv = self.crv
        if level is None:
            out.reason = f"critic_{reason or 'no_label'}"
            return out
        if level == "medium":
            row: dict[str, Any] = {"id": rec.id, "kind": "medium", "attempt": 0}
            if crv.ablation == "CRV" and crv.verify_medium:
                v = yield from self.verify(rec, rec.reasoning)
                row["verification"] = v.to_dict()
                ok = v.verdict == "YES"
                row["outcome"] = "kept" if ok else ("verifier_invalid" if v.verdict is None else "verifier_no")
            else:
                ok = True
                row["outcome"] = "kept_unverified"
            out.attempts.append(row)
            if ok:
                out.kept, out.origin, out.reasoning = True, "medium", rec.reasoning
                out.reached = rec.answer
            else:
                out.reason = f"medium_{row['outcome']}"
            return out
        if crv.ablation == "C":
            out.reason = "not_medium_ablation_C"
            return out
        role_name = REWRITE_ROLE[level]
        role = self.agents.role(role_name)
        msgs = role.messages(problem=rec.problem, answer=rec.answer, reasoning=rec.reasoning)
        for attempt in range(1, crv.max_attempts + 1):
            row = {"id": rec.id, "kind": role_name, "attempt": attempt}
            out.attempts.append(row)
            text = yield from self._sample(role, msgs, attempt, row)
            if text is None:
                continue
            if answer_kind(rec.answer) == "short":
                row["reached_answer"] = reached_answer(text)
            if crv.ablation == "CR":  # Table 6 "w. CR": the first rewrite, not verified, not re-rated
                row["outcome"], row["verified"] = "kept", False
                out.kept, out.origin, out.attempt, out.reasoning = True, f"{level}*", attempt, text
                out.reached = row.get("reached_answer")  # unverified: the answer it reaches itself
                return out
            if crv.check_final_answer:
                gate = answer_gate(rec, text)
                row["gate"] = gate.outcome
                if gate.correct is False:
                    row["outcome"] = gate.outcome
                    continue
            v = yield from self.verify(rec, text)
            row["verification"] = v.to_dict()
            if v.verdict != "YES":
                row["outcome"] = "verifier_invalid" if v.verdict is None else "verifier_no"
                continue
            rr = yield from self.rerate(rec, text)
            row["rerating"] = {"level": rr.label, "votes": rr.votes, "raw": rr.raw, "reason": rr.reason,
                               "asked": rr.asked, "skipped": rr.skipped, "invalid": rr.invalid}
            if rr.label != "medium":
                row["outcome"] = f"rerated_{rr.label or 'none'}"
                continue
            row["outcome"] = "kept"
            out.kept, out.origin, out.attempt, out.reasoning = True, f"{level}*", attempt, text
            out.reached = rec.answer  # verified to reach the gold answer
            return out
        out.reason = "max_attempts"
        return out

    def _sample(self, role, msgs, attempt: int, row: dict) -> Workflow:
        """Workflow: one sample of ``role`` (attempt ``attempt``) recorded in ``row``; its answer part, or
        ``None`` with ``row["outcome"]`` saying why it cannot be used (error, truncated, thinking not
        closed, empty)."""
        got = yield [Call(role.name, role.request(msgs, sample_offset=attempt - 1))]
        comp = got[0][0]
        row["raw"] = comp.text
        row["finish_reason"] = comp.finish_reason
        if comp.finish_reason == "error":
            row["error"] = comp.error
            row["outcome"] = "rethinker_error"
            return None
        problem = output_problem(comp.text, comp.finish_reason, role.think_end, thinks=role.thinks)
        if problem:
            row["outcome"] = problem
            return None
        text = answer_part(comp.text, role.think_end).strip()
        row["rewrite"] = text
        if not text:
            row["outcome"] = "empty_rewrite"
            return None
        return text

    # --- incorrect CoTs -----------------------------------------------------------------------
    def incorrect(self, rec: CoTRecord) -> Workflow:
        """Workflow: an incorrect CoT for ``rec`` from the corrupting prompt, checked as ``incorrect_check`` says."""
        out = IncorrectOutcome(id=rec.id)
        role = self.agents.role("corrupt")
        msgs = role.messages(problem=rec.problem, answer=rec.answer, reasoning=rec.reasoning)
        check = self.crv.incorrect_check
        for attempt in range(1, self.crv.incorrect_max_attempts + 1):
            row: dict[str, Any] = {"id": rec.id, "kind": "corrupt", "attempt": attempt}
            out.attempts.append(row)
            text = yield from self._sample(role, msgs, attempt, row)
            if text is None:
                continue
            reached = reached_answer(text) if answer_kind(rec.answer) == "short" else None
            row["reached_answer"] = reached
            if check != "none":
                gate = answer_gate(rec, text)
                row["gate"] = gate.outcome
                if gate.correct is True:
                    row["outcome"] = "reaches_gold"
                    continue
                if gate.outcome == "no_final_answer":
                    row["outcome"] = "no_final_answer"
                    continue
            if check == "verifier_no":
                v = yield from self.verify(rec, text)
                row["verification"] = v.to_dict()
                if v.verdict != "NO":
                    row["outcome"] = "verifier_invalid" if v.verdict is None else "verifier_yes"
                    continue
            row["outcome"] = "kept" if check != "none" else "kept_unchecked"
            out.found, out.reasoning, out.reached, out.attempt = True, text, reached, attempt
            return out
        out.reason = "max_attempts"
        return out


def sft_row(rec: CoTRecord, out: ExampleOutcome) -> dict:
    """The D_SFT* row of a kept example: its response ends with the answer it reaches (the gold answer for a
    verified CoT; an unverified ``CR`` rewrite's own answer)."""
    return {"id": rec.id, "problem": rec.problem, "answer": rec.answer, "reasoning": out.reasoning,
            "response": format_response(out.reasoning or "", out.reached, answer_kind(rec.answer)),
            "origin": out.origin, "attempt": out.attempt, "level": out.level, "reached_answer": out.reached}


def incorrect_row(rec: CoTRecord, out: IncorrectOutcome, level: Optional[str]) -> dict:
    """The incorrect-CoT row: the response ends with the answer the incorrect reasoning reaches itself."""
    return {"id": rec.id, "problem": rec.problem, "answer": rec.answer, "reasoning": out.reasoning,
            "reached_answer": out.reached,
            "response": format_response(out.reasoning or "", out.reached, answer_kind(rec.answer)),
            "attempt": out.attempt, "level": level}
