"""Loading GGUF models into llama.cpp: CPU buffer types, and weights converted once to a faster type.

``model_params()`` switches llama.cpp's extra CPU buffer types off where the CPU reports AMX (see
:func:`use_extra_buffers`); ``converted_gguf()`` writes a GGUF's weights in another type once and
caches the file; ``auto_weights()`` picks that type for models whose stored type has no fast
batched CPU kernels.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cogpo_kit.engines.base import EngineError


def use_extra_buffers() -> bool:
    """Whether llama.cpp may use its extra CPU buffer types (AMX / weight repacking).

    Some containers report AMX in the CPU flags without enabling its register state, and
    llama.cpp's AMX kernels then die with SIGILL. They are switched off where the CPU reports
    AMX, unless ``COGPO_LLAMA_EXTRA_BUFTS=1`` (``=0`` switches them off everywhere).
    """
    env = os.environ.get("COGPO_LLAMA_EXTRA_BUFTS")
    if env is not None:
        return env.strip() == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_tile" not in line.split()
    except OSError:
        pass
    return True


def quiet_llama_logs() -> None:
    """Show only llama.cpp's errors, unless the ``llama-cpp-python`` logger has been configured.

    llama-cpp-python prints every llama.cpp log line (about a thousand per engine load) to
    stderr unless that logger's level is set; its ``Llama(verbose=False)`` sets it, the lower-level
    objects the engine uses do not. Without this, terminals and executed notebooks fill with them.
    """
    log = logging.getLogger("llama-cpp-python")
    if log.level == logging.NOTSET:
        log.setLevel(logging.ERROR)


def model_params():
    """llama.cpp model parameters with :func:`use_extra_buffers` applied."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = use_extra_buffers()
    return params


def auto_weights(model) -> str:
    """``f32`` for small models stored in a type without fast batched CPU kernels, else ``as_is``."""
    import llama_cpp

    slow = {llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1}
    try:
        ftype = int(model.metadata().get("general.file_type", "-1"))
    except ValueError:
        return "as_is"
    return "f32" if ftype in slow and llama_cpp.llama_model_n_params(model.model) < 1e9 else "as_is"


def converted_gguf(path: str, weights: str) -> str:
    """``path`` with its weights stored as ``weights`` (f32, f16, q8_0): converted once, cached."""
    if weights == "as_is":
        return path
    import llama_cpp

    from cogpo_kit.models.resolve import cache_root

    types = {"f32": llama_cpp.LLAMA_FTYPE_ALL_F32, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
             "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}
    if weights not in types:
        raise EngineError(f"llamacpp: gguf_weights '{weights}' unknown (known: as_is, {', '.join(types)})")
    src = Path(path)
    st = src.stat()
    out = cache_root() / "gguf" / f"{src.stem}.{st.st_size}.{int(st.st_mtime)}.{weights}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = types[weights], True
        try:
            if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
                raise EngineError(f"llamacpp: converting {src} to {weights} failed")
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    return str(out)


def load_model(internals, gguf_path: str, gguf_weights: str):
    """The model at ``gguf_path`` with its weights as ``gguf_weights`` (``auto``: :func:`auto_weights`);
    returns ``(model, weights)``, ``weights`` being the type actually used (``as_is`` or a converted one)."""
    model = internals.LlamaModel(path_model=gguf_path, params=model_params(), verbose=False)
    weights = auto_weights(model) if gguf_weights == "auto" else gguf_weights
    if weights != "as_is":
        gguf = converted_gguf(gguf_path, weights)
        model.close()
        model = internals.LlamaModel(path_model=gguf, params=model_params(), verbose=False)
    return model, weights


def parallel_sequences(model, batch_size: int, kv_cache_mb: int, context_length: int) -> int:
    """Sequences decoded together: ``batch_size``, fewer if their KV streams of ``context_length``
    tokens exceed ``kv_cache_mb``."""
    import llama_cpp as llama

    m = model.model
    n_embd, n_head = llama.llama_model_n_embd(m), max(1, llama.llama_model_n_head(m))
    per_token = 2 * llama.llama_model_n_layer(m) * (n_embd // n_head) * llama.llama_model_n_head_kv(m) * 2
    fit = int(kv_cache_mb) * 2**20 // max(1, per_token * int(context_length))
    return max(1, min(int(batch_size), fit))


def context_params(n_parallel: int, n_ctx: int, n_batch: int, threads: int):
    """llama.cpp context parameters: ``n_parallel`` KV streams of ``n_ctx`` tokens (one per sequence,
    attention only over its own cells), steps of up to ``n_batch`` tokens, ``threads`` CPU threads."""
    import llama_cpp

    cp = llama_cpp.llama_context_default_params()
    cp.n_seq_max = n_parallel
    cp.n_ctx = n_ctx * cp.n_seq_max
    cp.n_batch = n_batch
    cp.n_ubatch = n_batch
    cp.kv_unified = False  # one KV stream per sequence: attention only over its own cells
    # Flash attention off: on 2 cores (f32 weights, the 16 prompts of benchmarks/engines.py, 13 sequences a
    # step) a decode step took 343 CPU-ms with it against 213 without (benchmarks/results/engines.md)
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    return cp
