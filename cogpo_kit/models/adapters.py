"""PEFT adapter folders as models, and content fingerprints of models.

A trained LoRA run leaves an *adapter folder* (``adapter_config.json`` + ``adapter_model.safetensors``,
usually with the tokenizer and chat template) whose base is recorded in ``adapter_config.json``
(``base_model_name_or_path``) and, by the kit's trainers, in ``base_model.json`` (the absolute path, the
path relative to the adapter folder, and the base's fingerprint). A base may itself be an adapter folder
(a preference adapter trained on top of an SFT adapter): a *chain* ends at a plain model spec.

A *pointer folder* (``model_pointer.json`` only) stands for another model unchanged: what a training stage
writes when it has nothing to train (zero rows, zero pairs), instead of a copy of its starting model. It
records the target as an absolute path, a path relative to the pointer folder and the target's
fingerprint; every function here (and :mod:`cogpo_kit.models.resolve`) follows it, and its fingerprint is
the target's.

- :func:`is_adapter_dir`, :func:`adapter_base`, :func:`adapter_chain`: what an adapter folder sits on;
- :func:`is_pointer_dir`, :func:`write_model_pointer`, :func:`follow_pointers`: pointer folders;
- :func:`model_fingerprint`: a content hash of what a model computes (weights, config, generation
  config, tokenizer, chat template; for an adapter its own files plus its base's fingerprint). Same
  content in another folder gives the same fingerprint; any byte changed gives another. File hashes are
  memoised per ``(path, size, mtime_ns)`` in the process and in ``cache_root()/fingerprints.sqlite``,
  so a 15 GB folder is hashed once;
- :func:`load_model_with_adapters`: the base loaded once, the adapters applied in order and merged in
  memory (no copy on disk);
- :func:`full_weights_path`: an HF folder with full weights for consumers that need one on disk (vLLM,
  GGUF conversion): a plain folder is itself; an adapter chain is merged once into
  ``cache_root()/merged/<fingerprint>/`` in the base model's dtype.

Callers normally go through :mod:`cogpo_kit.models.resolve`, which dispatches adapter folders here.
Run the tests with ``.venv/bin/pytest -q tests/test_models_adapters.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Optional

from cogpo_kit.io import atomic_write_json
from cogpo_kit.models.specs import (ModelNotFoundError, cache_root, embedded_gguf, is_hub_id, plain_hf_path)

ADAPTER_CONFIG = "adapter_config.json"
"""PEFT's adapter config (holds ``base_model_name_or_path``)."""
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
"""PEFT's adapter weight files (either one makes a folder an adapter folder)."""
BASE_POINTER = "base_model.json"
"""The kit's record of an adapter's base: ``{"path", "relative", "fingerprint"}``."""
MODEL_POINTER = "model_pointer.json"
"""A pointer folder's only file: ``{"path", "relative", "fingerprint"}`` of the model it stands for."""

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
"""Weight files of a full model folder (plus ``*.bin`` weights and ``*.index.json`` shard maps)."""
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
"""Tokenizer and chat-template files (they change the prompts a model sees)."""
FINGERPRINT_CHARS = 20
"""Hex characters of a fingerprint (80 bits)."""

_log = logging.getLogger(__name__)
_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


# -- adapter folders ------------------------------------------------------------------------------

def is_adapter_dir(path) -> bool:
    """Whether ``path`` is a PEFT adapter folder (``adapter_config.json`` and adapter weights)."""
    try:
        p = Path(path).expanduser()
        return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and any((p / w).is_file() for w in ADAPTER_WEIGHTS)
    except (OSError, ValueError):
        return False


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ModelNotFoundError(f"{path}: expected a JSON object")
    return obj


def _locate(folder: Path, recorded: str, relative: Optional[str], what: str) -> str:
    """``recorded`` (a path, or a spec kept as given) as it exists now: the recorded path, else ``relative``
    to ``folder`` (a moved run folder), else an error naming both."""
    if recorded.startswith(("embedded:", "tiny:")):
        return recorded
    candidate = Path(recorded).expanduser()
    if not candidate.is_absolute():
        candidate = folder / candidate
    if candidate.exists():
        return str(candidate.resolve())
    if relative and (folder / relative).exists():
        return str((folder / relative).resolve())
    if is_hub_id(recorded) and not relative:
        return recorded
    also = f", nor does {folder / relative}" if relative else ""
    raise ModelNotFoundError(f"{folder}: {what} {recorded} does not exist{also}")


def is_pointer_dir(path) -> bool:
    """Whether ``path`` is a pointer folder (``model_pointer.json``, no weights of its own)."""
    try:
        p = Path(path).expanduser()
        return (p.is_dir() and (p / MODEL_POINTER).is_file() and not (p / "config.json").exists()
                and not (p / ADAPTER_CONFIG).exists())
    except (OSError, ValueError):
        return False


def follow_pointers(spec_or_path) -> str:
    """The model a pointer folder stands for (pointers to pointers followed); anything else unchanged."""
    spec = str(spec_or_path)
    seen: list[str] = []
    while is_pointer_dir(spec):
        folder = Path(spec).expanduser().resolve()
        if str(folder) in seen:
            raise ModelNotFoundError(f"model pointer {spec_or_path}: the pointers form a cycle "
                                     f"({' -> '.join(seen + [str(folder)])})")
        seen.append(str(folder))
        pointer = _read_json(folder / MODEL_POINTER)
        if not isinstance(pointer.get("path"), str):
            raise ModelNotFoundError(f"{folder / MODEL_POINTER}: no 'path' of the model it stands for")
        spec = _locate(folder, pointer["path"], pointer.get("relative"), "the model it points to,")
    return spec


def write_model_pointer(folder, target) -> dict:
    """Make ``folder`` (created if missing) a pointer folder standing for ``target`` (a folder or spec);
    returns the pointer written. Writes a few hundred bytes where a copy would write the whole model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pointer = {"path": str(target), "relative": None, "fingerprint": model_fingerprint(target)}
    local = Path(str(target)).expanduser()
    if local.exists():
        pointer["path"] = str(local.resolve())
        pointer["relative"] = os.path.relpath(pointer["path"], folder.resolve())
    atomic_write_json(folder / MODEL_POINTER, pointer)
    return pointer


def adapter_base(path) -> str:
    """The base of an adapter folder: a path or spec (``base_model_name_or_path`` of its config).

    A base path that does not exist (the run folder was moved) is looked for where ``base_model.json``
    says it lies relative to the adapter folder; an error names both places.
    """
    folder = Path(path).expanduser()
    base = _read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ModelNotFoundError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path, so the adapter's base "
                                 "model is unknown")
    pointer = folder / BASE_POINTER
    relative = _read_json(pointer).get("relative") if pointer.is_file() else None
    return _locate(folder, base, relative, f"its base model (base_model_name_or_path of {ADAPTER_CONFIG})")


def adapter_chain(path) -> list[str]:
    """``[plain base spec, first adapter folder, ..., path]`` for an adapter folder (``[path]`` for
    anything else; pointer folders followed). A cycle of adapters is an error naming the folders."""
    chain: list[str] = []
    current = follow_pointers(path)
    while is_adapter_dir(current):
        resolved = str(Path(current).expanduser().resolve())
        if resolved in chain:
            raise ModelNotFoundError(f"adapter {path}: its bases form a cycle ({' -> '.join(chain + [resolved])})")
        chain.append(resolved)
        current = follow_pointers(adapter_base(resolved))
    return [current, *reversed(chain)]


def write_base_pointer(adapter_dir, base) -> dict:
    """Record ``base`` as the base of ``adapter_dir``: an absolute path in ``adapter_config.json``
    (``base_model_name_or_path``) and ``base_model.json`` (absolute path, path relative to the adapter
    folder, fingerprint). ``base`` may be a spec (``embedded:...``, a hub id): then it is kept as given.
    Returns the pointer written."""
    folder = Path(adapter_dir)
    base_str = str(base)
    local = Path(base_str).expanduser()
    if local.exists():
        base_str = str(local.resolve())
        relative = os.path.relpath(base_str, folder.resolve())
    else:
        relative = None
    config = _read_json(folder / ADAPTER_CONFIG)
    config["base_model_name_or_path"] = base_str
    atomic_write_json(folder / ADAPTER_CONFIG, config)
    pointer = {"path": base_str, "relative": relative, "fingerprint": model_fingerprint(base_str)}
    atomic_write_json(folder / BASE_POINTER, pointer)
    return pointer


# -- fingerprints ---------------------------------------------------------------------------------

def _store_path() -> Path:
    return cache_root() / "fingerprints.sqlite"


def _store_get(key: tuple[str, int, int]) -> Optional[str]:
    try:
        with sqlite3.connect(_store_path(), timeout=30) as db:
            row = db.execute("SELECT sha256 FROM files WHERE path=? AND size=? AND mtime_ns=?", key).fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def _store_put(key: tuple[str, int, int], sha: str) -> None:
    try:
        _store_path().parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(_store_path(), timeout=30) as db:
            db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                       "sha256 TEXT)")
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (*key, sha))
    except (OSError, sqlite3.Error) as exc:  # a read-only cache only costs re-hashing
        _log.debug("fingerprint store %s not written: %s", _store_path(), exc)


def file_fingerprint(path) -> str:
    """SHA-256 hex of a file's bytes, memoised per ``(path, size, mtime_ns)`` in the process and on disk."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is None:
        hit = _store_get(key)
        if hit is None:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            hit = h.hexdigest()
            _store_put(key, hit)
        with _memo_lock:
            _memo[key] = hit
    return hit


def _digest(kind: str, parts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256(kind.encode())
    for name, value in parts:
        h.update(b"\n" + name.encode() + b"\t" + value.encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def _is_weight_file(name: str) -> bool:
    if name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json"):
        return True
    return name.endswith(".bin") and (name.startswith(("pytorch_model", "model")))


def model_files(folder) -> list[Path]:
    """The files of a full model folder that decide what it computes: weights (``*.safetensors``,
    ``*.bin`` model weights, shard indexes, ``*.gguf``), ``config.json``, ``generation_config.json``,
    tokenizer files, chat templates and custom modelling code (``*.py``); README, training arguments
    and checkpoints are left out."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        n = p.name
        if _is_weight_file(n) or n in CONFIG_FILES or n in TOKENIZER_FILES or n.endswith(".py"):
            out.append(p)
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        out.extend(sorted(q for q in extra.iterdir() if q.is_file()))
    return out


def folder_fingerprint(folder) -> str:
    """Fingerprint of a full HF model folder (:func:`model_files`, by name relative to the folder)."""
    folder = Path(folder)
    files = model_files(folder)
    return _digest("hf-folder", [(p.relative_to(folder).as_posix(), file_fingerprint(p)) for p in files])


ADAPTER_SET_FIELDS = ("target_modules", "modules_to_save", "exclude_modules", "layers_to_transform")
"""Adapter-config lists that PEFT reads as sets: their order says nothing about what the adapter computes
(and differs between two saves of the same adapter), so the fingerprint sorts them."""


def _adapter_fingerprint(folder: Path) -> str:
    config = _read_json(folder / ADAPTER_CONFIG)
    for key in ("base_model_name_or_path", "revision"):
        config.pop(key, None)  # where the base lies is not what it computes: its fingerprint is below
    for key in ADAPTER_SET_FIELDS:
        if isinstance(config.get(key), list):  # PEFT writes these sets in the order of the process's str hash
            config[key] = sorted(config[key], key=str)
    parts = [("base", model_fingerprint(adapter_base(folder))),
             (ADAPTER_CONFIG, json.dumps(config, sort_keys=True, separators=(",", ":")))]
    for name in (*ADAPTER_WEIGHTS, *TOKENIZER_FILES):
        if (folder / name).is_file():
            parts.append((name, file_fingerprint(folder / name)))
    return _digest("adapter", parts)


def _hub_snapshot(spec: str) -> Optional[str]:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec, local_files_only=True)
    except Exception:  # not in the local hub cache (or no huggingface_hub): the id is all we know
        return None


def model_fingerprint(spec_or_path) -> str:
    """A content hash (``FINGERPRINT_CHARS`` hex characters of a SHA-256) of what a model computes.

    - a full HF folder: its :func:`model_files`;
    - an adapter folder: its adapter config (without the base's location), adapter weights, tokenizer
      files and the fingerprint of its base (chains follow each base);
    - a ``.gguf`` file (or a folder holding only GGUF files: the first, as the engines pick it): the file;
    - ``embedded:<name>``: its GGUF file; ``tiny:...``: the folder it builds;
    - a hub id: the fingerprint of its snapshot in the local hub cache when there is one, else the id
      itself (unchanged: a hub id names a moving revision, so it is no content hash);
    - a pointer folder: the fingerprint of the model it stands for.
    """
    spec = follow_pointers(spec_or_path)
    if spec.startswith("embedded:"):
        return _digest("gguf", [("file", file_fingerprint(embedded_gguf(spec.split(":", 1)[1])))])
    if spec.startswith("tiny:"):
        return folder_fingerprint(plain_hf_path(spec))
    path = Path(spec).expanduser()
    if path.is_file():
        return _digest("gguf" if path.suffix == ".gguf" else "file", [("file", file_fingerprint(path))])
    if path.is_dir():
        if is_adapter_dir(path):
            adapter_chain(path)  # a cycle is an error, not a recursion
            return _adapter_fingerprint(path)
        if (path / "config.json").exists():
            return folder_fingerprint(path)
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return _digest("gguf", [("file", file_fingerprint(ggufs[0]))])
        raise ModelNotFoundError(f"model '{spec}': folder has neither config.json nor a .gguf file (nor "
                                 f"{ADAPTER_CONFIG} with adapter weights)")
    if is_hub_id(spec):
        snap = _hub_snapshot(spec)
        return folder_fingerprint(snap) if snap else spec
    raise ModelNotFoundError(f"model '{spec}': no such file or folder, and not a hub id (org/name)")


# -- loading and merging --------------------------------------------------------------------------

def tokenizer_path(spec_or_path) -> str:
    """The folder (or hub id) whose tokenizer a model uses: an adapter folder's own when it holds one,
    else its base's (down the chain)."""
    spec = str(spec_or_path)
    for link in reversed(adapter_chain(spec)):
        if is_adapter_dir(link):
            if (Path(link) / "tokenizer_config.json").is_file():
                return link
            continue
        return plain_hf_path(link)
    return plain_hf_path(spec)  # pragma: no cover - a chain always ends at a plain spec


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype {dtype!r} unknown (known: auto, {', '.join(table)})")
    return table[dtype]


def load_model_with_adapters(path, dtype="auto", device: Optional[str] = None):
    """The model of ``path`` in memory: the chain's base loaded once, each adapter applied in order and
    merged (``merge_and_unload``); nothing is written to disk. ``dtype``: ``auto`` (the base's stored
    dtype), ``float32``, ``bfloat16``, ``float16`` or a torch dtype. A plain model spec loads as is."""
    from transformers import AutoModelForCausalLM

    chain = adapter_chain(path)
    model = AutoModelForCausalLM.from_pretrained(plain_hf_path(chain[0]), dtype=_torch_dtype(dtype))
    if len(chain) > 1:
        from peft import PeftModel

        for adapter in chain[1:]:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if device:
        model.to(device)
    return model


def merged_dir(spec_or_path) -> Path:
    """Where :func:`full_weights_path` keeps the merged folder of an adapter chain."""
    return cache_root() / "merged" / model_fingerprint(spec_or_path)


def full_weights_path(spec_or_path) -> str:
    """An HF folder (or hub id) with full weights for ``spec_or_path``: a plain model's own folder; for an
    adapter chain, a merged folder built once under ``cache_root()/merged/<fingerprint>/`` (temp folder +
    rename; weights in the base model's dtype, with the model's tokenizer and chat template)."""
    spec = follow_pointers(spec_or_path)
    if not is_adapter_dir(spec):
        return plain_hf_path(spec)
    out = merged_dir(spec)
    if (out / "config.json").exists():
        return str(out)
    from transformers import AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model = load_model_with_adapters(spec, dtype="auto")
    model.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_path(spec)).save_pretrained(str(tmp))
    (tmp / "merged_from.json").write_text(json.dumps({"chain": adapter_chain(spec)}, indent=2), encoding="utf-8")
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / "config.json").exists():  # not another process's finished copy: a real failure
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    _log.info("merged %s into %s", spec, out)
    return str(out)
