"""The pipeline's stages, each declared once: its folder, its entry function, the parameters its
outputs depend on, the stages whose outputs it reads, and the files it writes.

Everything that needs to know about a stage reads :data:`STAGES_SPEC`: the runner and the
freshness rules (:mod:`cogpo_kit.pipeline.freshness`), the notebooks and their generator, the
stages themselves when they open their folder or read another stage's files, and the readers of
:mod:`cogpo_kit.viz`. Stage folder names are written in this module only; elsewhere a stage is
named by its short name (``"sft"``) and its folder looked up here::

    stage_path(run, "sft")                       # <run>/04_sft
    artifact_path(run, "samples", model="sft", benchmark="gsm8k")
                                                 # <run>/06_evaluate/sft/samples_gsm8k.jsonl

Each file a stage writes is an *artifact* with a key (``"pairs"``), a path inside the stage folder
(with ``{placeholders}`` for the parts chosen at run time) and a schema of the same key in
:mod:`cogpo_kit.pipeline.schemas`. Every stage also writes ``manifest.json`` (written last) and
``stage.log``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

MANIFEST_FILE = "manifest.json"
"""Written last by every stage: a stage whose folder holds it has finished."""
LOG_FILE = "stage.log"
"""Every stage's log file."""


@dataclass(frozen=True, eq=False)
class StageSpec:
    """One stage of the pipeline."""

    folder: str
    """Folder inside the run folder, ``NN_name``; it orders the stages."""
    entry: tuple[str, str]
    """``(module, function)`` of its entry point: ``function(params) -> manifest``."""
    params: tuple[str, ...]
    """Parameter paths (``section`` or ``section.key``) its outputs depend on."""
    upstream: tuple[str, ...]
    """Short names of the stages whose outputs it reads."""
    files: Mapping[str, str]
    """Artifact key -> path inside its folder (``{name}`` parts are filled in at run time)."""

    @property
    def name(self) -> str:
        """Short name: ``"04_sft"`` -> ``"sft"``."""
        return self.folder.split("_", 1)[1]

    @property
    def number(self) -> int:
        return int(self.folder.split("_", 1)[0])

    @property
    def upstream_folders(self) -> tuple[str, ...]:
        return tuple(stage_spec(n).folder for n in self.upstream)


STAGES_SPEC: tuple[StageSpec, ...] = (
    StageSpec("01_critique", ("cogpo_kit.crv.stage", "run_critique"),
              params=("run.seed", "data", "crv.critic", "crv.votes", "crv.early_exit"),
              upstream=(),
              files={"input": "input.jsonl", "critiques": "critiques.jsonl", "rejects": "rejects.jsonl"}),
    StageSpec("02_rethink", ("cogpo_kit.crv.stage", "run_rethink"),
              params=("run.seed", "data", "crv", "student"),
              upstream=("critique",),
              files={"rewrites": "rewrites.jsonl", "incorrect": "incorrect.jsonl", "sft": "sft.jsonl",
                     "sft_level": "sft_{level}.jsonl"}),
    StageSpec("03_pairs", ("cogpo_kit.pairs.stage", "run_pairs"),
              params=("run.seed", "pairs", "student.model"),
              upstream=("critique", "rethink"),
              files={"pairs": "pairs.jsonl"}),
    StageSpec("04_sft", ("cogpo_kit.training.stage", "run_sft"),
              params=("run.seed", "student.model", "sft"),
              upstream=("critique", "rethink"),
              files={"sft_model": "{variant}/model", "sft_metrics": "{variant}/metrics.jsonl",
                     "sft_launch_params": "launch/params.yaml", "sft_launch_output": "launch/output.log"}),
    StageSpec("05_preference", ("cogpo_kit.training.stage", "run_preference"),
              params=("run.seed", "preference"),
              upstream=("pairs", "sft"),
              files={"preference_model": "{method}/model", "preference_metrics": "{method}/metrics.jsonl",
                     "ref_logps": "ref_logps.jsonl", "preference_launch_params": "launch/params.yaml",
                     "preference_launch_output": "launch/output.log"}),
    StageSpec("06_evaluate", ("cogpo_kit.evaluation.stage", "run_evaluate"),
              params=("run.seed", "eval", "student.model", "sft.variants", "preference.methods",
                      "preference.beta_sweep"),
              upstream=("sft", "preference"),
              files={"results": "{model}/results.json", "samples": "{model}/samples_{benchmark}.jsonl",
                     "comparison": "comparison.json", "comparison_csv": "comparison.csv"}),
    StageSpec("07_report", ("cogpo_kit.viz.report", "run_report"),
              params=("run.description", "report"),
              upstream=("critique", "rethink", "pairs", "sft", "preference", "evaluate"),
              files={"report": "report.html", "figures": "figures"}),
)

STAGES: tuple[str, ...] = tuple(s.folder for s in STAGES_SPEC)
"""Stage folders in pipeline order."""
STAGE_BY_NAME: dict[str, str] = {s.name: s.folder for s in STAGES_SPEC}
"""Short name -> folder."""

_BY_KEY: dict[str, StageSpec] = {**{s.name: s for s in STAGES_SPEC}, **{s.folder: s for s in STAGES_SPEC}}
_WRITER: dict[str, StageSpec] = {key: s for s in STAGES_SPEC for key in s.files}
assert len(_WRITER) == sum(len(s.files) for s in STAGES_SPEC), "an artifact key is declared by two stages"


def stage_spec(stage: str) -> StageSpec:
    """The stage named ``"sft"`` or ``"04_sft"``; ``ValueError`` for an unknown name."""
    try:
        return _BY_KEY[stage]
    except (KeyError, TypeError):
        raise ValueError(f"unknown stage '{stage}' (known: {', '.join(STAGE_BY_NAME)})") from None


def stage_dir_name(stage: str) -> str:
    """``"critique"`` or ``"01_critique"`` -> ``"01_critique"``."""
    return stage_spec(stage).folder


def stage_path(run_path: str | os.PathLike, stage: str) -> Path:
    """``<run>/<NN_stage>``."""
    return Path(run_path) / stage_dir_name(stage)


def manifest_path(run_path: str | os.PathLike, stage: str) -> Path:
    return stage_path(run_path, stage) / MANIFEST_FILE


def writer(key: str) -> StageSpec:
    """The stage that writes artifact ``key``."""
    try:
        return _WRITER[key]
    except KeyError:
        raise ValueError(f"unknown artifact '{key}' (known: {', '.join(_WRITER)})") from None


def artifact_keys() -> tuple[str, ...]:
    return tuple(_WRITER)


def artifact_file(key: str, **names: str) -> str:
    """Path of artifact ``key`` inside its stage folder, its ``{name}`` parts filled from ``names``."""
    template = writer(key).files[key]
    try:
        return template.format(**names)
    except KeyError as exc:
        raise ValueError(f"artifact '{key}' ({template}) needs {exc.args[0]}=...") from None


def artifact_path(run_path: str | os.PathLike, key: str, **names: str) -> Path:
    """``<run>/<stage folder>/<artifact file>``."""
    return stage_path(run_path, writer(key).folder) / artifact_file(key, **names)


def artifact_pattern(key: str) -> re.Pattern:
    """A regular expression matching the artifact's path inside its stage folder (``/`` separated);
    each ``{name}`` part is a named group of one path component."""
    parts = re.split(r"\{(\w+)\}", writer(key).files[key])
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(f"^{rx}$")


def find_artifacts(run_path: str | os.PathLike, key: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """Every existing file (or folder) of artifact ``key`` in a run: ``(path, {name: value})``, sorted by path."""
    spec = writer(key)
    root = stage_path(run_path, spec.folder)
    template = spec.files[key]
    if "{" not in template:
        path = root / template
        if path.exists():
            yield path, {}
        return
    if not root.is_dir():
        return
    rx = artifact_pattern(key)
    depth = template.count("/")
    glob = "/".join(["*"] * (depth + 1))
    for path in sorted(root.glob(glob)):
        m = rx.match(path.relative_to(root).as_posix())
        if m:
            yield path, m.groupdict()
