"""Source formats: turn one decoded row of a dataset into the fields of a CoT record.

A parser takes the row's object and a :class:`RowContext` and returns a :class:`Parsed` — the raw
values for ``id``, ``problem``, ``answer`` and ``reasoning`` (types are checked later by
:mod:`cogpo_kit.data.validate`), the source field each came from, and ``meta``: the source fields
whose values are not already in the record unchanged. A row that does not fit the format raises
:class:`RowProblem` naming the field.

Formats:

- ``gsm8k``: ``question``; ``answer`` = worked solution ending ``#### n``. The text before ``####``
  is the reasoning with the calculator annotations ``<<...>>`` removed; the answer is ``n`` without
  thousands commas. Id ``gsm8k-<file stem>-<line-1>``.
- ``limo``: ``id``, ``question``, ``solution`` (the reasoning trace), ``gold_answer``. Id ``limo-<id>``.
- ``mapped``: our field names mapped to the file's (``DataParams.fields``); id ``<file stem>-<line-1>``
  when the row has none.
- ``conversations``: Bespoke-Stratos / OpenThoughts / Sky-T1: ``conversations`` = user and assistant
  turns (``from``/``value`` or ``role``/``content``), id ``<source>-<row index>`` when the row has
  none; the assistant text holds
  ``<|begin_of_thought|>…<|end_of_thought|>`` (→ reasoning) and
  ``<|begin_of_solution|>…<|end_of_solution|>`` (→ ``meta["solution"]``; answer = its last
  ``\\boxed{}``, or the whole solution when it has none). ``<think>…</think>`` is read the same way.
  The dataset's own answer-format instruction around the user's problem (every Bespoke-Stratos math
  problem starts ``Return your final response within \\boxed{}.``, every code problem
  ``Generate an executable Python function generated from the given prompt. ...``) is removed from
  the problem (see :data:`ANSWER_FORMAT_INSTRUCTIONS`; ``DataParams.strip_format_instructions``
  turns it off): the agents and the student get their own instruction from the kit's prompts, and
  two would disagree. The removed text is kept in ``meta["format_instructions"]``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from cogpo_kit.answers.extraction import find_boxed

OUR_FIELDS = ("id", "problem", "answer", "reasoning")

MISSING: Any = object()
"""Marks a field the row does not have at all (as opposed to an explicit null)."""


class RowProblem(Exception):
    """A row that cannot become a record: ``reason`` (a short code), the source ``field`` and a message."""

    def __init__(self, reason: str, field: str | None, message: str):
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


@dataclass
class RowContext:
    """What a parser may need besides the row: the source name, the file, the line, a field map."""

    source: str
    path: str
    line: int
    fields: dict[str, str] = field(default_factory=dict)
    index: int = 0
    """0-based position of the row in the whole source (all files of a folder together)."""
    strip_instructions: bool = True
    """Remove known answer-format instructions from the problem (formats that have them)."""

    @property
    def stem(self) -> str:
        name = self.path[3:] if self.path.startswith("hf:") else Path(self.path).stem
        return name.replace("/", "_")


@dataclass
class Parsed:
    """Raw values of our four fields, the source field each came from, and the kept source fields."""

    values: dict[str, Any]
    origin: dict[str, str]
    meta: dict[str, Any]
    stripped: tuple[str, ...] = ()
    """Names of the answer-format instructions removed from the problem (:data:`ANSWER_FORMAT_INSTRUCTIONS`)."""


def _require_object(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise RowProblem("not_object", None, f"expected a JSON object, got {type(obj).__name__}")
    return obj


_CALC = re.compile(r"<<[^<>]*>>")


def parse_gsm8k(obj: Any, ctx: RowContext) -> Parsed:
    row = _require_object(obj)
    solution = row.get("answer", MISSING)
    if isinstance(solution, str):
        if "####" not in solution:
            raise RowProblem("bad_format", "answer", "no '#### <answer>' line in the solution")
        before, after = solution.rsplit("####", 1)
        reasoning: Any = _CALC.sub("", before).strip()
        answer: Any = after.strip().replace(",", "")
    else:  # missing / null / wrong type: reported by validation under the source field name
        reasoning = answer = solution
    meta = {k: v for k, v in row.items() if k != "question"}
    return Parsed(values={"id": f"gsm8k-{ctx.stem}-{ctx.line - 1}", "problem": row.get("question", MISSING),
                          "answer": answer, "reasoning": reasoning},
                  origin={"id": "(line number)", "problem": "question", "answer": "answer", "reasoning": "answer"},
                  meta=meta)


def parse_limo(obj: Any, ctx: RowContext) -> Parsed:
    row = _require_object(obj)
    raw_id = row.get("id", MISSING)
    rid = f"limo-{raw_id}" if isinstance(raw_id, (int, str)) and not isinstance(raw_id, bool) and str(raw_id).strip() \
        else raw_id
    meta = {k: v for k, v in row.items() if k not in ("question", "solution", "gold_answer")}
    return Parsed(values={"id": rid, "problem": row.get("question", MISSING), "answer": row.get("gold_answer", MISSING),
                          "reasoning": row.get("solution", MISSING)},
                  origin={"id": "id", "problem": "question", "answer": "gold_answer", "reasoning": "solution"},
                  meta=meta)


def parse_mapped(obj: Any, ctx: RowContext) -> Parsed:
    row = _require_object(obj)
    mapping = {f: ctx.fields.get(f, f) for f in OUR_FIELDS}
    values = {f: row.get(src, MISSING) for f, src in mapping.items()}
    origin = dict(mapping)
    if values["id"] is MISSING and "id" not in ctx.fields:
        values["id"] = f"{ctx.stem}-{ctx.line - 1}"
        origin["id"] = "(line number)"
    used = set(mapping.values())
    meta = {k: v for k, v in row.items() if k not in used}
    return Parsed(values=values, origin=origin, meta=meta)


@dataclass(frozen=True)
class FormatInstruction:
    """An answer-format instruction a dataset wraps around its problems, written the way the dataset does."""

    name: str
    """Short name, used in the load report's counts."""
    text: str
    """The instruction as the dataset writes it. Runs of whitespace match any whitespace; ``\\boxed{}``
    also matches ``\\boxed{{}}`` (generation code that concatenated an unformatted format string); a
    ``trailing`` instruction's final period is optional."""
    position: Literal["leading", "trailing"]
    """Where it stands: before the problem (``leading``) or after it (``trailing``)."""
    origin: str = ""
    """Where the dataset's text comes from."""

    @property
    def pattern(self) -> re.Pattern:
        return _instruction_pattern(self.text, self.position)


@functools.lru_cache(maxsize=None)
def _instruction_pattern(text: str, position: str) -> re.Pattern:
    body = r"\s+".join(re.escape(word) for word in text.split())
    body = body.replace(re.escape("\\boxed{}"), r"\\boxed(?:\{\}|\{\{\}\})")
    if position == "leading":
        return re.compile(rf"\A\s*{body}\s*")
    if body.endswith(r"\."):
        body = body[:-2] + r"\.?"
    return re.compile(rf"\s*{body}\s*\Z")


ANSWER_FORMAT_INSTRUCTIONS: tuple[FormatInstruction, ...] = (
    FormatInstruction(
        "boxed", "Return your final response within \\boxed{}.", "leading",
        "Bespoke-Stratos-17k, OpenThoughts-114k, Sky-T1_data_17k math and science rows (the NuminaMath "
        "template of the Sky-T1 / Bespoke / OpenThoughts generation code: instruction, a space, the problem)"),
    FormatInstruction(
        "boxed_letter", "Return your final response within \\boxed{} and only include the letter choice "
        "(A, B, C, or D) as your final response.", "leading",
        "the Sky-T1 generation code's multiple-choice template (GPQA, MMLU style rows)"),
    FormatInstruction(
        "boxed_trailing", "Return your final response within \\boxed{}.", "trailing",
        "the Sky-T1 generation code's math template for Sky-T1-32B-Preview (a newline, then the instruction)"),
    FormatInstruction(
        "step_by_step_boxed", "Please reason step by step, and put your final answer within \\boxed{}.",
        "trailing",
        "the DeepSeek-R1 recommended math prompt, found at the end of problems in many distilled CoT sets "
        "(and the kit's own student prompt, which adds it again)"),
)
"""Answer-format instructions removed from the start or end of a ``conversations`` problem.

The code rows' instructions (:data:`CODE_TASK_INSTRUCTIONS`) are not among them: they say what program to
write (read stdin and print, or return a function body), which is part of the task for the agents and
the student alike, and the kit's student prompt adds nothing to a code problem
(:func:`cogpo_kit.answers.response.student_messages`).

Only an exact match at the very start (``leading``) or very end (``trailing``) of the user's text is
removed, repeatedly (a problem may carry one of each); the same words anywhere else are part of the
problem and stay. A problem that is nothing but an instruction is rejected (``empty_field``). The
removed text goes to ``meta["format_instructions"]``, so a prompt that needs it (a code problem's
stdin or function-body convention) can put it back.
"""


CODE_TASK_INSTRUCTIONS: tuple[FormatInstruction, ...] = (
    FormatInstruction(
        "code_stdin", "Generate an executable Python function generated from the given prompt. The function "
        "should take stdin as input and print the output. Simply call the function after the definition.",
        "leading",
        "Bespoke-Stratos-17k, OpenThoughts-114k code rows (APPS / TACO / CodeContests without a function "
        "name); the problem follows with no space, and any starter code after a newline"),
    FormatInstruction(
        "code_function", "Generate an executable Python function generated from the given prompt. Return the "
        "function body without invoking it at the final solution.", "leading",
        "Bespoke-Stratos-17k, OpenThoughts-114k code rows with a function name (call-based); the problem "
        "follows with no space, then the starter code after a newline (kept: it is part of the problem)"),
)
"""The code rows' own instructions, kept in the problem (not stripped): they specify the program."""


def strip_format_instructions(text: str, instructions: Sequence[FormatInstruction] = ANSWER_FORMAT_INSTRUCTIONS,
                              ) -> tuple[str, list[FormatInstruction], list[str]]:
    """``(problem, instructions removed, removed texts)``: ``text`` without the known instructions at its ends."""
    removed: list[FormatInstruction] = []
    texts: list[str] = []
    changed = True
    while changed:
        changed = False
        for ins in instructions:
            m = ins.pattern.search(text)
            if m:
                texts.append(m.group(0).strip())
                removed.append(ins)
                text = text[:m.start()] + text[m.end():]
                changed = True
    return text, removed, texts


_USER_ROLES = ("user", "human")
_ASSISTANT_ROLES = ("assistant", "gpt")
_THOUGHT = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", re.S)
_SOLUTION = re.compile(r"<\|begin_of_solution\|>(.*?)(?:<\|end_of_solution\|>|$)", re.S)
_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def _turn(turn: Any, index: int) -> tuple[str, Any]:
    if not isinstance(turn, dict):
        raise RowProblem("wrong_type", "conversations", f"turn {index} is {type(turn).__name__}, expected an object")
    role = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    if not isinstance(role, str):
        raise RowProblem("bad_format", "conversations", f"turn {index} has no 'from' (or 'role') string")
    return role.lower(), text


def split_thought_solution(text: str) -> tuple[str, str] | None:
    """``(thought, solution)`` of an assistant message with thought/solution markers, else ``None``."""
    m = _THOUGHT.search(text)
    if m:
        rest = text[m.end():]
        s = _SOLUTION.search(rest)
        return m.group(1).strip(), (s.group(1) if s else rest).strip()
    m = _THINK.search(text)
    if m:
        return m.group(1).strip(), text[m.end():].strip()
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last box opened in ``text`` (boxes found by
    :func:`cogpo_kit.answers.extraction.find_boxed`, the one box parser), else ``None``.

    The last box at each depth: ``\\boxed{\\boxed{7}}`` gives ``7``. Only the last box, not
    :func:`~cogpo_kit.answers.extraction.boxed_answer`'s group of boxes that belong together: a
    dataset's solution that boxes ``1`` and then ``2`` has the gold answer ``2``."""
    boxes = find_boxed(text)
    if not boxes:
        return None
    content = boxes[-1][2]
    while inner := find_boxed(content):
        content = inner[-1][2]
    return content


def parse_conversations(obj: Any, ctx: RowContext) -> Parsed:
    row = _require_object(obj)
    conv = row.get("conversations", MISSING)
    if conv is MISSING or conv is None:
        raise RowProblem("missing_field", "conversations", "value is missing" if conv is MISSING else "value is null")
    if not isinstance(conv, list):
        raise RowProblem("wrong_type", "conversations", f"value is {type(conv).__name__}, expected a list of turns")
    turns = [_turn(t, i) for i, t in enumerate(conv)]
    users = [text for role, text in turns if role in _USER_ROLES]
    assistants = [text for role, text in turns if role in _ASSISTANT_ROLES]
    if not users:
        raise RowProblem("bad_format", "conversations", "no user turn")
    if not assistants:
        raise RowProblem("bad_format", "conversations", "no assistant turn")
    reply = assistants[-1]
    if not isinstance(reply, str):
        raise RowProblem("wrong_type", "conversations", f"assistant text is {type(reply).__name__}, expected a string")
    parts = split_thought_solution(reply)
    if parts is None:
        raise RowProblem("bad_format", "conversations",
                         "assistant turn has no <|begin_of_thought|>...<|end_of_thought|> (or <think>) markers")
    thought, solution = parts
    answer = last_boxed(solution)
    meta = {k: v for k, v in row.items() if k != "conversations"}
    meta["solution"] = solution
    rid = row.get("id", MISSING)
    if rid is MISSING:
        rid = f"{ctx.source}-{ctx.index}"
    problem = users[0]
    stripped: tuple[str, ...] = ()
    if ctx.strip_instructions and isinstance(problem, str):
        rest, removed, texts = strip_format_instructions(problem)
        if removed:
            if not rest.strip():
                raise RowProblem("empty_field", "conversations",
                                 "the user turn holds only an answer-format instruction "
                                 f"({', '.join(i.name for i in removed)}), no problem")
            problem, stripped = rest, tuple(i.name for i in removed)
            meta["format_instructions"] = texts
    return Parsed(values={"id": rid, "problem": problem, "answer": answer if answer is not None else solution,
                          "reasoning": thought},
                  origin={"id": "id" if "id" in row else "(line number)", "problem": "conversations",
                          "answer": "conversations", "reasoning": "conversations"},
                  meta=meta, stripped=stripped)


FORMAT_NAMES = {
    "gsm8k": "GSM8K (question; answer = worked solution ending '#### n')",
    "limo": "LIMO traces (id, question, solution, gold_answer)",
    "mapped": "CoT fields (id optional, problem, answer, reasoning)",
    "conversations": "conversations with thought/solution markers (Bespoke-Stratos / OpenThoughts / Sky-T1)",
}
"""Format name -> description for reports."""

PARSERS: dict[str, Callable[[Any, RowContext], Parsed]] = {
    "gsm8k": parse_gsm8k,
    "limo": parse_limo,
    "mapped": parse_mapped,
    "conversations": parse_conversations,
}
"""Format name -> parser."""


def detect_format(obj: Any) -> str | None:
    """The format of a row by its fields, or ``None`` when no CoT mapping is known for it."""
    if not isinstance(obj, dict):
        return None
    if "conversations" in obj:
        return "conversations"
    if {"question", "solution", "gold_answer"} <= obj.keys():
        return "limo"
    if {"question", "answer"} <= obj.keys() and isinstance(obj["answer"], str) and "####" in obj["answer"]:
        return "gsm8k"
    if {"problem", "answer", "reasoning"} <= obj.keys():
        return "mapped"
    return None
