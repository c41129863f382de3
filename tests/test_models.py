"""Model specs resolve for each engine; unresolvable specs are clear errors."""

import pytest

from cogpo_kit.models.resolve import ModelNotFoundError, hf_path, load_causal_lm, resolve


def test_embedded_resolves_to_gguf():
    r = resolve("embedded:smollm2-135m-instruct")
    assert r.kind == "embedded" and r.gguf_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in r.identity


def test_unknown_specs_name_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown embedded model 'nope'"):
        resolve("embedded:nope")
    with pytest.raises(ModelNotFoundError) as e:
        resolve(str(tmp_path / "missing-model"))
    assert "missing-model" in str(e.value) and "tried" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither config.json nor a .gguf"):
        resolve(str(tmp_path / "empty"))


def test_hub_id_and_local_folder(tmp_path):
    assert resolve("Qwen/Qwen2.5-7B-Instruct").kind == "hf"
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    r = resolve(str(d))
    assert r.kind == "local" and r.hf_path == str(d)


@pytest.mark.builds_model
def test_tiny_model_is_small_and_uses_embedded_tokenizer():
    import transformers

    path = hf_path("tiny:llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 2e7
    tok = transformers.AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
    with pytest.raises(ValueError, match="unknown option"):
        hf_path("tiny:llama?depth=3")


@pytest.mark.slow
@pytest.mark.builds_model
def test_embedded_hf_route_answers_greedily():
    model, tok, _ = load_causal_lm("embedded:smollm2-135m-instruct")
    assert model.config.model_type == "llama"
    assert 1.3e8 < sum(p.numel() for p in model.parameters()) < 1.4e8
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3? Answer briefly."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in answer
