"""Trained models as GGUF files for llama.cpp: an HF folder (or adapter chain) exported once, cached by content.

The llama.cpp engine reads GGUF files only; the kit's trained models are HF folders or LoRA adapter
folders. :func:`export_gguf` writes one in float32 under ``cache_root()/gguf/<fingerprint>.f32.gguf``
(the model's content fingerprint, :func:`cogpo_kit.models.adapters.model_fingerprint`, so the same
weights in another folder are exported once and one changed byte gives another file); the engine's
``gguf_weights`` then converts it to f16 / q8_0 once more if asked, as it does any GGUF.

- Weights: adapter chains merged first (:func:`cogpo_kit.models.adapters.full_weights_path`); tensors
  renamed to llama.cpp's names, Q and K rows permuted the way llama.cpp's own converter does
  (transformers undoes that permutation when it reads a GGUF), everything stored as float32.
- Metadata: the architecture's hyperparameters from ``config.json``; the tokenizer (``tokenizer.*``:
  vocabulary, merges, special ids) from a *template* GGUF with the same vocabulary (by default the
  embedded SmolLM2 file the kit's models start from), checked token by token against the folder's
  ``tokenizer.json``; the chat template from the folder (``chat_template.jinja`` or
  ``tokenizer_config.json``), so the prompts are the ones the model was trained on.
- Only plain Llama-architecture models (``model_type: llama``, no biases, no rope scaling, SiLU) are
  exported; anything else is an :class:`ExportError` naming the folder and what is unsupported.

``python -m cogpo_kit.models.gguf_export FOLDER`` prints the exported file; the tests compare the
exported file's logits under llama.cpp with the HF model's (``tests/test_eval_gguf_export.py``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from cogpo_kit.models.specs import DEFAULT_MODEL, ModelNotFoundError, cache_root

FILE_TYPE_F32 = 0
"""``general.file_type`` of a GGUF holding only float32 tensors (llama.cpp's ``LLAMA_FTYPE_ALL_F32``)."""

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
"""HF Llama layer tensor (after ``model.layers.<i>.``) -> llama.cpp name (after ``blk.<i>.``)."""


class ExportError(ValueError):
    """A model cannot be exported to GGUF; the message names the folder and the reason."""


def exported_path(fingerprint: str) -> Path:
    """Where the float32 GGUF of a model with this fingerprint is cached."""
    return cache_root() / "gguf" / f"{fingerprint}.f32.gguf"


def _template_gguf(template: Optional[str]) -> Path:
    from cogpo_kit.models.specs import embedded_gguf

    spec = template or DEFAULT_MODEL
    if spec.startswith("embedded:"):
        return embedded_gguf(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF template {spec}: no such file")
    return path


def _check_config(folder: Path, cfg: dict) -> None:
    problems = []
    if cfg.get("model_type") != "llama":
        problems.append(f"model_type {cfg.get('model_type')!r} (only 'llama' is exported)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        problems.append("attention or MLP biases")
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {cfg.get('hidden_act')!r}")
    rope = cfg.get("rope_scaling") or {}
    params = cfg.get("rope_parameters") or {}
    if rope or params.get("rope_type", "default") != "default":
        problems.append(f"rope scaling {rope or params}")
    if problems:
        raise ExportError(f"{folder}: cannot export to GGUF: {'; '.join(problems)}")


def _chat_template(folder: Path) -> Optional[str]:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        value = json.loads(tc.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(value, str):
            return value
    return None


def _check_vocabulary(folder: Path, tokens: list[str]) -> None:
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no tokenizer.json to check against the GGUF template's vocabulary")
    tok = Tokenizer.from_file(str(path))
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ExportError(f"{folder}: tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, the GGUF "
                          f"template {len(tokens)}: give a template with this model's vocabulary")
    for i, t in enumerate(tokens):
        if tok.id_to_token(i) != t:
            raise ExportError(f"{folder}: token {i} is {tok.id_to_token(i)!r} in tokenizer.json but {t!r} in the "
                              "GGUF template: give a template with this model's vocabulary")


def _permute(w, n_head: int):
    """llama.cpp's row order of a Q or K projection (``convert_hf_to_gguf.py``'s ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_tensors(folder: Path) -> dict:
    """Every tensor of the folder's safetensors files, as float32 numpy arrays."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{folder}: no *.safetensors weights")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name).float().numpy()
    return out


def _gguf_tensors(folder: Path, cfg: dict, weights: dict) -> list[tuple[str, object]]:
    n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    out = [("token_embd.weight", weights.pop("model.embed_tokens.weight"))]
    for i in range(n_layer):
        for hf, gg in _LAYER_TENSORS.items():
            key = f"model.layers.{i}.{hf}"
            if key not in weights:
                raise ExportError(f"{folder}: tensor {key} missing from the weights")
            w = weights.pop(key)
            if hf.startswith("self_attn.q_proj"):
                w = _permute(w, n_head)
            elif hf.startswith("self_attn.k_proj"):
                w = _permute(w, n_kv)
            out.append((f"blk.{i}.{gg}", w))
    out.append(("output_norm.weight", weights.pop("model.norm.weight")))
    head = weights.pop("lm_head.weight", None)
    if head is not None and not cfg.get("tie_word_embeddings", False):
        out.append(("output.weight", head))
    left = sorted(k for k in weights if not k.endswith("rotary_emb.inv_freq"))
    if left:
        raise ExportError(f"{folder}: tensors with no GGUF name: {left[:5]}")
    return out


def write_gguf(folder: str | Path, out: str | Path, *, template: Optional[str] = None) -> Path:
    """Write the full-weights HF folder ``folder`` as a float32 GGUF at ``out`` (see the module docstring)."""
    import gguf
    import numpy as np

    folder, out = Path(folder), Path(out)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{folder}: no config.json (not a full-weights HF folder)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    _check_config(folder, cfg)
    reader = gguf.GGUFReader(str(_template_gguf(template)))
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    _check_vocabulary(folder, tokens)
    tensors = _gguf_tensors(folder, cfg, _load_tensors(folder))

    n_head = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // n_head)
    rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch="llama")
    try:
        w.add_name(folder.name)
        w.add_block_count(int(cfg["num_hidden_layers"]))
        w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
        w.add_embedding_length(int(cfg["hidden_size"]))
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(int(cfg.get("num_key_value_heads") or n_head))
        w.add_rope_freq_base(float(rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        w.add_vocab_size(int(cfg["vocab_size"]))
        w.add_rope_dimension_count(head_dim)
        w.add_file_type(FILE_TYPE_F32)
        for key, field in reader.fields.items():
            if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
                continue
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, list(field.contents()), vtype, sub_type=field.types[-1])
            else:
                w.add_key_value(key, field.contents(), vtype)
        template_text = _chat_template(folder)
        if template_text is None and "tokenizer.chat_template" in reader.fields:
            template_text = reader.fields["tokenizer.chat_template"].contents()
        if template_text is not None:
            w.add_chat_template(template_text)
        for name, arr in tensors:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def export_gguf(spec_or_path: str, *, template: Optional[str] = None) -> str:
    """A float32 GGUF of a model (HF folder, adapter folder or chain, pointer folder), exported once and
    cached under ``cache_root()/gguf/<fingerprint>.f32.gguf``; returns its path."""
    from cogpo_kit.models.adapters import full_weights_path, model_fingerprint

    out = exported_path(model_fingerprint(spec_or_path))
    if out.is_file():
        return str(out)
    return str(write_gguf(full_weights_path(spec_or_path), out, template=template))


def engine_model(spec: str) -> str:
    """The model spec a llama.cpp engine loads for ``spec``: itself when it has a GGUF file (the embedded
    model, a ``.gguf`` file), else its exported GGUF (:func:`export_gguf`)."""
    from cogpo_kit.models.resolve import resolve

    if resolve(spec).gguf_path:
        return spec
    return export_gguf(spec)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cogpo_kit.models.gguf_export MODEL_FOLDER", file=sys.stderr)
        return 2
    print(export_gguf(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
