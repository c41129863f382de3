"""Typed loading of YAML parameter files into frozen dataclasses.

One YAML file describes one run. Several files may be given: later files win, key by key, and
command-line overrides (``section.key=value``, the value parsed as YAML) win over all files.
Unknown keys and values of the wrong type are errors that name the key and the file.

A file may build on another with a top-level ``extends``::

    # params/paper-qwen2.5-3b.yaml
    extends: paper-qwen2.5-7b.yaml        # relative to this file's folder (or an absolute path)
    run: {run_id: paper-qwen2.5-3b}
    student: {model: Qwen/Qwen2.5-3B-Instruct}
    sft: {model: Qwen/Qwen2.5-3B-Instruct}

The parent is read first (its own ``extends`` too, to any depth), then the file is merged over it
key by key as with several files: mappings merge, anything else (lists included) is replaced, the
extending file wins. ``extends`` may also be a list of files, merged in order before the file itself.
A missing parent, a parent that is not a string, and a cycle (a file that extends itself, directly or
through others) are errors naming the file that says ``extends``. Each file is checked against the
schema with its own name in the messages, and what a run records (``params_dict``, every stage's
``manifest.json``) is the merged result; ``extends`` itself is not a parameter.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A parameter file or override is invalid; the message names the key and its source."""


MOVED_KEYS = {"sft.model": "student.model"}
"""Keys that moved, with their new place (an old params file gets told where)."""
MOVED_WHY = {"sft.model": "one key for the student: SFT starts from the zero-shot model"}


def deep_merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into a copy of ``base``: nested dicts merge, everything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"sft.learning_rate=1e-4"`` -> ``{"sft": {"learning_rate": 0.0001}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ParamsError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': value is not valid YAML ({exc})") from None
    if isinstance(value, str) and value.strip():
        # YAML reads "1e-4" as a string; accept numbers written that way.
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    out: dict = value
    for key in reversed(keys):
        out = {key: out}
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


EXTENDS_KEY = "extends"
"""Top-level key naming the parameter file(s) a file builds on."""


def params_layers(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """``[(file, mapping)]`` of a parameter file and the files it ``extends``, parents first.

    Each mapping is the file's own content without ``extends``; merging them in order gives the file's
    parameters. Raises :class:`ParamsError` for a missing parent or a cycle, naming the extending file.
    """
    path = Path(path)
    resolved = path.resolve()
    data = read_yaml(path)
    parents = data.pop(EXTENDS_KEY, None)
    if parents is None:
        return [(path, data)]
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not parents or not all(isinstance(x, str) and x.strip() for x in parents):
        raise ParamsError(f"{path}: '{EXTENDS_KEY}' must name a parameter file (or a list of them), got {parents!r}")
    chain = _chain + (resolved,)
    layers: list[tuple[Path, dict]] = []
    for name in parents:
        parent = Path(os.path.expanduser(name))
        if not parent.is_absolute():
            parent = path.parent / parent
        if parent.resolve() in chain:
            cycle = " -> ".join(str(p) for p in chain[chain.index(parent.resolve()):]) + f" -> {parent.resolve()}"
            raise ParamsError(f"{path}: '{EXTENDS_KEY}: {name}' makes a cycle ({cycle})")
        if not parent.exists():
            raise ParamsError(f"{path}: '{EXTENDS_KEY}: {name}': parameter file not found ({parent})")
        layers.extend(params_layers(parent, chain))
    layers.append((path, data))
    return layers


def read_params_file(path: str | os.PathLike) -> dict:
    """A parameter file's mapping with its ``extends`` resolved and merged (the file wins)."""
    merged: dict = {}
    for _, data in params_layers(path):
        merged = deep_merge(merged, data)
    return merged


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(f"{source}: '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ParamsError(f"{source}: '{key}' expects a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ParamsError(f"{source}: '{key}' expects a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{source}: '{key}' expects a mapping, got {value!r}")
        vtp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vtp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{source}: '{key}' expects true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ParamsError(f"{source}: '{key}' expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ParamsError(f"{source}: '{key}' expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ParamsError(f"{source}: '{key}' expects a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ParamsError(f"{source}: '{key}' expects {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict, *, source: str = "<params>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: '{prefix or cls.__name__}' expects a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        if name in MOVED_KEYS:
            raise ParamsError(f"{source}: '{name}' is now '{MOVED_KEYS[name]}' ({MOVED_WHY[name]})")
        raise ParamsError(
            f"{source}: unknown key '{name}' (known keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key, source)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{source}: '{prefix or cls.__name__}': {exc}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list structure (tuples become lists) for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def params_dict(params: Any) -> dict:
    """Plain-dict form of a run's parameters or one section of them (for manifests and notebooks);
    holds no secrets by construction. Lives here, beside the loading, so that a stage can record its
    parameters without importing :mod:`cogpo_kit.params.run` and with it every other stage's config."""
    return to_dict(params)


def load(cls: type[T], paths: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
         base: dict | None = None) -> T:
    """Load ``cls`` from YAML files (later wins) and ``key=value`` overrides (win over files).

    A file's ``extends`` (see the module docstring) puts its parents' layers before it. Each layer is
    validated against the schema with its own source named in errors, then merged.
    """
    merged: dict = dict(base or {})
    for path in paths:
        for source, data in params_layers(path):
            from_dict(cls, deep_merge(merged, data), source=str(source))  # validate with this file named
            merged = deep_merge(merged, data)
    for text in overrides:
        data = parse_override(text)
        from_dict(cls, deep_merge(merged, data), source=f"override '{text}'")
        merged = deep_merge(merged, data)
    return from_dict(cls, merged, source=str(paths[-1]) if paths else "<params>")
