"""vLLM translation, tested without vLLM: requests -> SamplingParams / LLM arguments / chat calls."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from cogpo_kit.engines.base import ContextLengthError, Request
from cogpo_kit.engines.common import sample_seed
from cogpo_kit.engines.config import EngineParams, SamplingParams
from cogpo_kit.engines.vllm_engine import (Call, Row, VLLMEngine, continuation_ids, llm_kwargs,
                                           make_sampling_params, plan_calls, sampling_kwargs)

MSGS = ({"role": "system", "content": "Rate it."}, {"role": "user", "content": "2+2=4"})
LEVELS = ("easy", "medium", "hard")


def test_sampling_kwargs_per_sample_seed_and_limits():
    r = Request(messages=MSGS, sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_tokens=64,
                                                       stop=("\n\n",), seed=3), n=2, sample_offset=4)
    kw = sampling_kwargs(r, 5)
    assert kw == {"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "max_tokens": 64, "seed": sample_seed(3, 5),
                  "stop": ["\n\n"]}
    greedy = sampling_kwargs(Request(messages=MSGS, sampling=SamplingParams(temperature=0.0, top_k=0, top_p=1.0)), 0)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 0 and "stop" not in greedy  # vLLM: 0 is no limit
    assert sampling_kwargs(r, 0, choices=LEVELS)["choice"] == list(LEVELS)


def test_llm_kwargs():
    cfg = EngineParams(engine="vllm", tensor_parallel_size=4, context_length=32768, gpu_memory_utilization=0.85,
                       dtype="bfloat16")
    assert llm_kwargs(cfg, "/m") == {"model": "/m", "tensor_parallel_size": 4, "max_model_len": 32768,
                                     "gpu_memory_utilization": 0.85, "dtype": "bfloat16"}


def test_plan_calls_labels_thinking_and_context():
    cfg = EngineParams(engine="vllm", context_length=100)
    reqs = [Request(messages=MSGS, n=2, sample_offset=1, sampling=SamplingParams(max_tokens=4), choices=LEVELS),
            Request(messages=MSGS, sampling=SamplingParams(max_tokens=50))]
    [chat] = plan_calls(reqs, cfg, prompt_lengths=[10, 80])
    assert chat.keys == [(0, 0), (0, 1), (1, 0)]
    assert chat.params[0]["choice"] == list(LEVELS) and chat.params[0]["max_tokens"] == 7  # "medium" + 1
    assert chat.params[1]["seed"] == sample_seed(0, 2)
    assert chat.params[2]["max_tokens"] == 20  # capped to the room left after the prompt
    with pytest.raises(ContextLengthError, match=r"request #1.*120 prompt tokens.*max_model_len is 100"):
        plan_calls(reqs, cfg, prompt_lengths=[10, 120])
    left = EngineParams(engine="vllm", context_length=100, truncation="left")
    calls = plan_calls(reqs, left, prompt_lengths=[10, 120], tokenized={0: [1] * 10, 1: list(range(120))})
    tok = next(c for c in calls if c.tokens)
    assert tok.prompts[0]["prompt_token_ids"] == list(range(70, 120)) and tok.keys == [(1, 0)]
    think = EngineParams(engine="vllm", thinking_end="</think>", max_thinking_tokens=300)
    [p1] = plan_calls(reqs[:1], think, prompt_lengths=[10])
    assert p1.params[0]["stop"] == ["</think>"] and "choice" not in p1.params[0] and p1.params[0]["max_tokens"] == 300
    assert "stop_token_ids" not in p1.params[0]
    [one] = plan_calls(reqs[:1], think, prompt_lengths=[10], think_ids=[151649])  # R1: one token
    assert one.params[0]["stop_token_ids"] == [151649]
    [p2] = plan_calls(reqs[:1], think, phase=2, continuations={(0, 0): [1, 2, 3], (0, 1): [1, 2, 4]})
    assert p2.tokens and p2.prompts[1] == {"prompt_token_ids": [1, 2, 4]} and p2.keys == [(0, 0), (0, 1)]
    assert p2.params[0]["choice"] == list(LEVELS) and p2.params[1]["seed"] == sample_seed(0, 2)


def test_continuation_ids():
    enc = {"hm": [7, 8], "</think>": [5, 6]}.__getitem__
    # the stop string's tokens stay in token_ids (one more may follow in the same step)
    assert continuation_ids([1, 2], [7, 8, 5, 6, 9], "hm", "stop", [5, 6], enc) == [1, 2, 7, 8, 5, 6]
    assert continuation_ids([1, 2], [7, 8], "hm", "length", [5, 6], enc) == [1, 2, 7, 8, 5, 6]  # budget spent
    assert continuation_ids([1, 2], [7, 8, 3], "hm", "stop", [5, 6], enc) == [1, 2, 7, 8, 5, 6]  # other stop


@dataclass
class _Out:
    text: str
    finish_reason: str
    token_ids: list = field(default_factory=list)


@dataclass
class _ReqOut:
    prompt_token_ids: list
    outputs: list


def fake_vllm(monkeypatch, structured=True):
    """Install a stand-in ``vllm`` package that records what the engine asks of it."""
    mod = types.ModuleType("vllm")
    sp = types.ModuleType("vllm.sampling_params")

    class FakeSamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class Choice:
        def __init__(self, choice):
            self.choice = choice

    sp.SamplingParams = FakeSamplingParams
    if structured:
        sp.StructuredOutputsParams = Choice
    else:
        sp.GuidedDecodingParams = Choice
    mod.SamplingParams = FakeSamplingParams

    class Tok:  # one token per character
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert tokenize is False
            return "".join(m["content"] for m in messages)

        def encode(self, text, add_special_tokens=True):
            return [ord(ch) for ch in text]

    class LLM:
        instances: list = []

        def __init__(self, **kw):
            self.kw, self.calls = kw, []
            LLM.instances.append(self)

        def get_tokenizer(self):
            return Tok()

        def chat(self, convs, params, use_tqdm=True, **kw):
            self.calls.append(("chat", convs, params, kw))
            outs = []
            for conv, p in zip(convs, params):
                c = p.kw.get("structured_outputs") or p.kw.get("guided_decoding")
                if c is not None:
                    text = c.choice[p.kw["seed"] % len(c.choice)]
                elif "</think>" in p.kw.get("stop", []):
                    outs.append(_ReqOut(list(range(7)), [_Out("let me think", "length", [1, 2])]))
                    continue
                else:
                    text = f"free {p.kw['seed']}"
                outs.append(_ReqOut(list(range(7)), [_Out(text, "stop", [1, 2])]))
            return outs

        def generate(self, prompts, params, use_tqdm=True):
            self.calls.append(("generate", prompts, params, {}))
            outs = []
            for prompt, p in zip(prompts, params):
                c = p.kw.get("structured_outputs") or p.kw.get("guided_decoding")
                out = _Out(c.choice[p.kw["seed"] % len(c.choice)], "stop", [3]) if c else _Out("trunc", "length", [1])
                outs.append(_ReqOut(prompt["prompt_token_ids"], [out]))
            return outs

    mod.LLM = LLM
    mod.sampling_params = sp
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    return mod


@pytest.mark.parametrize("structured", [True, False])
def test_make_sampling_params_uses_installed_api(monkeypatch, structured):
    vllm = fake_vllm(monkeypatch, structured)
    p = make_sampling_params(vllm, {"n": 1, "seed": 3, "choice": ["YES", "NO"]})
    key = "structured_outputs" if structured else "guided_decoding"
    assert p.kw[key].choice == ["YES", "NO"] and "choice" not in p.kw


def test_engine_end_to_end_with_stand_in(monkeypatch):
    vllm = fake_vllm(monkeypatch)
    monkeypatch.setattr("cogpo_kit.models.resolve.hf_path", lambda spec: "/models/x")
    eng = VLLMEngine(EngineParams(engine="vllm", model="tiny:llama", tensor_parallel_size=2, context_length=4096))
    llm = vllm.LLM.instances[-1]
    assert llm.kw["tensor_parallel_size"] == 2 and llm.kw["model"] == "/models/x"
    reqs = [Request(messages=MSGS, n=3, choices=LEVELS, sampling=SamplingParams(max_tokens=8)),
            Request(messages=MSGS, sampling=SamplingParams(temperature=0.0))]
    out = eng.generate(reqs)
    assert all(c.choice in LEVELS and c.text == c.choice for c in out[0])
    assert out[1][0].text.startswith("free") and out[1][0].prompt_tokens == 7 and out[1][0].completion_tokens == 2
    kind, convs, params, kw = llm.calls[-1]
    assert kind == "chat" and convs[0] == list(MSGS) and kw == {}


def test_engine_thinking_then_constrained_label(monkeypatch):
    vllm = fake_vllm(monkeypatch)
    monkeypatch.setattr("cogpo_kit.models.resolve.hf_path", lambda spec: "/models/x")
    eng = VLLMEngine(EngineParams(engine="vllm", model="tiny:llama", thinking_end="</think>"))
    out = eng.generate([Request(messages=MSGS, n=2, choices=("YES", "NO"))])[0]
    llm = vllm.LLM.instances[-1]
    (k1, _c1, p1, _), (k2, prompts2, p2, _kw2) = llm.calls
    assert k1 == "chat" and p1[0].kw["stop"] == ["</think>"]
    # the thinking ran out of budget here ([1, 2] has no end marker): its end marker is appended
    assert k2 == "generate" and prompts2[0] == {"prompt_token_ids": list(range(7)) + [1, 2] + [ord(c) for c in "</think>"]}
    assert p2[0].kw["structured_outputs"].choice == ["YES", "NO"]
    assert all(c.text.startswith("let me think</think>") and c.choice in ("YES", "NO") for c in out)
    assert all(c.completion_tokens == 3 for c in out)


def test_data_parallel_shards_round_robin():
    eng = VLLMEngine.__new__(VLLMEngine)
    eng._llm = None

    class Replicas:
        def __len__(self):
            return 2

        def run(self, shards):
            return [[Row(f"r{r}:{p}", "stop", [1], [1]) for p in shard.prompts] for r, shard in enumerate(shards)]

    eng._replicas = Replicas()
    call = Call(prompts=["a", "b", "c"], params=[{}, {}, {}], keys=[(0, 0), (1, 0), (2, 0)])
    rows = eng._run(call)
    assert [r.text for r in rows] == ["r0:a", "r1:b", "r0:c"]
