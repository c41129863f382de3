"""A tiny random Llama-architecture model with the embedded tokenizer, for unit tests.

``tiny:llama`` builds (once, cached) a model of a few million parameters from a config; its
vocabulary and chat template are those of the embedded SmolLM2 tokenizer, so prompts, chat
templates and collators behave exactly as with the real model.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl

TINY_DEFAULTS = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "seed": 0}


def _options(spec: str) -> dict[str, int]:
    body = spec.split(":", 1)[1]
    arch, _, query = body.partition("?")
    if arch != "llama":
        raise ValueError(f"tiny model '{spec}': only 'tiny:llama' is available")
    opts = dict(TINY_DEFAULTS)
    for key, value in parse_qsl(query):
        if key not in opts:
            raise ValueError(f"tiny model '{spec}': unknown option '{key}' (known: {', '.join(opts)})")
        opts[key] = int(value)
    return opts


def build_tiny(spec: str = "tiny:llama") -> Path:
    """Build and cache the tiny model folder for ``spec``; returns the folder."""
    from cogpo_kit.models.resolve import DEFAULT_MODEL, cache_root, load_tokenizer

    opts = _options(spec)
    name = "tiny-llama-" + "-".join(f"{k}{v}" for k, v in sorted(opts.items()))
    out = cache_root() / "tiny" / name
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=opts["hidden"], intermediate_size=opts["intermediate"],
        num_hidden_layers=opts["layers"], num_attention_heads=opts["heads"],
        num_key_value_heads=opts["kv_heads"], max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(opts["seed"])
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
