"""Validation of parsed rows, the rejects they produce, and the report of a load.

Checks, each with a reason code used in reports and in ``rejects.jsonl``:

- ``bad_utf8`` / ``bad_json`` / ``not_object``: the line could not be decoded into an object;
- ``bad_format``: the row does not fit its source format (e.g. GSM8K solution without ``####``);
- ``missing_field``: a required field is absent or null;
- ``wrong_type``: a field has the wrong type (e.g. the answer is a list); numeric answers and ids
  are accepted and converted to strings;
- ``empty_field``: a required field is empty or only whitespace;
- ``duplicate_id``: the id was already used by an earlier row (the first one is kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cogpo_kit.data.parsers import MISSING, Parsed, RowProblem
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.io import DataError

REASONS = ("bad_utf8", "bad_json", "not_object", "bad_format", "missing_field", "wrong_type", "empty_field",
           "duplicate_id")
"""Every reason a row can be rejected for."""


@dataclass
class Reject:
    """A row that did not become a record, with where it was and why."""

    path: str
    line: int
    reason: str
    field: str | None
    message: str
    row: Any = None
    """The decoded row (or the raw line text when it could not be decoded)."""

    def to_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "reason": self.reason, "field": self.field,
                "message": self.message, "row": self.row}

    def to_error(self) -> DataError:
        return DataError(f"{self.message} [{self.reason}]", path=self.path, line=self.line, field=self.field)

    def describe(self) -> str:
        where = f"{self.path}: line {self.line}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.message} [{self.reason}]"


@dataclass
class LoadReport:
    """What a load read, kept and rejected."""

    source: str
    """Loader name (or detected format for ``data check`` on a file)."""
    paths: list[str] = field(default_factory=list)
    """Files read (``hf:<name>`` for a hub dataset)."""
    read: int = 0
    """Rows read, undecodable lines included (blank lines are not rows)."""
    valid: int = 0
    """Rows that passed validation."""
    kept: int = 0
    """Valid rows returned after shuffle and ``limit``."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rejected rows per reason."""
    rejects: list[Reject] = field(default_factory=list)
    """The rejected rows themselves."""
    rejects_path: str | None = None
    """Where the rejects were written, if anywhere."""
    stripped: int = 0
    """Valid rows whose problem had the dataset's own answer-format instruction removed
    (:data:`~cogpo_kit.data.parsers.ANSWER_FORMAT_INSTRUCTIONS`)."""
    stripped_by_instruction: dict[str, int] = field(default_factory=dict)
    """Valid rows per instruction removed (a problem may lose one leading and one trailing)."""

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def add_reject(self, reject: Reject) -> None:
        self.rejected[reject.reason] = self.rejected.get(reject.reason, 0) + 1
        self.rejects.append(reject)

    def add_stripped(self, names: tuple[str, ...] | list[str]) -> None:
        """Count a valid row whose problem lost the instructions ``names``."""
        if names:
            self.stripped += 1
            for name in names:
                self.stripped_by_instruction[name] = self.stripped_by_instruction.get(name, 0) + 1

    def to_dict(self) -> dict:
        """Counts only (the rejected rows go to the rejects file)."""
        return {"source": self.source, "paths": list(self.paths), "read": self.read, "valid": self.valid,
                "kept": self.kept, "rejected": dict(self.rejected), "n_rejected": self.n_rejected,
                "rejects_path": self.rejects_path, "format_instructions_stripped": self.stripped,
                "format_instructions": dict(self.stripped_by_instruction)}


def _check_text(name: str, value: Any, origin: str, *, numeric_ok: bool) -> str:
    label = origin if origin != "(line number)" else name
    read_as = "" if label == name else f" (read as '{name}')"
    if value is MISSING:
        raise RowProblem("missing_field", label, f"value is missing{read_as}")
    if value is None:
        raise RowProblem("missing_field", label, f"value is null{read_as}")
    if numeric_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise RowProblem("wrong_type", label, f"value is {value}, not a usable number{read_as}")
        value = str(value)
    if not isinstance(value, str):
        kind = "a string or a number" if numeric_ok else "a string"
        raise RowProblem("wrong_type", label, f"value is {type(value).__name__}, expected {kind}{read_as}")
    if not value.strip():
        raise RowProblem("empty_field", label, f"value is empty{read_as}")
    return value


def to_record(parsed: Parsed, source: str) -> CoTRecord:
    """Check a parsed row's types and emptiness and build the record (raises :class:`RowProblem`)."""
    v, o = parsed.values, parsed.origin
    rid = _check_text("id", v["id"], o["id"], numeric_ok=True)
    problem = _check_text("problem", v["problem"], o["problem"], numeric_ok=False)
    answer = _check_text("answer", v["answer"], o["answer"], numeric_ok=True)
    reasoning = _check_text("reasoning", v["reasoning"], o["reasoning"], numeric_ok=False)
    return CoTRecord(id=rid.strip(), problem=problem, answer=answer.strip(), reasoning=reasoning, source=source,
                     meta=parsed.meta)
