"""Reading a run's artifacts for tables, figures, widgets and the report.

Every file name and field name this package reads from the stages lives in this module, so
aligning with the stages means editing the tables below and nothing else. Readers accept extra
fields (kept as they are) and a few alternative spellings of each field; a required field that is
missing is a :class:`~cogpo_kit.io.DataError` naming the file, the line and the field. A stage that
has not run yet reads as empty (``[]``), never as an error: the report says so in plain words.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from cogpo_kit.io import DataError, iter_jsonl, read_json
from cogpo_kit.pipeline.stage import STAGES, run_dir, stage_dir_name

LEVELS = ("easy", "medium", "hard")
GAPS = ("small", "medium", "large")

# Artifact -> path inside the run folder.
FILES = {
    "input": "01_critique/input.jsonl",
    "critiques": "01_critique/critiques.jsonl",
    "rewrites": "02_rethink/rewrites.jsonl",
    "incorrect": "02_rethink/incorrect.jsonl",
    "sft": "02_rethink/sft.jsonl",
    "pairs": "03_pairs/pairs.jsonl",
}
EVAL_DIR = "06_evaluate"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
COMPARISON_FILE = "comparison.json"
SAMPLES_PATTERN = re.compile(r"^samples_(?P<bench>.+)\.jsonl$")

# Artifact -> canonical field -> accepted spellings (the first one present wins).
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "input": {"id": ("id",), "problem": ("problem", "question"), "answer": ("answer", "gold"),
              "reasoning": ("reasoning", "cot"), "source": ("source",), "meta": ("meta",)},
    "critiques": {"id": ("id",), "votes": ("votes",), "raw": ("raw", "raw_outputs"), "level": ("level", "label"),
                  "reasks": ("reasks",)},
    # One row per attempt: rewrites (kind medium / expand / simplify) and incorrect-CoT attempts (kind corrupt).
    "rewrites": {"id": ("id",), "kind": ("kind",), "level": ("level",), "attempt": ("attempt",),
                 "text": ("text", "rewrite", "reasoning"), "verdict": ("verdict",),
                 "rerating": ("rerating", "re_rating", "recritique"), "outcome": ("outcome",),
                 "reached_answer": ("reached_answer",)},
    # The incorrect CoT kept per example (only examples that have one; ``ok`` false marks an unusable one).
    "incorrect": {"id": ("id",), "level": ("level",), "text": ("text", "reasoning", "response"),
                  "reached_answer": ("reached_answer", "extracted"), "ok": ("ok", "is_incorrect")},
    "sft": {"id": ("id",), "problem": ("problem",), "answer": ("answer",), "reasoning": ("reasoning",),
            "response": ("response",), "origin": ("origin", "level"), "attempt": ("attempt",)},
    "pairs": {"id": ("id",), "prompt": ("prompt",), "chosen": ("chosen",), "rejected": ("rejected",),
              "gap": ("gap",), "beta": ("beta",), "chosen_kind": ("chosen_kind",),
              "rejected_kind": ("rejected_kind",), "source_id": ("source_id",)},
    "samples": {"id": ("id",), "prompt": ("prompt", "problem"), "output": ("output", "text", "completion"),
                "extracted": ("extracted", "prediction"), "gold": ("gold", "answer"), "correct": ("correct", "verdict")},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "input": ("id", "reasoning"),
    "critiques": ("id", "level"),
    "rewrites": ("id",),
    "incorrect": ("id", "text"),
    "sft": ("id",),
    "pairs": ("chosen", "rejected", "gap"),
    "samples": ("output", "correct"),
}

# Values a field takes when the file leaves it out.
DEFAULTS: dict[str, dict[str, Any]] = {"incorrect": {"ok": True}}
INCORRECT_KIND = "corrupt"
"""``kind`` of the rewrite rows that are attempts at an incorrect CoT."""
NO_LABEL = "no label"
"""Shown for a CoT the Critic gave no level (``level: null``)."""

# Training metrics (TRL log history rows).
METRIC_STEP = ("step", "global_step")
METRIC_LOSS = ("loss", "train_loss")
MARGIN_KEY = re.compile(r"^(?:(?P<gap>[a-z]+)_gap/)?rewards/margins(?:/(?P<gap2>[a-z]+))?$")
"""Reward margins: ``rewards/margins`` (all pairs), ``<gap>_gap/rewards/margins`` or ``rewards/margins/<gap>``."""

# Evaluation results: per-benchmark metrics dict spellings (scores and intervals in percent).
SCORE_KEYS = ("score", "pass@1")
CI_KEYS = ("ci95", "ci", "ci_95")
CI_LOW_KEYS = ("ci_low", "ci_lo", "low")
CI_HIGH_KEYS = ("ci_high", "ci_hi", "high")
N_KEYS = ("n", "count", "problems", "num_problems")
# Models of a beta sweep: "cogpo_x0.5", "cogpo_beta2", "cogpo@0.5" (scale of the CogPO betas).
SWEEP_PATTERN = re.compile(r"^cogpo(?:_beta|@|_x|_beta_x)(?P<scale>[0-9]+(?:\.[0-9]+)?)$")

# Display names in the paper's spelling (Table 2), in its column order.
MODEL_NAMES = {"zero_shot": "Zero-shot", "sft": "SFT", "sft_same_problems": "SFT (D_SFT* problems)",
               "sft_easy": "SFT on easy", "sft_medium": "SFT on medium", "sft_hard": "SFT on hard",
               "crv_sft": "CRV+SFT", "dpo": "DPO",
               "beta_dpo": "β-DPO", "simpo": "SimPO", "cogpo": "CogPO"}
BENCH_NAMES = {"aime24": "AIME2024", "aime25": "AIME2025", "amc23": "AMC2023", "math500": "MATH-500",
               "gsm8k": "GSM8K", "gpqa_diamond": "GPQA Diamond", "livecodebench": "LiveCodeBench",
               "livecodebench_public": "LiveCodeBench (public tests only)",
               "mmlu": "MMLU", "olympiadbench": "OlympiadBench", "minerva_math": "Minerva Math"}


def model_label(name: str) -> str:
    m = SWEEP_PATTERN.match(name)
    if m:
        return f"CogPO (β×{float(m.group('scale')):g})"
    return MODEL_NAMES.get(name, name)


def is_sweep_model(name: str) -> bool:
    return SWEEP_PATTERN.match(name) is not None


def bench_label(name: str) -> str:
    return BENCH_NAMES.get(name, name)


def model_order(names: Iterable[str]) -> list[str]:
    """Models in the paper's column order, unknown names after them in their own order."""
    known = list(MODEL_NAMES)
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), names.index(n)))


def first_key(row: dict, keys: Iterable[str], default: Any = None) -> Any:
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    return default


def normalize_rows(kind: str, rows: Iterable[tuple[int, Any]], path: str | os.PathLike) -> list[dict]:
    """Map each row's fields onto the canonical names of ``kind`` (extra fields kept as they are)."""
    spec = FIELDS[kind]
    required = REQUIRED.get(kind, ())
    out = []
    for lineno, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, line=lineno)
        norm = dict(row)
        for canon, names in spec.items():
            present = [n for n in names if n in row]
            if present:
                norm[canon] = row[present[0]]
            elif canon in required:
                raise DataError(f"missing field (a {kind} row needs {', '.join(required)})",
                                path=path, line=lineno, field=canon)
            else:
                norm[canon] = DEFAULTS.get(kind, {}).get(canon)
        if kind == "rewrites":
            _nested_labels(norm)
        norm["_line"] = lineno
        out.append(norm)
    return out


def _nested_labels(row: dict) -> None:
    """The Verifier's verdict and the Critic's re-rating may be nested objects: keep their label."""
    verification = row.get("verification")
    if row.get("verdict") is None and isinstance(verification, dict):
        row["verdict"] = verification.get("verdict")
    if isinstance(row.get("rerating"), dict):
        row["rerating_votes"] = row["rerating"].get("votes")
        row["rerating"] = row["rerating"].get("level") or NO_LABEL


def margin_gap(key: str) -> str | None:
    """``"all"`` or the gap of a reward-margin metric key; ``None`` for other keys."""
    m = MARGIN_KEY.match(key)
    if not m:
        return None
    return m.group("gap") or m.group("gap2") or "all"


def level_of(value: Any) -> str:
    return str(value) if value else NO_LABEL


def read_rows(kind: str, path: str | os.PathLike) -> list[dict]:
    """Rows of an artifact file, normalized; ``[]`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return normalize_rows(kind, iter_jsonl(path), path)


def text_of(value: Any) -> str:
    """A response as text: a string, or the contents of a list of chat messages."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content", ""))
    if isinstance(value, (list, tuple)):
        return "\n\n".join(text_of(v) for v in value)
    return str(value)


def prompt_text(value: Any) -> str:
    """The user's part of a prompt (a string or chat messages; the system message is left out)."""
    if isinstance(value, (list, tuple)):
        users = [m for m in value if isinstance(m, dict) and m.get("role") != "system"]
        return text_of(users or value)
    return text_of(value)


class Run:
    """One run folder (``<output_dir>/<run_id>``): lazy, cached readers of every artifact."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_params(cls, params) -> "Run":
        return cls(run_dir(params))

    def _cached(self, key: str, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # --- manifests -----------------------------------------------------------------------
    def manifest(self, stage: str) -> dict | None:
        name = stage_dir_name(stage)

        def load():
            p = self.path / name / "manifest.json"
            return read_json(p) if p.exists() else None
        return self._cached(f"manifest:{name}", load)

    def manifests(self) -> dict[str, dict | None]:
        return {s: self.manifest(s) for s in STAGES}

    def notes(self, stage: str) -> list[str]:
        m = self.manifest(stage) or {}
        return [str(n) for n in m.get("notes") or []]

    # --- JSONL artifacts ---------------------------------------------------------------------
    def rows(self, kind: str) -> list[dict]:
        return self._cached(kind, lambda: read_rows(kind, self.path / FILES[kind]))

    def exists(self, kind: str) -> bool:
        return (self.path / FILES[kind]).exists()

    def inputs(self) -> list[dict]:
        return self.rows("input")

    def critiques(self) -> list[dict]:
        return self.rows("critiques")

    def rewrites(self) -> list[dict]:
        return self.rows("rewrites")

    def incorrect(self) -> list[dict]:
        return self.rows("incorrect")

    def sft(self) -> list[dict]:
        return self.rows("sft")

    def pairs(self) -> list[dict]:
        return self.rows("pairs")

    def funnel(self) -> dict:
        """The rethink manifest's ``funnel`` (counts and discards by reason), ``{}`` when absent."""
        raw = (self.manifest("02_rethink") or {}).get("funnel")
        return raw if isinstance(raw, dict) else {}

    # --- training ------------------------------------------------------------------------------
    def metric_runs(self, stage: str) -> dict[str, list[dict]]:
        """``{variant_or_method: [log rows]}`` of ``04_sft`` or ``05_preference``."""
        name = stage_dir_name(stage)

        def load():
            root = self.path / name
            out: dict[str, list[dict]] = {}
            if not root.is_dir():
                return out
            for sub in sorted(p for p in root.iterdir() if p.is_dir()):
                f = sub / METRICS_FILE
                if f.exists():
                    rows = []
                    for lineno, row in iter_jsonl(f):
                        if not isinstance(row, dict):
                            raise DataError("expected a JSON object", path=f, line=lineno)
                        rows.append(row)
                    out[sub.name] = rows
            return out
        return self._cached(f"metrics:{name}", load)

    # --- evaluation ------------------------------------------------------------------------------
    def eval_models(self) -> list[str]:
        root = self.path / EVAL_DIR
        if not root.is_dir():
            return []
        return model_order(p.name for p in sorted(root.iterdir())
                           if p.is_dir() and ((p / RESULTS_FILE).exists() or any(p.glob("samples_*.jsonl"))))

    def results(self) -> list[dict]:
        """Rows ``{model, benchmark, score (%), ci_low, ci_high, n}``: ``comparison.json`` when there is
        one, else every model's ``results.json``."""
        def load():
            from cogpo_kit.viz.results import parse_comparison, parse_results

            comp = self.path / EVAL_DIR / COMPARISON_FILE
            if comp.exists():
                return parse_comparison(read_json(comp), comp)
            rows: list[dict] = []
            for model in self.eval_models():
                f = self.path / EVAL_DIR / model / RESULTS_FILE
                if f.exists():
                    rows.extend(parse_results(model, read_json(f), f))
            return rows
        return self._cached("results", load)

    def samples(self) -> list[dict]:
        """Every evaluation sample with its ``model`` (as named in ``results.json``) and ``benchmark``."""
        def load():
            out: list[dict] = []
            for folder in self.eval_models():
                res = self.path / EVAL_DIR / folder / RESULTS_FILE
                model = str((read_json(res) if res.exists() else {}).get("model") or folder)
                for f in sorted((self.path / EVAL_DIR / folder).glob("samples_*.jsonl")):
                    bench = SAMPLES_PATTERN.match(f.name).group("bench")
                    for row in read_rows("samples", f):
                        row["model"], row["benchmark"] = model, bench
                        row["correct"] = _truth(row["correct"], f, row["_line"])
                        out.append(row)
            return out
        return self._cached("samples", load)

    def beta_sweep(self) -> list[dict]:
        """Result rows of beta-sweep models with their ``scale`` (empty when the run has no sweep)."""
        out = []
        for r in self.results():
            m = SWEEP_PATTERN.match(r["model"])
            scale = r.get("beta_scale")
            if m or scale is not None:
                out.append({**r, "scale": float(scale if scale is not None else m.group("scale"))})
        return out


def _truth(value: Any, path: Path, line: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "correct", "yes", "false", "incorrect", "no"):
        return value.strip().lower() in ("true", "correct", "yes")
    raise DataError(f"expected true/false, got {value!r}", path=path, line=line, field="correct")
