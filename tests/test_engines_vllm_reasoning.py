"""The offline vLLM engine with a real transformers-5 tokenizer and an R1-like chat template.

Labels after thinking must not re-render the chat (R1's template drops the thinking from assistant
messages); prompt lengths must be real token counts (transformers 5's ``apply_chat_template``
returns a ``BatchEncoding`` when tokenizing).
"""

from __future__ import annotations

import pytest

from cogpo_kit.engines.base import ContextLengthError, Request
from cogpo_kit.engines.config import EngineParams, SamplingParams

from test_engines_vllm_fakes import fake_vllm_pkg, model_dirs  # noqa: F401  (fixtures)

MSGS = ({"role": "system", "content": "Judge the step."}, {"role": "user", "content": "Is 2+2=4 right?"})


def engine_for(monkeypatch, folder, **kw):
    from cogpo_kit.engines.vllm_engine import VLLMEngine

    monkeypatch.setattr("cogpo_kit.models.resolve.hf_path", lambda spec: folder)
    return VLLMEngine(EngineParams(engine="vllm", model="tiny:llama", **kw))


def test_label_after_thinking_continues_tokens_not_the_chat(monkeypatch, fake_vllm_pkg, model_dirs):
    eng = engine_for(monkeypatch, model_dirs["r1"], thinking_end="</think>", max_thinking_tokens=64)
    out = eng.generate([Request(messages=MSGS, n=2, choices=("YES", "NO"), sampling=SamplingParams(max_tokens=2))])[0]
    assert [c.finish_reason for c in out] == ["stop", "stop"], [c.error for c in out]
    assert all(c.choice in ("YES", "NO") and c.text == "let me think</think>" + c.choice for c in out)
    llm = fake_vllm_pkg.LLM.instances[-1]
    tok = llm.tokenizer
    (kind1, convs, params1, _), (kind2, prompts2, params2, _) = llm.calls
    assert kind1 == "chat" and params1[0].kw["stop"] == ["</think>"] and params1[0].kw["max_tokens"] == 64
    prompt = tok.encode(tok.apply_chat_template(list(MSGS), tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False)
    thought = tok.encode("let me think", add_special_tokens=False) + tok.encode("</think>", add_special_tokens=False)
    assert kind2 == "generate" and prompts2[0]["prompt_token_ids"] == prompt + thought  # token past the marker cut
    assert params2[0].kw["structured_outputs"].choice == ["YES", "NO"]
    assert out[0].prompt_tokens == len(prompt)
    assert out[0].completion_tokens == len(thought) + 1 + len(tok.encode(out[0].choice, add_special_tokens=False))
    eng.close()


def test_thinking_cut_by_its_budget_gets_the_end_marker(monkeypatch, fake_vllm_pkg, model_dirs):
    eng = engine_for(monkeypatch, model_dirs["r1"], thinking_end="</think>", max_thinking_tokens=8)
    msgs = ({"role": "user", "content": "LONG question"},)
    [c] = eng.generate([Request(messages=msgs, choices=("YES", "NO"))])[0]
    assert c.ok and c.choice in ("YES", "NO") and c.text == "think on and on</think>" + c.choice
    llm = fake_vllm_pkg.LLM.instances[-1]
    tok = llm.tokenizer
    prompt2 = llm.calls[1][1][0]["prompt_token_ids"]
    end = tok.encode("think on and on", add_special_tokens=False) + tok.encode("</think>", add_special_tokens=False)
    assert prompt2[-len(end):] == end
    eng.close()


def test_prompt_lengths_are_real_token_counts(monkeypatch, fake_vllm_pkg, model_dirs):
    eng = engine_for(monkeypatch, model_dirs["smollm"], context_length=64)
    tok = fake_vllm_pkg.LLM.instances[-1].tokenizer
    long_msgs = ({"role": "user", "content": "a long question about step four " * 12},)
    ids = tok.encode(tok.apply_chat_template(list(long_msgs), tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)
    assert len(ids) > 64
    assert eng._prompt_lengths([Request(messages=long_msgs)])[0] == [len(ids)]
    with pytest.raises(ContextLengthError, match=rf"request #0.*{len(ids)} prompt tokens.*max_model_len is 64"):
        eng.generate([Request(messages=long_msgs, sampling=SamplingParams(max_tokens=8))])
    eng.close()
    left = engine_for(monkeypatch, model_dirs["smollm"], context_length=64, truncation="left")
    [c] = left.generate([Request(messages=long_msgs, sampling=SamplingParams(max_tokens=8))])[0]
    llm = fake_vllm_pkg.LLM.instances[-1]
    kind, prompts, params, _ = llm.calls[-1]
    assert kind == "generate" and prompts[0]["prompt_token_ids"] == ids[-56:] and params[0].kw["max_tokens"] == 8
    assert c.prompt_tokens == 56
    short = left.generate([Request(messages=MSGS, sampling=SamplingParams(max_tokens=8))])[0][0]
    assert short.prompt_tokens == len(tok.encode(tok.apply_chat_template(list(MSGS), tokenize=False,
                                                                         add_generation_prompt=True),
                                                 add_special_tokens=False))
    left.close()


def test_labels_without_thinking_and_no_top_k_limit(monkeypatch, fake_vllm_pkg, model_dirs):
    eng = engine_for(monkeypatch, model_dirs["smollm"])
    out = eng.generate([Request(messages=MSGS, n=3, choices=("easy", "medium", "hard"),
                                sampling=SamplingParams(top_k=0, max_tokens=2))])[0]
    assert all(c.ok and c.choice == c.text for c in out)
    kind, _convs, params, kw = fake_vllm_pkg.LLM.instances[-1].calls[-1]
    assert kind == "chat" and kw["continue_final_message"] is False
    assert params[0].kw["top_k"] == 0 and params[0].kw["max_tokens"] == 7
    eng.close()
