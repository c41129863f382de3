"""Stage folders, their logs and their ``manifest.json``.

A run lives in ``<output_dir>/<run_id>/``; each stage writes into its folder (declared in
:mod:`cogpo_kit.pipeline.stages`) and records a manifest: the parameters (no secrets), input paths
and hashes, code version, package versions, counts, LLM calls/tokens/cache hits per agent, and wall
time. A stage writes its artifacts with :meth:`Stage.write`, which checks every row against the
artifact's schema (:mod:`cogpo_kit.pipeline.schemas`) before the file is written.

The non-main processes of a distributed training run open the same stage read-only
(``open_stage(..., read_only=True)``): same folder and paths, counts and notes kept in memory, no
log file, no artifact and no manifest written.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from cogpo_kit import __version__
from cogpo_kit.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, file_sha256, read_json, stable_hash
from cogpo_kit.pipeline.schemas import SCHEMAS
from cogpo_kit.pipeline.stages import (LOG_FILE, MANIFEST_FILE, STAGE_BY_NAME, STAGES, artifact_file,
                                       manifest_path, stage_dir_name, stage_path, writer)

__all__ = ["STAGES", "STAGE_BY_NAME", "Stage", "open_stage", "read_manifest", "run_dir", "scrub_secrets",
           "stage_dir_name", "stage_path"]

_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "llama_cpp_python", "vllm", "math-verify",
             "papermill", "pandas", "plotly")

# Keys whose values are never written to a manifest or a log, whatever their nesting.
SECRET_MARKERS = ("api_key", "token", "secret", "password")


def run_dir(params) -> Path:
    """``<output_dir>/<run_id>`` of a :class:`~cogpo_kit.params.RunParams`."""
    return Path(params.run.output_dir) / params.run.run_id


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    commit = res.stdout.strip()
    try:
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return commit + ("-dirty" if dirty else "")


def scrub_secrets(obj: Any) -> Any:
    """Drop values under secret-looking keys (``api_key_env`` names a variable and is kept)."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            lk = str(k).lower()
            if any(m in lk for m in SECRET_MARKERS) and not lk.endswith("_env") and not lk.endswith("tokens"):
                out[k] = "<redacted>"
            else:
                out[k] = scrub_secrets(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v) for v in obj]
    return obj


@dataclass
class Stage:
    """An open stage: its folder, logger, counters, and the manifest written by :meth:`finish`
    (``read_only``: a non-main process's view of it, which writes nothing)."""

    name: str
    path: Path
    params: dict
    inputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    logger: logging.Logger | None = None
    read_only: bool = False

    def file(self, name: str) -> Path:
        return self.path / name

    def artifact(self, key: str, **names: str) -> Path:
        """Path of this stage's artifact ``key`` (``{name}`` parts from ``names``)."""
        if writer(key).folder != self.name:
            raise ValueError(f"artifact '{key}' is written by stage {writer(key).folder}, not {self.name}")
        return self.path / artifact_file(key, **names)

    def write(self, key: str, data: Any, **names: str) -> Path:
        """Write artifact ``key``: rows (``.jsonl``) or a document (``.json``), each checked against its
        schema first, or text (any other file). Returns its path; a read-only stage writes nothing."""
        path = self.artifact(key, **names)
        if self.read_only:
            return path
        schema = SCHEMAS.get(key)
        if path.suffix == ".jsonl":
            rows = list(data)
            if schema is not None:
                for i, row in enumerate(rows, start=1):
                    schema.check(row, path=path, line=i)
            return atomic_write_jsonl(path, rows)
        if path.suffix == ".json":
            if schema is not None:
                schema.check(data, path=path)
            return atomic_write_json(path, data)
        return atomic_write_text(path, data)

    def note(self, text: str) -> None:
        """A plain-language remark for the notebook and report (e.g. "no medium CoTs: no large-gap pairs")."""
        self.notes.append(text)
        if self.logger and not self.read_only:
            self.logger.warning(text)

    def add_input(self, path: str | os.PathLike) -> None:
        if self.read_only:
            return
        p = Path(path)
        self.inputs[str(p)] = file_sha256(p) if p.is_file() else "<dir>"

    def finish(self, **extra: Any) -> dict:
        if self.read_only:
            return {"stage": self.name, "counts": self.counts, "notes": self.notes, "follower": True, **extra}
        manifest = {
            "stage": self.name,
            "params": scrub_secrets(self.params),
            "params_hash": stable_hash(self.params),
            "inputs": self.inputs,
            "inputs_hash": stable_hash(self.inputs),
            "counts": self.counts,
            "agents": scrub_secrets(self.agents),
            "notes": self.notes,
            "code_version": {"cogpo_kit": __version__, "git_commit": git_commit()},
            "packages": package_versions(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "argv": scrub_secrets(sys.argv)},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "wall_time_s": round(time.time() - self.started, 3),
            # unique to this run of the stage: a redone stage's manifest never equals the one it
            # replaces, even within the same second, so the stages reading it are redone too
            "run_uid": uuid.uuid4().hex,
            **extra,
        }
        atomic_write_json(self.path / MANIFEST_FILE, manifest)
        if self.logger:
            self.logger.info("stage %s finished in %.1f s", self.name, manifest["wall_time_s"])
            for h in list(self.logger.handlers):
                h.close()
                self.logger.removeHandler(h)
        return manifest


def open_stage(run_path: str | os.PathLike, stage: str, params: dict, inputs: Iterable[str | os.PathLike] = (),
               *, read_only: bool = False) -> Stage:
    """Create ``<run>/<NN_stage>/`` with a ``stage.log`` and return the :class:`Stage`.

    ``read_only``: the same stage for a process that must not write (a non-main training process):
    nothing is created, its logger writes to no file."""
    name = stage_dir_name(stage)
    path = stage_path(run_path, name)
    if read_only:
        return Stage(name=name, path=path, params=params, read_only=True,
                     logger=logging.getLogger(f"cogpo_kit.stage.follower.{name}"))
    path.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"cogpo_kit.stage.{name}.{id(path)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(path / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    st = Stage(name=name, path=path, params=params, logger=logger)
    for p in inputs:
        st.add_input(p)
    logger.info("stage %s started in %s", name, path)
    return st


def read_manifest(run_path: str | os.PathLike, stage: str) -> dict | None:
    p = manifest_path(run_path, stage)
    return read_json(p) if p.exists() else None
