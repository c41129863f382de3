"""Shared engine pieces and build_engine: seeds, label parsing, grammars, context fit, registry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cogpo_kit.engines import UnknownEngineError, build_engine, cache_key_extra
from cogpo_kit.engines.base import ContextLengthError, EngineError
from cogpo_kit.engines.common import (apply_stop, choices_grammar, fit_prompt, label_completion, parse_choice,
                                      sample_seed)
from cogpo_kit.engines.config import CacheParams, EngineParams

LEVELS = ("easy", "medium", "hard")


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, 0) == sample_seed(0, 0)
    seeds = {sample_seed(s, i) for s in range(5) for i in range(20)}
    assert len(seeds) == 100 and all(0 <= x < 2**31 for x in seeds)


@pytest.mark.parametrize("text,expected", [
    ("medium", "medium"), (" Hard.", "hard"), ("**EASY**", "easy"),
    ("The reasoning is easy to follow, so overall: medium", "medium"),
    ("I would say it's hard", "hard"), ("nothing here", None), ("mediums", None),
    ("<think>maybe easy</think> hard", "hard"),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, LEVELS, thinking_end="</think>") == expected


def test_parse_choice_yes_no():
    assert parse_choice("YES", ("YES", "NO")) == "YES"
    assert parse_choice("no.", ("YES", "NO")) == "NO"
    assert parse_choice("Not sure", ("YES", "NO")) is None


def test_grammar_escapes_literals():
    assert choices_grammar(LEVELS) == 'root ::= "easy" | "medium" | "hard"'
    assert choices_grammar(['say "hi"', "a\\b"]) == 'root ::= "say \\"hi\\"" | "a\\\\b"'


def test_apply_stop_cuts_at_earliest():
    assert apply_stop("abc\n\nxyz END", ["END", "\n\n"]) == ("abc", True)
    assert apply_stop("abc", ["Z"]) == ("abc", False)


def test_label_completion_constrained_and_free():
    c = label_completion("mediu", "length", 10, 4, LEVELS, constrained=True)
    assert c.choice is None and c.finish_reason == "length"
    c = label_completion("medium", "length", 10, 4, LEVELS, constrained=True)
    assert c.choice == "medium" and c.finish_reason == "stop"
    c = label_completion("thinking...</think>hard", "stop", 10, 4, LEVELS, "</think>", constrained=True)
    assert c.choice == "hard"
    assert label_completion("   ", "stop", 1, 1, None).finish_reason == "empty"


def test_fit_prompt_policies():
    toks = list(range(100))
    assert fit_prompt(toks, 200, 50, "error", "r", "e") == (toks, 50, 0)
    assert fit_prompt(toks, 120, 50, "error", "r", "e") == (toks, 20, 0)  # fits, shorter budget
    with pytest.raises(ContextLengthError, match="request #3.*100 prompt tokens.*holds 80"):
        fit_prompt(toks, 80, 10, "error", "request #3", "llamacpp")
    kept, budget, dropped = fit_prompt(toks, 80, 10, "left", "r", "e")
    assert kept == toks[30:] and budget == 10 and dropped == 30


def test_unknown_engine_lists_known():
    cfg = EngineParams()
    object.__setattr__(cfg, "engine", "tensorrt")
    with pytest.raises(UnknownEngineError, match="unknown engine 'tensorrt'.*llamacpp, openai, transformers, vllm"):
        build_engine(cfg)


def test_vllm_absent_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(EngineError, match="vllm package is not installed"):
        build_engine(EngineParams(engine="vllm"), cache_path=str(tmp_path / "c.sqlite"))


def test_cache_path_precedence_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("COGPO_TEST_KEY", "sk-test")
    cfg = EngineParams(engine="openai", base_urls=("http://127.0.0.1:9/v1",), api_key_env="COGPO_TEST_KEY")
    eng = build_engine(cfg, cache_path=str(tmp_path / "arg.sqlite"), model="served-name")
    assert eng.path == tmp_path / "arg.sqlite" and eng.model_id == "openai:served-name"
    eng.close()
    cfg2 = EngineParams(engine="openai", base_urls=("http://127.0.0.1:9/v1",),
                        cache=CacheParams(path=str(tmp_path / "params.sqlite"), enabled=False))
    eng2 = build_engine(cfg2, cache_path=str(tmp_path / "arg.sqlite"))
    assert eng2.path == tmp_path / "params.sqlite" and not eng2.enabled
    eng2.close()
    assert cache_key_extra(EngineParams()) == {}
    assert cache_key_extra(EngineParams(thinking_end="</think>", truncation="left")) == {
        "thinking_end": "</think>", "max_thinking_tokens": 4096, "truncation": "left"}


def test_engines_package_imports_no_backend():
    code = ("import sys, cogpo_kit.engines, cogpo_kit.engines.cache; "
            "print(sorted(m for m in ('torch', 'llama_cpp', 'vllm', 'httpx', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_openmp_defaults_short_spin_unless_the_user_chose(monkeypatch):
    from cogpo_kit.engines.common import SPIN_COUNT, openmp_defaults

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    openmp_defaults()
    assert os.environ["GOMP_SPINCOUNT"] == SPIN_COUNT

    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    openmp_defaults()
    assert os.environ["GOMP_SPINCOUNT"] == "5"  # the user's value wins

    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    openmp_defaults()
    assert "GOMP_SPINCOUNT" not in os.environ  # a chosen wait policy is left alone


def test_common_prefix_lengths():
    from cogpo_kit.engines.llamacpp_prompts import common_prefix

    a = list(range(700))
    for cut in (0, 1, 5, 256, 699):
        b = a[:cut] + [-1] + a[cut + 1:]
        assert common_prefix(a, b, 10_000) == cut
    assert common_prefix(a, a, 10_000) == 700
    assert common_prefix(a, a, 42) == 42
    assert common_prefix(a, a[:3], 10) == 3
    assert common_prefix([], a, 10) == 0


def test_prompt_store_drops_least_recently_used_beyond_budget():
    from cogpo_kit.engines.llamacpp_prompts import PromptStore

    store = PromptStore(budget_bytes=100)
    store.add([1, 2], data=b"a", size=40)
    store.add([3, 4], data=b"b", size=40)
    assert store.has([1, 2])  # used again: now the most recent
    store.add([5, 6], data=b"c", size=40)  # 120 bytes: the least recently used one goes
    assert [e.prompt for e in store] == [[1, 2], [5, 6]] and store.bytes == 80
    store.add([7], data=b"d", size=101)  # larger than the whole budget: not kept
    assert store.bytes == 80 and not store.has([7])
    assert not PromptStore(0).budget
    one = PromptStore(budget_bytes=100, max_entries=1)  # only the latest prompt, as a single context keeps it
    one.add([1, 2], data=b"a", size=10)
    one.add([3, 4], data=b"b", size=10)
    assert [e.prompt for e in one] == [[3, 4]] and one.bytes == 10


def test_engines_declare_capabilities_and_the_cache_passes_them_on():
    from cogpo_kit.engines import BATCH_ONLY, EngineCapabilities, capabilities_of
    from cogpo_kit.engines.cache import CachedEngine
    from cogpo_kit.engines.hf import TransformersEngine
    from cogpo_kit.engines.llamacpp import LlamaCppEngine
    from cogpo_kit.engines.openai_http import OpenAIEngine
    from cogpo_kit.engines.scripted import ScriptedEngine
    from cogpo_kit.engines.vllm_engine import VLLMEngine

    assert LlamaCppEngine.capabilities == EngineCapabilities(streams_results=True, accepts_more=True)
    assert TransformersEngine.capabilities == EngineCapabilities(streams_results=True)
    assert OpenAIEngine.capabilities == EngineCapabilities(streams_results=True, accepts_more=True)
    assert VLLMEngine.capabilities == BATCH_ONLY
    assert capabilities_of(object()) == BATCH_ONLY  # an engine that declares nothing serves whole batches
    open_batch = ScriptedEngine(lambda r, i: "x", accepts_more=True)
    assert capabilities_of(open_batch) == EngineCapabilities(streams_results=True, accepts_more=True)
    assert capabilities_of(CachedEngine(open_batch, None, show_progress=False)) == EngineCapabilities(
        streams_requests=True)
    closed = CachedEngine(ScriptedEngine(lambda r, i: "x"), None, show_progress=False)
    assert closed.capabilities == BATCH_ONLY
    with pytest.raises(EngineError, match="cannot take requests"):
        closed.stream([], lambda i, c: None, lambda: [])
