"""The stage registry: one declaration per stage that everything else reads, folder names written in
one module only, and one schema per artifact file."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from cogpo_kit.params import load_params, params_dict
from cogpo_kit.pipeline.schemas import SCHEMAS
from cogpo_kit.pipeline.stages import (STAGES, STAGES_SPEC, artifact_file, artifact_keys, artifact_path,
                                       artifact_pattern, find_artifacts, stage_spec, writer)

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "cogpo_kit" / "pipeline" / "stages.py"


def test_stages_in_order_with_unique_names():
    assert [s.number for s in STAGES_SPEC] == list(range(1, len(STAGES_SPEC) + 1))
    assert len({s.name for s in STAGES_SPEC}) == len(STAGES) == len(set(STAGES))
    assert [stage_spec(s.name) for s in STAGES_SPEC] == [stage_spec(s.folder) for s in STAGES_SPEC] == list(STAGES_SPEC)


def test_entry_points_exist():
    for spec in STAGES_SPEC:
        module, name = spec.entry
        assert callable(getattr(importlib.import_module(module), name)), spec.folder


def test_params_are_parameter_paths():
    tree = params_dict(load_params([]))
    for spec in STAGES_SPEC:
        for path in spec.params:
            node = tree
            for key in path.split("."):
                assert isinstance(node, dict) and key in node, f"{spec.folder}: '{path}' is no parameter"
                node = node[key]


def test_upstream_stages_come_before():
    for spec in STAGES_SPEC:
        assert all(stage_spec(u).number < spec.number for u in spec.upstream), spec.folder
    assert stage_spec("report").upstream_folders == STAGES[:-1]


def test_every_data_artifact_has_a_schema_and_every_schema_an_artifact():
    keys = set(artifact_keys())
    data = {k for k in keys if artifact_file(k, **_names(k)).endswith((".json", ".jsonl"))}
    assert data == set(SCHEMAS) and set(SCHEMAS) <= keys
    for key, sch in SCHEMAS.items():
        assert len(sch.names) == len(set(sch.names)), key


def _names(key: str) -> dict:
    return {n: "x" for n in artifact_pattern(key).groupindex}


def test_artifact_paths_and_lookup(tmp_path):
    p = artifact_path(tmp_path, "samples", model="sft", benchmark="gsm8k")
    assert p.parent.parent.name == writer("samples").folder == stage_spec("evaluate").folder
    assert p.name == "samples_gsm8k.jsonl" and p.parent.name == "sft"
    p.parent.mkdir(parents=True)
    p.write_text("")
    (p.parent / "notes.txt").write_text("")
    assert list(find_artifacts(tmp_path, "samples")) == [(p, {"model": "sft", "benchmark": "gsm8k"})]
    assert list(find_artifacts(tmp_path, "comparison")) == []
    with pytest.raises(ValueError, match="needs model"):
        artifact_path(tmp_path, "results")
    with pytest.raises(ValueError, match="unknown artifact"):
        writer("nope")


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        STAGES_SPEC[0].folder = "x"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings or other bare string statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare]


def test_stage_folders_are_written_in_the_registry_only():
    """No module of the kit (nor a notebook's code) spells a stage folder: they look it up."""
    modules = [*sorted((ROOT / "cogpo_kit").rglob("*.py")), *sorted((ROOT / "notebooks").glob("*.py"))]
    found = {}
    for path in modules:
        hits = [f"{path.relative_to(ROOT)}:{line}" for line, text in _string_literals(path)
                for folder in STAGES if folder in text]
        if hits:
            found[path] = hits
    assert list(found) == [REGISTRY], found
    assert len(found[REGISTRY]) == len(STAGES)  # once each
