"""A student model's shape (layers, widths, vocabulary) and its parameter counts, without loading weights.

:func:`model_shape` reads the model's ``config.json`` wherever it is on this machine: a local HF folder, the
embedded model's converted folder, a ``tiny:llama`` test model (its options give the shape even before it is
built), an adapter or pointer folder (its base's), or a hub id found in the local Hugging Face cache. A hub id
that is not on this machine falls back to :data:`BUILTIN`, the public ``config.json`` values of the paper's
students (and the embedded model), and says so (``source``). Nothing is downloaded.

>>> shape, source = model_shape("Qwen/Qwen2.5-7B-Instruct")
>>> round(shape.params() / 1e9, 2), source
(7.62, 'shape from the built-in table (Qwen/Qwen2.5-7B-Instruct config.json)')
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from cogpo_kit.models.specs import ModelNotFoundError


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer (Llama / Qwen2 / Mistral layout) that memory and FLOPs depend on."""

    hidden: int
    """``hidden_size``."""
    layers: int
    """``num_hidden_layers``."""
    heads: int
    """``num_attention_heads``."""
    kv_heads: int
    """``num_key_value_heads`` (grouped-query attention)."""
    intermediate: int
    """``intermediate_size`` of the gated MLP (gate, up and down projections)."""
    vocab: int
    """``vocab_size``: rows of the embedding and of the LM head."""
    tied: bool
    """``tie_word_embeddings``: the LM head is the embedding matrix (counted once)."""
    head_dim: Optional[int] = None
    """``head_dim`` where the config sets it (``None``: ``hidden / heads``)."""
    qkv_bias: bool = False
    """Biases on the q, k and v projections (Qwen2)."""
    model_type: str = ""
    """``model_type`` of the config (shown only)."""

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the query projection's output (``heads x head_dim``)."""
        return self.heads * self.dim_head

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection's output."""
        return self.kv_heads * self.dim_head

    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention, gated MLP, two RMSNorms."""
        attn = self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + self.q_dim * self.hidden
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def head_params(self) -> int:
        """The LM head (= the embedding when tied): ``vocab x hidden``."""
        return self.vocab * self.hidden

    def params(self) -> int:
        """All parameters (the tied head counted once)."""
        return self.head_params() * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden

    def matmul_params(self) -> int:
        """Parameters a token multiplies through (every layer and the LM head; not the embedding lookup): the N of
        the usual ``6 N`` FLOPs per trained token."""
        return self.layers * self.layer_params() + self.head_params()

    def lora_params(self, r: int, targets: Sequence[str]) -> int:
        """Parameters of rank-``r`` LoRA adapters on the named projections of every layer (``r x (in + out)`` each)."""
        dims = {"q_proj": (self.hidden, self.q_dim), "k_proj": (self.hidden, self.kv_dim),
                "v_proj": (self.hidden, self.kv_dim), "o_proj": (self.q_dim, self.hidden),
                "gate_proj": (self.hidden, self.intermediate), "up_proj": (self.hidden, self.intermediate),
                "down_proj": (self.intermediate, self.hidden)}
        per_layer = sum(r * (dims[t][0] + dims[t][1]) for t in targets if t in dims)
        return self.layers * per_layer

    def to_dict(self) -> dict:
        return {**asdict(self), "params": self.params(), "matmul_params": self.matmul_params()}


def _builtin(hidden, layers, heads, kv_heads, intermediate, vocab, tied, *, qkv_bias=False, model_type="",
             head_dim=None) -> ModelShape:
    return ModelShape(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
                      vocab=vocab, tied=tied, head_dim=head_dim, qkv_bias=qkv_bias, model_type=model_type)


BUILTIN: dict[str, ModelShape] = {
    # Values of each model's public config.json on the Hugging Face hub (hidden_size, num_hidden_layers,
    # num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, tie_word_embeddings); Qwen2
    # models carry biases on q/k/v.
    "Qwen/Qwen2.5-3B-Instruct": _builtin(2048, 36, 16, 2, 11008, 151936, True, qkv_bias=True, model_type="qwen2"),
    "Qwen/Qwen2.5-7B-Instruct": _builtin(3584, 28, 28, 4, 18944, 152064, False, qkv_bias=True, model_type="qwen2"),
    "Qwen/Qwen2.5-14B-Instruct": _builtin(5120, 48, 40, 8, 13824, 152064, False, qkv_bias=True, model_type="qwen2"),
    "meta-llama/Llama-3.1-8B-Instruct": _builtin(4096, 32, 32, 8, 14336, 128256, False, model_type="llama"),
    "mistralai/Mistral-7B-Instruct-v0.3": _builtin(4096, 32, 32, 8, 14336, 32768, False, model_type="mistral",
                                                   head_dim=128),
    # the embedded model: HuggingFaceTB/SmolLM2-135M-Instruct's config.json
    "HuggingFaceTB/SmolLM2-135M-Instruct": _builtin(576, 30, 9, 3, 1536, 49152, True, model_type="llama"),
}
"""The paper's students (and the embedded model) by hub id: shapes for planning where the hub is out of reach."""

EMBEDDED_HUB_ID = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Embedded model name -> the hub id of the model it carries (its shape in :data:`BUILTIN`)."""


def shape_from_config(config: dict) -> ModelShape:
    """A :class:`ModelShape` from a ``config.json`` dict (the text config of a multimodal model)."""
    cfg = config.get("text_config") or config
    try:
        hidden, layers, heads = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        intermediate, vocab = int(cfg["intermediate_size"]), int(cfg["vocab_size"])
    except KeyError as exc:
        raise ValueError(f"config.json has no {exc.args[0]!r}: not a decoder-only transformer the planner knows")
    model_type = str(cfg.get("model_type") or "")
    return ModelShape(hidden=hidden, layers=layers, heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                      intermediate=intermediate, vocab=vocab,
                      tied=bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
                      head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
                      qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")), model_type=model_type)


def _read(path: Path) -> ModelShape:
    return shape_from_config(json.loads(path.read_text(encoding="utf-8")))


def _tiny_shape(spec: str) -> tuple[ModelShape, str]:
    from cogpo_kit.models.specs import cache_root
    from cogpo_kit.models.tiny import _options, tiny_folder_name

    folder = cache_root() / "tiny" / tiny_folder_name(spec)
    if (folder / "config.json").exists():
        return _read(folder / "config.json"), f"{folder / 'config.json'}"
    opts = _options(spec)
    vocab = opts.get("vocab", BUILTIN[EMBEDDED_HUB_ID["smollm2-135m-instruct"]].vocab)
    shape = ModelShape(hidden=opts["hidden"], layers=opts["layers"], heads=opts["heads"], kv_heads=opts["kv_heads"],
                       intermediate=opts["intermediate"], vocab=vocab, tied=True, model_type="llama")
    return shape, f"{spec} options (not built yet)"


def model_shape(spec: str) -> tuple[ModelShape, str]:
    """``(shape, source)`` of a model spec; ``source`` says where the numbers came from.

    Raises :class:`~cogpo_kit.models.specs.ModelNotFoundError` for a spec whose config is neither on this machine
    nor in :data:`BUILTIN`."""
    if spec.startswith("tiny:"):
        return _tiny_shape(spec)
    if spec.startswith("embedded:"):
        name = spec.split(":", 1)[1]
        from cogpo_kit.models.specs import embedded_hf_dir

        config = embedded_hf_dir(name) / "config.json"
        if config.exists():
            return _read(config), str(config)
        hub = EMBEDDED_HUB_ID.get(name)
        if hub is None:
            raise ModelNotFoundError(f"model '{spec}': unknown embedded model, no shape to plan with")
        return BUILTIN[hub], f"shape from the built-in table ({hub} config.json)"
    path = Path(spec).expanduser()
    if path.is_dir():
        from cogpo_kit.models.adapters import adapter_chain

        chain = adapter_chain(str(path))  # [plain base, adapters...]; pointer folders followed
        if len(chain) > 1 or chain[0] != str(path):
            shape, source = model_shape(chain[0])
            return shape, f"{source} (the model under {spec})"
        if (path / "config.json").exists():
            return _read(path / "config.json"), str(path / "config.json")
        raise ModelNotFoundError(f"model '{spec}': folder has no config.json")
    cached = _hub_cache_config(spec)
    if cached is not None:
        return _read(cached), f"{cached} (local hub cache)"
    if spec in BUILTIN:
        return BUILTIN[spec], f"shape from the built-in table ({spec} config.json)"
    raise ModelNotFoundError(f"model '{spec}': no config.json on this machine and not in the planner's built-in table "
                             f"({', '.join(BUILTIN)}); give a local folder or add the hub cache")


def _hub_cache_config(spec: str) -> Optional[Path]:
    from cogpo_kit.models.specs import is_hub_id

    if not is_hub_id(spec):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec, "config.json")
    except Exception:  # no huggingface_hub, or a malformed id: nothing cached
        return None
    return Path(found) if isinstance(found, str) and Path(found).exists() else None
