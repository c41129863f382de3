"""One schema per artifact: the fields its writer produces, and what every reader may rely on.

A :class:`Schema` lists a file's fields with their types; a *required* field is in every row the
writer produces, an optional one only in some (``rerating`` only on a re-rated attempt). The
stages check each row against it as they write (:meth:`cogpo_kit.pipeline.stage.Stage.write`), and
the readers (:mod:`cogpo_kit.pairs.inputs`, :mod:`cogpo_kit.pairs.schema`, :mod:`cogpo_kit.viz`)
check each row as they read: a required field that is missing, or a field of the wrong type, is a
:class:`~cogpo_kit.io.DataError` naming the file, the line and the field. Readers use the field
names declared here and no other spelling. Fields a schema does not declare are kept as they are.

The keys are the artifact keys of :mod:`cogpo_kit.pipeline.stages`, which says where each file lives.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from cogpo_kit.io import DataError
from cogpo_kit.levels import GAPS

STR, INT, BOOL, DICT = (str,), (int,), (bool,), (dict,)
LIST = (list, tuple)
"""A JSON list (a tuple in memory, as a writer may hand it over)."""
NUM = (int, float)
ANY: tuple = ()
"""No type check (a value written as it came, e.g. a raw dataset row)."""

Check = Callable[[Any], Optional[str]]
"""Extra check of a present, non-null value: ``None`` when fine, else the error message."""


@dataclass(frozen=True)
class Field:
    name: str
    types: tuple = STR
    required: bool = True
    """Written in every row (else only in some)."""
    null: bool = False
    """``None`` is a value the writer writes."""
    check: Optional[Check] = None
    items: Optional["Schema"] = None
    """Schema of each element (a list field) or of each value (a mapping field)."""


def _type_ok(value: Any, types: tuple) -> bool:
    if not types:
        return True
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, never to a schema
    return isinstance(value, types)


def _type_name(types: tuple) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false", "list": "a list",
             "tuple": "a list", "dict": "an object"}
    shown = [t for t in types if t is not int or float not in types]  # int and float: "a number"
    return " or ".join(dict.fromkeys(names.get(t.__name__, t.__name__) for t in shown))


@dataclass(frozen=True)
class Schema:
    """The fields of one artifact (a JSONL file's rows, or a JSON file's document)."""

    key: str
    fields: tuple[Field, ...]
    doc: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    def check(self, row: Any, *, path: str | os.PathLike | None = None, line: int | None = None,
              where: str = "") -> dict:
        """``row`` when it matches the schema; else :class:`DataError` naming path, line and field."""
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=line,
                            field=where.rstrip(".") or None)
        for f in self.fields:
            if f.required and f.name not in row:
                raise DataError(f"required field is missing ({self.key}: {', '.join(self.required)})",
                                path=path, line=line, field=where + f.name)
        for f in self.fields:
            if f.name not in row:
                continue
            value = row[f.name]
            if value is None:
                if not f.null:
                    raise DataError("required field is missing (null)" if f.required else "field is null",
                                    path=path, line=line, field=where + f.name)
                continue
            if f.check is not None:
                msg = f.check(value)
                if msg:
                    raise DataError(msg, path=path, line=line, field=where + f.name)
            if not _type_ok(value, f.types):
                raise DataError(f"expected {_type_name(f.types)}, got {value!r:.60}", path=path, line=line,
                                field=where + f.name)
            if f.items is not None:
                inner = value.items() if isinstance(value, dict) else enumerate(value)
                for k, item in inner:
                    f.items.check(item, path=path, line=line, where=f"{where}{f.name}.{k}.")
        return row


def _nonempty(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value.strip():
        return "response is empty"
    return None


def _positive(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"beta must be a positive number, got {value!r}"
    return None


def _gap(value: Any) -> Optional[str]:
    return None if value in GAPS else f"gap must be one of {list(GAPS)}, got {value!r}"


def _chat(value: Any) -> Optional[str]:
    if not isinstance(value, (list, tuple)) or not value:
        return "prompt must be a non-empty list of chat messages"
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            return f"message {i} needs string 'role' and 'content'"
    if value[-1]["role"] != "user" or not value[-1]["content"].strip():
        return "the last prompt message must be a non-empty user turn"
    return None


def req(name: str, types: tuple = STR, **kw: Any) -> Field:
    """A field in every row."""
    return Field(name, types, **kw)


def opt(name: str, types: tuple = STR, **kw: Any) -> Field:
    """A field in some rows only."""
    return Field(name, types, required=False, **kw)


INPUT = Schema("input", (
    req("id"), req("problem"), req("answer"), req("reasoning"), req("source"), req("meta", DICT)),
    "the CoT records (cogpo_kit.data.records.CoTRecord.to_dict)")
CRITIQUES = Schema("critiques", (
    req("id"), req("level", null=True), req("votes", LIST), req("raw", LIST), req("reasks", INT),
    req("invalid", INT), req("asked", INT), req("skipped", INT), req("reason", null=True), opt("free_probe", DICT)),
    "the Critic's votes and majority level per CoT (level null: no label, reason says why)")
REJECTS = Schema("rejects", (
    req("path"), req("line", INT), req("reason"), req("field", null=True), req("message"), req("row", ANY, null=True),
    req("source")),
    "dataset rows that did not become records (cogpo_kit.data.validate.Reject)")
REWRITES = Schema("rewrites", (
    req("id"), req("kind"), req("attempt", INT), req("outcome"), opt("raw"), opt("finish_reason"),
    opt("error", null=True), opt("rewrite"), opt("reached_answer", null=True), opt("gate"), opt("verification", DICT),
    opt("rerating", DICT), opt("verified", BOOL)),
    "one row per attempt: kind medium (the verification of a medium CoT), expand / simplify (rewrites) or "
    "corrupt (incorrect CoTs); the text in rewrite, the Verifier's answer under verification, the Critic's "
    "re-rating under rerating")
SFT = Schema("sft", (
    req("id"), req("problem"), req("answer"), req("reasoning"), req("response"), req("origin"), req("attempt", INT),
    req("level", null=True), req("reached_answer", null=True)),
    "D_SFT*, one row per kept example (origin medium / easy* / hard*)")
SFT_LEVEL = Schema("sft_level", (
    req("id"), req("problem"), req("answer"), req("reasoning"), req("response"), req("origin"), req("attempt", INT),
    req("level")),
    "an equal-size SFT set of the original CoTs the Critic rated one level")
INCORRECT = Schema("incorrect", (
    req("id"), req("problem"), req("answer"), req("reasoning"), req("reached_answer", null=True), req("response"),
    req("attempt", INT), req("level", null=True)),
    "the incorrect CoT found per example (only examples that have one)")
PAIRS = Schema("pairs", (
    req("id"), req("prompt", LIST, check=_chat), req("chosen", check=_nonempty), req("rejected", check=_nonempty),
    req("gap", check=_gap), req("beta", NUM, check=_positive),
    opt("source_id"), opt("level"), opt("chosen_kind"), opt("rejected_kind"), opt("chosen_answer", null=True),
    opt("rejected_answer", null=True), opt("gold"), opt("prompt_tokens", INT), opt("chosen_tokens", INT),
    opt("rejected_tokens", INT), opt("original_chosen_tokens", INT), opt("original_rejected_tokens", INT),
    opt("truncated", BOOL)),
    "one preference pair per row; the token counts once the stage measured them")
METRICS = Schema("metrics", (
    req("step", INT), opt("epoch", NUM), opt("loss", NUM), opt("train_loss", NUM)),
    "the trainer's log history, one row per logging step, the last one the run's summary (train_loss, "
    "train_runtime, ...); reward margins under rewards/margins and <gap>_gap/rewards/margins")
REF_LOGPS = Schema("ref_logps", (
    req("id"), req("ref_chosen_logps", NUM, null=True), req("ref_rejected_logps", NUM, null=True), req("model"),
    req("pair_hash"), req("settings", DICT)),
    "the starting model's reference log-probs of every pair (model: its fingerprint; settings: max_length, "
    "truncation, dtype), computed once and shared by the CogPO-family methods; null: a pair TRL drops")
SAMPLE = Schema("samples", (
    req("id"), req("sample", INT), req("prompt"), req("output"), req("gold", null=True), req("finish_reason"),
    req("truncated", BOOL), req("completion_tokens", INT, null=True), req("meta", DICT), req("extracted", null=True),
    req("correct", BOOL), req("method"), req("graded_correct", BOOL), opt("extractors", DICT), opt("letters", DICT),
    opt("verdict"), opt("reason"), opt("tests", LIST), opt("tests_source", null=True)),
    "one graded sample per row")
BENCH_RESULT = Schema("benchmark result", (
    req("benchmark"), req("kind"), req("n", INT), req("score", NUM, null=True), req("ci_low", NUM, null=True),
    req("ci_high", NUM, null=True), req("points_per_problem", NUM, null=True), req("n_samples", INT),
    req("pass@k", DICT), req("breakdown", DICT), req("protocol", DICT), req("finish_reasons", DICT),
    req("truncated", INT), req("truncated_correct", INT), req("truncated_as_wrong", BOOL), req("no_answer", INT),
    req("grader_methods", DICT), req("mean_completion_tokens", NUM, null=True), opt("pass@k_skipped"),
    opt("extractor"), opt("extractors", DICT), opt("verdicts", DICT), opt("test_verdicts", DICT),
    opt("tests_source", LIST)),
    "one benchmark's entry in results.json (scores in percent)")
RESULTS = Schema("results", (
    req("model"), req("status"), req("spec"), req("source"), req("model_id", ANY),
    req("benchmarks", DICT, items=BENCH_RESULT), req("protocol", DICT), req("sampling", DICT), req("n_samples", INT),
    req("generate_s", NUM), req("grade_s", NUM)),
    "one evaluated model's results")
COMPARISON_ROW = Schema("comparison row", (
    req("model"), req("benchmark"), req("score", NUM, null=True), req("ci_low", NUM, null=True),
    req("ci_high", NUM, null=True), req("n", INT), req("n_samples", INT, null=True), req("protocol", null=True),
    req("truncated", INT, null=True), req("truncated_correct", INT, null=True), opt("beta_scale", NUM)),
    "one model on one benchmark in comparison.json (protocol: its label)")
COMPARISON = Schema("comparison", (
    req("reference", null=True), req("models", LIST), req("rows", LIST, items=COMPARISON_ROW), req("paired", LIST),
    req("skipped", DICT), req("correction", DICT), req("protocols", LIST)),
    "every model on every benchmark, and the paired differences")
MANIFEST = Schema("manifest", (
    req("stage"), req("params", DICT), req("params_hash"), req("inputs", DICT), req("inputs_hash"),
    req("counts", DICT), req("agents", DICT), req("notes", LIST), req("code_version", DICT), req("packages", DICT),
    req("host", DICT), req("started"), req("wall_time_s", NUM), req("run_uid")),
    "every stage's manifest.json: what it ran with and what it did (written last); stages add fields of their own")

SCHEMAS: dict[str, Schema] = {
    "input": INPUT, "critiques": CRITIQUES, "rejects": REJECTS, "rewrites": REWRITES, "sft": SFT,
    "sft_level": SFT_LEVEL, "incorrect": INCORRECT, "pairs": PAIRS, "sft_metrics": METRICS,
    "preference_metrics": METRICS, "ref_logps": REF_LOGPS, "samples": SAMPLE, "results": RESULTS,
    "comparison": COMPARISON,
}
"""Artifact key (:mod:`cogpo_kit.pipeline.stages`) -> schema of its rows (JSONL) or document (JSON)."""


def schema(key: str) -> Schema:
    try:
        return SCHEMAS[key]
    except KeyError:
        raise ValueError(f"no schema for artifact '{key}' (schemas: {', '.join(SCHEMAS)})") from None
