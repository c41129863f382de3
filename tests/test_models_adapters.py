"""Adapter folders as models and content fingerprints (cogpo_kit.models.adapters, through models.resolve).

Every adapter here is a real PEFT LoRA adapter on ``tiny:llama``, saved by PEFT's own ``save_pretrained``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from cogpo_kit.models import adapters
from cogpo_kit.models.adapters import (adapter_chain, file_fingerprint, full_weights_path, is_adapter_dir,
                                       load_model_with_adapters, model_fingerprint, write_base_pointer)
from cogpo_kit.models.resolve import hf_path, load_causal_lm, load_tokenizer, resolve

pytestmark = pytest.mark.builds_model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache for merged folders and the fingerprint store (tiny/embedded stay in the shared one)."""
    root = tmp_path / "cache"
    monkeypatch.setattr(adapters, "cache_root", lambda: root)
    monkeypatch.setattr(adapters, "_memo", {})
    return root


def _save_adapter(base, out: Path, seed: int, *, base_ref: str | None = None) -> Path:
    """A LoRA adapter with random (non-zero) weights on ``base`` (a path or a model), saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32) if isinstance(base, str) else base
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(str(out))
    if isinstance(base, str):
        AutoTokenizer.from_pretrained(base).save_pretrained(str(out))
    if base_ref is not None:
        write_base_pointer(out, base_ref)
    return out


@pytest.fixture
def adapter(tiny_model_path, tmp_path, cache) -> Path:
    return _save_adapter(tiny_model_path, tmp_path / "adapter", seed=1)


def _logits(model, text_ids=(1, 20, 300, 4000, 77)):
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(text_ids)])).logits.float()


def test_is_adapter_dir(adapter, tiny_model_path, tmp_path):
    assert is_adapter_dir(adapter)
    assert not is_adapter_dir(tiny_model_path)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(adapter / "adapter_config.json", half)
    assert not is_adapter_dir(half)  # a config without weights is no adapter
    assert not is_adapter_dir(tmp_path / "missing")


def test_peft_records_the_base_and_the_chain_follows_it(adapter, tiny_model_path):
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == Path(tiny_model_path).resolve()
    assert adapter_chain(adapter) == [str(Path(tiny_model_path).resolve()), str(adapter.resolve())]


def test_fingerprint_follows_content_not_location(adapter, tiny_model_path, tmp_path):
    base_copy = tmp_path / "base_copy"
    shutil.copytree(tiny_model_path, base_copy)
    assert model_fingerprint(base_copy) == model_fingerprint(tiny_model_path) == model_fingerprint("tiny:llama")
    adapter_copy = tmp_path / "adapter_copy"
    shutil.copytree(adapter, adapter_copy)
    assert model_fingerprint(adapter_copy) == model_fingerprint(adapter)
    # the same adapter pointing at an identical base in another folder computes the same
    write_base_pointer(adapter_copy, base_copy)
    assert json.loads((adapter_copy / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_copy.resolve())
    assert model_fingerprint(adapter_copy) == model_fingerprint(adapter)
    assert model_fingerprint(adapter) != model_fingerprint(tiny_model_path)


def test_fingerprint_reads_target_modules_as_a_set(adapter, tmp_path):
    """PEFT writes ``target_modules`` from a set, so two saves of one adapter (two processes, two string-hash
    seeds) list them in different orders: seen in two runs' identical SFT adapters. Order is no content;
    the set is."""
    copy = tmp_path / "reordered"
    shutil.copytree(adapter, copy)
    config_path = copy / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert len(config["target_modules"]) > 1
    config["target_modules"] = list(reversed(config["target_modules"]))
    config_path.write_text(json.dumps(config, indent=2))
    assert model_fingerprint(copy) == model_fingerprint(adapter)
    config["target_modules"] = config["target_modules"][1:]  # another set of modules: another model
    config_path.write_text(json.dumps(config, indent=2))
    assert model_fingerprint(copy) != model_fingerprint(adapter)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["adapter_weights", "base_weights", "base_chat_template", "adapter_tokenizer"])
def test_any_changed_byte_changes_the_fingerprint(adapter, tiny_model_path, tmp_path, where):
    base_copy = tmp_path / "base_copy"
    shutil.copytree(tiny_model_path, base_copy)
    write_base_pointer(adapter, base_copy)
    before_adapter, before_base = model_fingerprint(adapter), model_fingerprint(base_copy)
    target = {"adapter_weights": adapter / "adapter_model.safetensors",
              "base_weights": base_copy / "model.safetensors",
              "base_chat_template": base_copy / "chat_template.jinja",
              "adapter_tokenizer": adapter / "tokenizer_config.json"}[where]
    _flip_last_byte(target)
    assert model_fingerprint(adapter) != before_adapter
    if where.startswith("base"):
        assert model_fingerprint(base_copy) != before_base


def test_fingerprint_ignores_files_that_do_not_change_the_model(tiny_model_path, tmp_path, cache):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_path, copy)
    before = model_fingerprint(copy)
    (copy / "README.md").write_text("notes")
    (copy / "training_args.bin").write_bytes(b"args")
    assert model_fingerprint(copy) == before


def test_file_hashes_are_memoised_on_disk_per_size_and_mtime(tiny_model_path, tmp_path, cache, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_path, copy)
    weights = copy / "model.safetensors"
    real = file_fingerprint(weights)
    st = weights.stat()
    with sqlite3.connect(cache / "fingerprints.sqlite") as db:
        rows = db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path=?", (str(weights.resolve()),)).fetchall()
        assert rows == [(st.st_size, st.st_mtime_ns, real)]
        db.execute("UPDATE files SET sha256='stored' WHERE path=?", (str(weights.resolve()),))
    monkeypatch.setattr(adapters, "_memo", {})  # a new process: only the store remembers
    assert file_fingerprint(weights) == "stored"  # served from the store, not re-hashed
    import os

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_fingerprint(weights) == real  # another mtime: hashed again


def test_gguf_and_hub_fingerprints(tmp_path, cache):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    other = tmp_path / "other" / "m2.gguf"
    other.parent.mkdir()
    shutil.copy(gguf, other)
    assert model_fingerprint(gguf) == model_fingerprint(other) == model_fingerprint(other.parent)
    assert model_fingerprint("no-such-org/no-such-model-xyz") == "no-such-org/no-such-model-xyz"
    assert model_fingerprint("embedded:smollm2-135m-instruct") == model_fingerprint(
        resolve("embedded:smollm2-135m-instruct").gguf_path)


def test_load_with_adapters_equals_peft_unmerged(adapter, tiny_model_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = load_model_with_adapters(adapter, dtype="float32")
    assert type(merged).__name__ == "LlamaForCausalLM"  # merged and unloaded, no PEFT wrapper
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                                     str(adapter))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    assert torch.allclose(_logits(merged), _logits(peft), atol=1e-5)
    assert not torch.allclose(_logits(merged), _logits(base), atol=1e-3)  # the adapter does something


def test_chain_of_adapters_loads_base_once_and_merges_in_order(adapter, tiny_model_path, tmp_path):
    import torch

    first = load_model_with_adapters(adapter, dtype="float32")
    second = _save_adapter(first, tmp_path / "second", seed=2)  # trained on the merged first adapter
    write_base_pointer(second, adapter)
    assert adapter_chain(second) == [str(Path(tiny_model_path).resolve()), str(adapter.resolve()),
                                     str(second.resolve())]
    from peft import PeftModel

    manual = PeftModel.from_pretrained(load_model_with_adapters(adapter, dtype="float32"), str(second))
    chained = load_model_with_adapters(second, dtype="float32")
    assert torch.allclose(_logits(chained), _logits(manual), atol=1e-5)
    assert model_fingerprint(second) != model_fingerprint(adapter)
    # the second adapter has no tokenizer of its own: the chain's nearest one is used
    assert load_tokenizer(str(second)).chat_template == load_tokenizer(tiny_model_path).chat_template
    # changing the first adapter changes the second's fingerprint too
    before = model_fingerprint(second)
    _flip_last_byte(adapter / "adapter_model.safetensors")
    assert model_fingerprint(second) != before


def test_cycle_is_an_error(adapter, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    for folder, base in ((adapter, other), (other, adapter)):
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = str(base)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="cycle"):
        adapter_chain(adapter)


def test_full_weights_path_merges_once_in_the_base_dtype(tiny_model_path, tmp_path, cache):
    import torch
    from transformers import AutoModelForCausalLM

    assert full_weights_path(tiny_model_path) == tiny_model_path
    bf16_base = tmp_path / "bf16_base"
    AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16).save_pretrained(str(bf16_base))
    load_tokenizer(tiny_model_path).save_pretrained(str(bf16_base))
    adapter = _save_adapter(str(bf16_base), tmp_path / "adapter_bf16", seed=3)
    path = full_weights_path(adapter)
    assert Path(path) == cache / "merged" / model_fingerprint(adapter)
    assert not is_adapter_dir(path) and (Path(path) / "chat_template.jinja").exists()
    merged = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert merged.dtype == torch.bfloat16
    in_memory = load_model_with_adapters(adapter, dtype="auto")
    assert in_memory.dtype == torch.bfloat16
    assert torch.equal(_logits(merged), _logits(in_memory))
    mtime = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert full_weights_path(adapter) == path and (Path(path) / "model.safetensors").stat().st_mtime_ns == mtime
    assert not list((cache / "merged").glob("*.tmp*"))
    # hf_path of an adapter folder is the merged folder; resolve reports it once it exists
    assert hf_path(str(adapter)) == path
    assert resolve(str(adapter)).hf_path == path


def test_resolve_and_load_adapter_folders(adapter, tiny_model_path, tmp_path):
    import torch

    res = resolve(str(adapter))
    assert res.kind == "adapter" and res.gguf_path is None
    assert res.identity == f"sha256:{model_fingerprint(adapter)}"
    copy = tmp_path / "tiny_copy"
    shutil.copytree(tiny_model_path, copy)
    assert resolve(str(copy)).identity == resolve(tiny_model_path).identity == f"sha256:{model_fingerprint(copy)}"
    model, tok, _ = load_causal_lm(str(adapter))
    assert tok.chat_template and type(model).__name__ == "LlamaForCausalLM"
    assert torch.allclose(_logits(model), _logits(load_model_with_adapters(adapter, dtype="float32")), atol=1e-6)
    assert not (adapters.cache_root() / "merged").exists()  # loading needs no merged copy on disk


def test_moved_run_folder_finds_its_base_by_the_relative_pointer(tiny_model_path, tmp_path, cache):
    run = tmp_path / "run"
    base = run / "base"
    shutil.copytree(tiny_model_path, base)
    adapter = _save_adapter(str(base), run / "adapter", seed=4, base_ref=str(base))
    pointer = json.loads((adapter / "base_model.json").read_text())
    assert pointer["path"] == str(base.resolve()) and pointer["relative"] == "../base"
    assert pointer["fingerprint"] == model_fingerprint(base)
    fp = model_fingerprint(adapter)
    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    assert adapter_chain(moved / "adapter")[0] == str((moved / "base").resolve())
    assert model_fingerprint(moved / "adapter") == fp
    shutil.rmtree(moved / "base")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        adapter_chain(moved / "adapter")


def test_pointer_folder_stands_for_its_target(adapter, tiny_model_path, tmp_path):
    import torch

    from cogpo_kit.models.adapters import follow_pointers, is_pointer_dir, write_model_pointer

    run = tmp_path / "run"
    shutil.copytree(adapter, run / "sft" / "model")
    sft = run / "sft" / "model"
    write_base_pointer(sft, tiny_model_path)
    pointer = run / "pref" / "model"
    written = write_model_pointer(pointer, sft)
    assert sorted(p.name for p in pointer.iterdir()) == ["model_pointer.json"]
    assert written["relative"] == "../../sft/model" and written["fingerprint"] == model_fingerprint(sft)
    assert is_pointer_dir(pointer) and not is_adapter_dir(pointer) and not is_pointer_dir(sft)
    assert follow_pointers(pointer) == str(sft.resolve())
    assert model_fingerprint(pointer) == model_fingerprint(sft)
    res = resolve(str(pointer))
    assert res.spec == str(pointer) and res.kind == "adapter" and res.identity == resolve(str(sft)).identity
    model, tok, _ = load_causal_lm(str(pointer))
    assert torch.allclose(_logits(model), _logits(load_model_with_adapters(sft, dtype="float32")), atol=1e-6)
    assert tok.chat_template
    # a pointer to a pointer, and an adapter whose base is a pointer
    second = write_model_pointer(tmp_path / "p2", pointer)
    assert follow_pointers(tmp_path / "p2") == str(sft.resolve()) and second["fingerprint"] == model_fingerprint(sft)
    on_top = _save_adapter(load_model_with_adapters(sft, dtype="float32"), tmp_path / "on_top", seed=5)
    write_base_pointer(on_top, pointer)
    assert adapter_chain(on_top) == [str(Path(tiny_model_path).resolve()), str(sft.resolve()), str(on_top.resolve())]
    # the run folder moved: the relative path is followed
    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    assert follow_pointers(moved / "pref" / "model") == str((moved / "sft" / "model").resolve())
    # a pointer to a full model folder
    full = write_model_pointer(tmp_path / "p3", tiny_model_path)
    assert hf_path(str(tmp_path / "p3")) == str(Path(tiny_model_path).resolve())
    assert full["fingerprint"] == model_fingerprint(tiny_model_path)
