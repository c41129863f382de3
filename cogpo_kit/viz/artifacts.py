"""Reading a run's artifacts for tables, figures, widgets and the report.

Where each file lives comes from the stage registry (:mod:`cogpo_kit.pipeline.stages`) and what its
rows hold from the artifact's schema (:mod:`cogpo_kit.pipeline.schemas`), the one its writer checks
too: every row read is checked against it, so a missing or mistyped field is a
:class:`~cogpo_kit.io.DataError` naming the file, the line and the field. Rows are kept as written
(fields the schema does not declare included), with ``_line``, their line in the file. A stage that
has not run yet reads as empty (``[]``), never as an error: the report says so in plain words.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from cogpo_kit.io import iter_jsonl, read_json
from cogpo_kit.levels import GAPS, LEVELS
from cogpo_kit.pipeline.schemas import MANIFEST, schema
from cogpo_kit.pipeline.stage import run_dir
from cogpo_kit.pipeline.stages import (STAGES, artifact_path, find_artifacts, manifest_path, stage_dir_name,
                                       stage_spec)
from cogpo_kit.viz.results import parse_comparison, parse_results

__all__ = ["GAPS", "LEVELS", "INCORRECT_KIND", "NO_LABEL", "Run", "bench_label", "is_sweep_model", "level_of",
           "margin_gap", "model_label", "model_order", "prompt_text", "read_rows", "rerating_of", "text_of",
           "verdict_of"]

ROWS = ("input", "critiques", "rewrites", "incorrect", "sft", "pairs")
"""The JSONL artifacts of the CRV and pairs stages that :meth:`Run.rows` reads."""
INCORRECT_KIND = "corrupt"
"""``kind`` of the rewrite rows that are attempts at an incorrect CoT."""
NO_LABEL = "no label"
"""Shown for a CoT the Critic gave no level (``level: null``)."""

MARGIN_KEY = re.compile(rf"^(?:(?P<gap>{'|'.join(GAPS)})_gap/)?rewards/margins$")
"""Reward margins in the training metrics: ``rewards/margins`` (all pairs) and ``<gap>_gap/rewards/margins``."""
SWEEP_PATTERN = re.compile(r"^cogpo_x(?P<scale>[0-9]+(?:\.[0-9]+)?)$")
"""Models of a beta sweep as the evaluation stage names them: ``cogpo_x0.5`` (scale of the CogPO betas)."""

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


def margin_gap(key: str) -> str | None:
    """``"all"`` or the gap of a reward-margin metric key; ``None`` for other keys."""
    m = MARGIN_KEY.match(key)
    if not m:
        return None
    return m.group("gap") or "all"


def level_of(value: Any) -> str:
    return str(value) if value else NO_LABEL


def verdict_of(row: dict) -> str | None:
    """The Verifier's verdict on a rewrite attempt (``None`` when it was not verified)."""
    return (row.get("verification") or {}).get("verdict")


def rerating_of(row: dict) -> str | None:
    """The Critic's level of a re-rated rewrite attempt (:data:`NO_LABEL` for none; ``None`` when not re-rated)."""
    if "rerating" not in row:
        return None
    return level_of(row["rerating"].get("level"))


def read_rows(key: str, path: str | os.PathLike) -> list[dict]:
    """Rows of an artifact file, each checked against its schema, with ``_line``; ``[]`` when the file
    does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    sch = schema(key)
    return [dict(sch.check(row, path=path, line=line), _line=line) for line, row in iter_jsonl(path)]


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
        """A stage's ``manifest.json`` (the stage named by its short name or its folder), ``None`` when it has
        not run."""
        name = stage_dir_name(stage)

        def load():
            p = manifest_path(self.path, name)
            return MANIFEST.check(read_json(p), path=p) if p.exists() else None
        return self._cached(f"manifest:{name}", load)

    def manifests(self) -> dict[str, dict | None]:
        return {s: self.manifest(s) for s in STAGES}

    def notes(self, stage: str) -> list[str]:
        m = self.manifest(stage) or {}
        return [str(n) for n in m.get("notes") or []]

    # --- JSONL artifacts ---------------------------------------------------------------------
    def rows(self, key: str) -> list[dict]:
        """Rows of one of :data:`ROWS`."""
        if key not in ROWS:
            raise ValueError(f"not a row artifact: '{key}' (one of {', '.join(ROWS)})")
        return self._cached(key, lambda: read_rows(key, artifact_path(self.path, key)))

    def exists(self, key: str) -> bool:
        return artifact_path(self.path, key).exists()

    def inputs(self) -> list[dict]:
        return self.rows("input")

    def critiques(self) -> list[dict]:
        return self.rows("critiques")

    def rewrites(self) -> list[dict]:
        return self.rows("rewrites")

    def incorrect(self) -> list[dict]:
        """The incorrect CoTs found (one per example that has one; each is usable for pairs)."""
        return self.rows("incorrect")

    def sft(self) -> list[dict]:
        return self.rows("sft")

    def pairs(self) -> list[dict]:
        return self.rows("pairs")

    def funnel(self) -> dict:
        """The rethink manifest's ``funnel`` (counts and discards by reason), ``{}`` when absent."""
        raw = (self.manifest("rethink") or {}).get("funnel")
        return raw if isinstance(raw, dict) else {}

    # --- training ------------------------------------------------------------------------------
    def metric_runs(self, stage: str) -> dict[str, list[dict]]:
        """``{variant_or_method: [log rows]}`` of the ``sft`` or ``preference`` stage."""
        name = stage_spec(stage).name
        key = f"{name}_metrics"

        def load():
            return {next(iter(names.values())): read_rows(key, path) for path, names in find_artifacts(self.path, key)}
        return self._cached(f"metrics:{name}", load)

    # --- evaluation ------------------------------------------------------------------------------
    def eval_models(self) -> list[str]:
        """Folders of the evaluated models (with a results file or samples), in the paper's order."""
        found = [names["model"] for key in ("results", "samples") for _, names in find_artifacts(self.path, key)]
        return model_order(sorted(set(found)))

    def results(self) -> list[dict]:
        """Rows ``{model, benchmark, score (%), ci_low, ci_high, n, ...}``: ``comparison.json`` when there
        is one, else every model's ``results.json``."""
        def load():
            comp = artifact_path(self.path, "comparison")
            if comp.exists():
                return parse_comparison(read_json(comp), comp)
            rows: list[dict] = []
            for model in self.eval_models():
                f = artifact_path(self.path, "results", model=model)
                if f.exists():
                    rows.extend(parse_results(read_json(f), f))
            return rows
        return self._cached("results", load)

    def samples(self) -> list[dict]:
        """Every evaluation sample with its ``model`` (as named in ``results.json``) and ``benchmark``."""
        def load():
            out: list[dict] = []
            by_folder: dict[str, list] = {}
            for path, names in find_artifacts(self.path, "samples"):
                by_folder.setdefault(names["model"], []).append((path, names["benchmark"]))
            for folder in self.eval_models():
                res = artifact_path(self.path, "results", model=folder)
                model = read_json(res)["model"] if res.exists() else folder
                for path, bench in by_folder.get(folder, []):
                    for row in read_rows("samples", path):
                        row["model"], row["benchmark"] = model, bench
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
