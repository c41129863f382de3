"""HF folders exported to GGUF for the llama.cpp eval engine: same logits, cached by content, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cogpo_kit.models.gguf_export import ExportError, engine_model, export_gguf, write_gguf

PROMPT = "The final answer is 42 because six times seven"


def _llama_logits(gguf_path: str, ids: list[int]) -> np.ndarray:
    """Logits of every position of ``ids`` under llama.cpp (the engine's model loading)."""
    import llama_cpp
    from llama_cpp import _internals as internals

    from cogpo_kit.engines.llamacpp_model import context_params, model_params, quiet_llama_logs

    quiet_llama_logs()
    model = internals.LlamaModel(path_model=gguf_path, params=model_params(), verbose=False)
    ctx = internals.LlamaContext(model=model, params=context_params(1, 64, 64, 1), verbose=False)
    batch = internals.LlamaBatch(n_tokens=64, embd=0, n_seq_max=1, verbose=False)
    try:
        batch.set_batch(ids, n_past=0, logits_all=True)
        ctx.decode(batch)
        n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
        ptr = llama_cpp.llama_get_logits(ctx.ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(ids), n_vocab)).copy()
    finally:
        batch.close()
        ctx.close()
        model.close()


def _hf_logits(folder: str, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COGPO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_exported_gguf_computes_the_hf_models_logits(tiny_model_path, tmp_path, cache):
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    path = export_gguf(str(folder))
    assert Path(path).parent == cache / "gguf" and path.endswith(".f32.gguf")
    ids = AutoTokenizer.from_pretrained(str(folder))(PROMPT, add_special_tokens=False)["input_ids"]
    hf, ll = _hf_logits(str(folder), ids), _llama_logits(path, ids)
    assert hf.shape == ll.shape
    scale = np.abs(hf).max()
    good = np.abs(hf - ll).max()
    assert good <= 1e-3 * scale, "Q/K rows or tensor names are wrong"
    assert (hf.argmax(-1) == ll.argmax(-1)).all()
    # without the Q/K permutation the logits differ: the comparison can fail
    from cogpo_kit.models import gguf_export

    plain = tmp_path / "plain.gguf"
    original = gguf_export._permute
    try:
        gguf_export._permute = lambda w, n_head: w
        write_gguf(folder, plain)
    finally:
        gguf_export._permute = original
    assert np.abs(hf - _llama_logits(str(plain), ids)).max() > 20 * good


def test_exported_once_per_content(tiny_model_path, tmp_path, cache):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_path, a)
    shutil.copytree(tiny_model_path, b)
    first = export_gguf(str(a))
    mtime = Path(first).stat().st_mtime_ns
    assert export_gguf(str(b)) == first and Path(first).stat().st_mtime_ns == mtime
    assert engine_model(str(a)) == first
    assert engine_model("embedded:smollm2-135m-instruct") == "embedded:smollm2-135m-instruct"
    cfg = json.loads((b / "generation_config.json").read_text())
    cfg["temperature"] = 0.5
    (b / "generation_config.json").write_text(json.dumps(cfg))
    assert export_gguf(str(b)) != first


def test_other_architectures_are_refused_by_name(tiny_model_path, tmp_path, cache):
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_model_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"qwen.*model_type 'qwen2'"):
        export_gguf(str(folder))
