"""When a finished stage can be skipped: its manifest matches the current parameters and inputs.

A stage's manifest **matches** (and ``cogpo-kit run`` skips the stage unless ``--force``) when all of:

1. ``<run>/<NN_stage>/manifest.json`` exists (it is written last, so the stage finished);
2. **parameters**: for every parameter path the stage depends on (its ``params`` in
   :data:`~cogpo_kit.pipeline.stages.STAGES_SPEC`, e.g. ``crv.critic`` for the critique) that its
   manifest's ``params`` holds, the recorded value equals the current one (secrets compared as
   redacted); so does every other top-level key the stage
   recorded under a name of its own (``student_model`` is ``student.model``; ``prompt_template`` is the one
   parameter of that name), and a recorded key that names no current parameter does not match.
   If none of this compares anything, ``params_hash`` must equal the hash of the current
   :func:`stage_params` or of the whole parameter set. A parameter the kit gained after the stage
   ran (absent from the manifest) is not compared: new parameters default to the old behaviour;
3. **inputs**: every input file recorded in ``inputs`` still exists with the same SHA-256
   (a recorded folder must still exist; a path inside a run folder that has moved since is looked
   up in the run folder, by the run id, where it is now);
4. **upstream**: the stages it reads (its ``upstream`` there) have not been redone since it ran, so
   redoing a stage redoes the stages after it that read its outputs. The runner records the
   SHA-256 of those manifests next to each stage it runs or finds matching (:data:`STATE_FILE`);
   for a stage run outside the runner (a notebook cell by cell) its manifest must be newer than
   theirs.

The run location (``run.output_dir``, ``run.run_id``) is never compared: a run folder that is
moved or copied keeps matching.
Code changes are not detected either: after changing a stage's code, redo it with ``--force``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogpo_kit.io import DataError, atomic_write_json, file_sha256, read_json, stable_hash
from cogpo_kit.pipeline.stage import read_manifest, scrub_secrets
from cogpo_kit.pipeline.stages import manifest_path, stage_dir_name, stage_spec

STATE_FILE = "notebooks/pipeline_state.json"
"""Where the runner remembers, per stage, the manifests it was made from."""

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
    """The parameter path a stage's own top-level key stands for (``student_model`` -> ``student.model``)."""
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
    for path in stage_spec(stage).params:
        value = _get(params_tree, path)
        if value is not _MISSING:
            _set(out, path, value)
    return out


@dataclass(frozen=True)
class Freshness:
    """Whether a stage's manifest matches; ``reason`` says why not (or "up to date")."""

    fresh: bool
    reason: str


def _params_reason(manifest: dict, name: str, params_tree: dict) -> str | None:
    recorded = manifest.get("params") or {}
    current = _plain(scrub_secrets(params_tree))
    checks = [(path, path) for path in stage_spec(name).params]
    for key in recorded if isinstance(recorded, dict) else ():
        if key not in current:  # a name of the stage's own
            path = resolve_key(current, key)
            if path is None:
                return f"recorded parameter '{key}' names no current parameter"
            checks.append((key, path))
    compared = 0
    for rec_path, path in checks:
        old = _get(recorded, rec_path)
        if old is _MISSING:
            continue
        compared += 1
        new = _get(current, path)
        if new is _MISSING or not _matches(_plain(old), new):
            return f"parameter '{path}' changed"
    if compared == 0 and manifest.get("params_hash") not in {stable_hash(stage_params(params_tree, name)),
                                                             stable_hash(params_tree)}:
        return "parameters changed (params_hash differs)"
    return None


def _input_path(run_path: Path, recorded: str) -> Path:
    """A recorded input; one inside a run folder that has moved since is looked up in this run folder."""
    p = Path(recorded)
    if p.exists() or run_path.name not in p.parts:
        return p
    last = len(p.parts) - 1 - p.parts[::-1].index(run_path.name)  # the run folder's name in the old path
    return run_path.joinpath(*p.parts[last + 1:])


def _inputs_reason(manifest: dict, run_path: Path) -> str | None:
    for recorded, digest in (manifest.get("inputs") or {}).items():
        p = _input_path(run_path, recorded)
        if not p.exists():
            return f"input {recorded} is gone"
        if digest != "<dir>" and p.is_file() and file_sha256(p) != digest:
            return f"input {recorded} changed"
    return None


def _manifest_hash(run_path: Path, stage: str) -> str | None:
    p = manifest_path(run_path, stage)
    return file_sha256(p) if p.exists() else None


def _read_state(run_path: Path) -> dict:
    p = run_path / STATE_FILE
    try:
        return read_json(p) if p.exists() else {}
    except DataError:
        return {}


def record_stage(run_path: str | os.PathLike, stage: str) -> None:
    """Remember the manifests ``stage`` was made from (called by the runner after it ran or matched)."""
    run_path = Path(run_path)
    name = stage_dir_name(stage)
    state = _read_state(run_path)
    state[name] = {"manifest": _manifest_hash(run_path, name),
                   "upstream": {u: h for u in stage_spec(name).upstream_folders if (h := _manifest_hash(run_path, u))}}
    atomic_write_json(run_path / STATE_FILE, state)


def _upstream_reason(run_path: Path, name: str) -> str | None:
    entry = _read_state(run_path).get(name)
    if isinstance(entry, dict) and entry.get("manifest") == _manifest_hash(run_path, name):
        seen = entry.get("upstream") or {}
        for up in stage_spec(name).upstream_folders:
            h = _manifest_hash(run_path, up)
            if h is not None and seen.get(up) != h:
                return f"{up} was redone after it"
        return None
    mine = manifest_path(run_path, name).stat().st_mtime  # stage run outside the runner
    for up in stage_spec(name).upstream_folders:
        up_manifest = manifest_path(run_path, up)
        if up_manifest.exists() and up_manifest.stat().st_mtime > mine:
            return f"{up} was redone after it"
    return None


def check_stage(run_path: str | os.PathLike, stage: str, params_tree: dict) -> Freshness:
    """Apply the rules of this module's docstring to one stage."""
    name = stage_dir_name(stage)
    run_path = Path(run_path)
    manifest = read_manifest(run_path, name)
    if manifest is None:
        return Freshness(False, "not run yet")
    reason = (_params_reason(manifest, name, params_tree) or _inputs_reason(manifest, run_path)
              or _upstream_reason(run_path, name))
    return Freshness(reason is None, reason or "up to date")
