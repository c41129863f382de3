"""A tiny random Llama-architecture model with the embedded tokenizer, for unit tests.

``tiny:llama`` builds (once, cached) a model of a few million parameters from a config; its
vocabulary and chat template are those of the embedded SmolLM2 tokenizer, so prompts, chat
templates and collators behave exactly as with the real model. Load it through
:func:`cogpo_kit.models.resolve.hf_path` (``hf_path("tiny:llama")``), which knows the cache and the
tokenizer; this module only builds.

Options go in the query: ``tiny:llama?layers=4&hidden=256`` (see ``TINY_DEFAULTS``), and ``vocab=N`` for an
embedding and LM head of N rows instead of the tokenizer's size (N >= the tokenizer's; the extra rows are never
produced by the tokenizer but count in every softmax, e.g. ``vocab=152064`` for Qwen2.5's width in memory benchmarks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

from cogpo_kit.io import replace_dir

TINY_DEFAULTS = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "seed": 0}
# options with no default (absent: the tokenizer's size); named in the folder only when given
TINY_OPTIONAL = ("vocab",)


def _options(spec: str) -> dict[str, int]:
    body = spec.split(":", 1)[1]
    arch, _, query = body.partition("?")
    if arch != "llama":
        raise ValueError(f"tiny model '{spec}': only 'tiny:llama' is available")
    opts = dict(TINY_DEFAULTS)
    for key, value in parse_qsl(query):
        if key not in opts and key not in TINY_OPTIONAL:
            known = ", ".join([*opts, *TINY_OPTIONAL])
            raise ValueError(f"tiny model '{spec}': unknown option '{key}' (known: {known})")
        opts[key] = int(value)
    return opts


def tiny_folder_name(spec: str) -> str:
    """The cache folder name of ``spec`` (one per set of options)."""
    return "tiny-llama-" + "-".join(f"{k}{v}" for k, v in sorted(_options(spec).items()))


def build_tiny(spec: str, root: str | os.PathLike, tokenizer: Callable[[], Any]) -> Path:
    """Build the tiny model folder for ``spec`` under ``root`` once; returns the folder.

    ``tokenizer()`` returns the tokenizer to build it with (its vocabulary sets the model's); it is
    called only when the folder does not exist yet. :func:`cogpo_kit.models.resolve.hf_path` passes
    the embedded model's tokenizer and the kit's cache.
    """
    opts = _options(spec)
    out = Path(root) / tiny_folder_name(spec)
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    vocab = opts.get("vocab", len(tok))
    if vocab < len(tok):
        raise ValueError(f"tiny model '{spec}': vocab={vocab} is below the tokenizer's {len(tok)} tokens")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=opts["hidden"], intermediate_size=opts["intermediate"],
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
    return replace_dir(tmp, out)
