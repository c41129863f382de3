"""When a finished stage can be skipped: its manifest matches the current parameters and inputs.

A stage's manifest **matches** (and ``cogpo-kit run`` skips the stage unless ``--force``) when all of:

1. ``<run>/<NN_stage>/manifest.json`` exists (it is written last, so the stage finished);
2. **parameters**: for every parameter path the stage depends on (:data:`STAGE_PARAMS`, e.g.
   ``crv.critic`` for the critique) that its manifest's ``params`` holds, the recorded value equals
   the current one (secrets compared as redacted); so does every other top-level key the stage
   recorded under a name of its own (``sft_model`` is ``sft.model``; ``prompt_template`` is the one
   parameter of that name), and a recorded key that names no current parameter does not match.
   If none of this compares anything, ``params_hash`` must equal the hash of the current
   :func:`stage_params` or of the whole parameter set. A parameter the kit gained after the stage
   ran (absent from the manifest) is not compared: new parameters default to the old behaviour;
3. **inputs**: every input file recorded in ``inputs`` still exists with the same SHA-256
   (a recorded folder must still exist);
4. **upstream**: the manifest is newer than the manifests of the stages it reads
   (:data:`UPSTREAM`), so redoing a stage redoes the stages after it that read its outputs.

The run location (``run.output_dir``, ``run.run_id``) is never compared: moving a run folder keeps it valid.
Code changes are not detected either: after changing a stage's code, redo it with ``--force``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogpo_kit.io import file_sha256, stable_hash
from cogpo_kit.pipeline.stage import STAGES, read_manifest, scrub_secrets, stage_dir_name

# Parameter paths each stage's outputs depend on.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "01_critique": ("run.seed", "data", "crv.critic", "crv.votes", "crv.early_exit"),
    "02_rethink": ("run.seed", "data", "crv", "student"),
    "03_pairs": ("run.seed", "pairs", "student.model"),
    "04_sft": ("run.seed", "sft"),
    "05_preference": ("run.seed", "preference"),
    "06_evaluate": ("run.seed", "eval", "student.model", "sft.variants", "preference.methods",
                    "preference.beta_sweep"),
    "07_report": ("run.description", "report"),
}

# Stages whose outputs each stage reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "01_critique": (),
    "02_rethink": ("01_critique",),
    "03_pairs": ("01_critique", "02_rethink"),
    "04_sft": ("01_critique", "02_rethink"),
    "05_preference": ("03_pairs", "04_sft"),
    "06_evaluate": ("04_sft", "05_preference"),
    "07_report": STAGES[:-1],
}

_MISSING = object()


def _get(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix]
    return [p for k, v in tree.items() for p in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]


def resolve_key(tree: dict, key: str) -> str | None:
    """The parameter path a stage's own top-level key stands for (``sft_model`` -> ``sft.model``)."""
    if "_" in key:
        dotted = key.replace("_", ".", 1)
        if _get(tree, dotted) is not _MISSING:
            return dotted
    named = [p for p in _leaves(tree) if p.rsplit(".", 1)[-1] == key]
    return named[0] if len(named) == 1 else None


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, as they are in a manifest."""
    return json.loads(json.dumps(obj, default=str))


def _matches(old: Any, new: Any) -> bool:
    """Recorded ``old`` equals current ``new``; keys only ``new`` has (parameters added since) are ignored."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _matches(v, new[k]) for k, v in old.items())
    return old == new


def stage_params(params_tree: dict, stage: str) -> dict:
    """The part of a parameter dict (``params_dict(params)``) that ``stage`` depends on."""
    out: dict = {}
    for path in STAGE_PARAMS[stage_dir_name(stage)]:
        value = _get(params_tree, path)
        if value is not _MISSING:
            _set(out, path, value)
    return out


@dataclass(frozen=True)
class Freshness:
    """Whether a stage's manifest matches; ``reason`` says why not (or "up to date")."""

    fresh: bool
    reason: str


def check_stage(run_path: str | os.PathLike, stage: str, params_tree: dict) -> Freshness:
    """Apply the rules of this module's docstring to one stage."""
    name = stage_dir_name(stage)
    run_path = Path(run_path)
    manifest = read_manifest(run_path, name)
    if manifest is None:
        return Freshness(False, "not run yet")
    recorded = manifest.get("params") or {}
    current = _plain(scrub_secrets(params_tree))
    checks = [(path, path) for path in STAGE_PARAMS[name]]
    for key in recorded if isinstance(recorded, dict) else ():
        if key not in current:  # a name of the stage's own
            path = resolve_key(current, key)
            if path is None:
                return Freshness(False, f"recorded parameter '{key}' names no current parameter")
            checks.append((key, path))
    compared = 0
    for rec_path, path in checks:
        old = _get(recorded, rec_path)
        if old is _MISSING:
            continue
        compared += 1
        new = _get(current, path)
        if new is _MISSING or not _matches(_plain(old), new):
            return Freshness(False, f"parameter '{path}' changed")
    if compared == 0:
        hashes = {stable_hash(stage_params(params_tree, name)), stable_hash(params_tree)}
        if manifest.get("params_hash") not in hashes:
            return Freshness(False, "parameters changed (params_hash differs)")
    for path, digest in (manifest.get("inputs") or {}).items():
        p = Path(path)
        if not p.exists():
            return Freshness(False, f"input {path} is gone")
        if digest != "<dir>" and p.is_file() and file_sha256(p) != digest:
            return Freshness(False, f"input {path} changed")
    mine = (run_path / name / "manifest.json").stat().st_mtime
    for up in UPSTREAM[name]:
        up_manifest = run_path / up / "manifest.json"
        if up_manifest.exists() and up_manifest.stat().st_mtime > mine:
            return Freshness(False, f"{up} was redone after it")
    return Freshness(True, "up to date")
