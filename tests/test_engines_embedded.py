"""The embedded model through the CPU back ends: labels are always choices with sampling on, and more."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from cogpo_kit.engines import build_engine
from cogpo_kit.engines.base import ContextLengthError, Request
from cogpo_kit.engines.config import CacheParams, EngineParams, SamplingParams

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("easy", "medium", "hard")
CRITIC = (  # the paper's Critic prompt (Table 13)
    "You are a highly capable evaluator.\nYour task is to assess the given reasoning process from the perspective "
    "of a small language model (e.g., 7B).\nSpecifically, determine whether the reasoning process provides "
    "sufficient detail for a small model to solve the problem, or whether it is too terse (i.e., lacking critical "
    "details) or too complex (i.e., containing unnecessary or confusing steps).\nComplexity Definitions (from the "
    "perspective of a small model):\n- Easy: The reasoning process is overly terse; it omits essential details "
    "that a small model needs to solve the problem.\n- Medium: The reasoning process is appropriately balanced, "
    "offering enough detailed guidance.\n- Hard: The reasoning process is overly complex, with extraneous or "
    "convoluted steps that could hinder a small model to follow it.\nOutput Format:\nYou must output exactly one "
    "word: easy, medium, or hard.")
VERIFIER = ("You are a highly capable Verifier.\nYour task is to assess a given reasoning process based on a problem "
            "and its correct answer.\nIf the reasoning process correctly guides you to derive the the correct answer, "
            "output YES.\nIf the reasoning process fails to guide you to the correct answer, output NO.\nYou must "
            "output exactly one word: YES or NO.")


def gsm8k(k: int) -> list[dict]:
    rows = []
    with open(ROOT / "data" / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            reasoning, answer = row["answer"].split("####")
            rows.append({"problem": row["question"], "reasoning": reasoning.strip(), "answer": answer.strip()})
            if len(rows) == k:
                return rows
    return rows


def critic_requests(k: int, n: int, max_tokens: int = 4) -> list[Request]:
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_tokens=max_tokens)
    return [Request(messages=({"role": "system", "content": CRITIC},
                              {"role": "user", "content": f"Problem: {r['problem']}\n\nReasoning process: "
                                                          f"{r['reasoning']}"}),
                    sampling=replace(sp, seed=i), n=n, choices=LEVELS, tag="critic")
            for i, r in enumerate(gsm8k(k))]


def verifier_requests(k: int, n: int) -> list[Request]:
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_tokens=2)
    return [Request(messages=({"role": "system", "content": VERIFIER},
                              {"role": "user", "content": f"Problem: {r['problem']}\n\nCorrect answer: {r['answer']}"
                                                          f"\n\nReasoning process: {r['reasoning']}"}),
                    sampling=sp, n=n, choices=("YES", "NO"), tag="verifier") for r in gsm8k(k)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    eng = build_engine(EngineParams(engine="llamacpp", context_length=2048, batch_size=8),
                       cache_path=str(tmp_path_factory.mktemp("cache") / "c.sqlite"))
    eng.show_progress = False
    yield eng
    eng.close()


@pytest.mark.builds_model
def test_llamacpp_labels_always_choices_with_sampling(llama):
    assert llama.backend.weights == "f32" and llama.model_id.endswith("|f32")  # Q4_1 converted once (auto)
    out = llama.generate(critic_requests(3, 4) + verifier_requests(1, 3))
    critic = [c for row in out[:3] for c in row]
    assert len(critic) == 12 and all(c.choice in LEVELS and c.text == c.choice for c in critic)
    assert all(c.finish_reason == "stop" and 1 <= c.completion_tokens <= 4 for c in critic)
    verdicts = [c.choice for row in out[3:] for c in row]
    assert len(verdicts) == 3 and set(verdicts) <= {"YES", "NO"}
    st = llama.stats_by_tag()
    assert st["critic"]["misses"] == 12 and st["verifier"]["misses"] == 3
    again = llama.generate(critic_requests(3, 5))  # one more vote each: 3 paid, 12 from the cache
    assert sum(not c.cached for row in again for c in row) == 3
    assert [c.choice for c in again[0][:4]] == [c.choice for c in out[0]]


@pytest.mark.builds_model
def test_llamacpp_free_text_stop_length_and_determinism(llama):
    base = llama.backend
    msgs = ({"role": "user", "content": "List five colours, one per line."},)
    sp = SamplingParams(temperature=0.8, max_tokens=12, seed=3)
    reqs = [Request(messages=msgs, sampling=sp, n=2), Request(messages=msgs, sampling=replace(sp, max_tokens=3))]
    a = base.generate(reqs)
    b = base.generate(reqs)
    assert [c.text for r in a for c in r] == [c.text for r in b for c in r]  # same batch, same samples
    assert len({c.text for c in a[0]}) > 1
    assert a[1][0].finish_reason == "length" and a[1][0].completion_tokens == 3
    stop = base.generate([Request(messages=msgs, sampling=replace(sp, stop=("\n",)))])[0][0]
    assert "\n" not in stop.text and stop.finish_reason == "stop"
    # each sequence has its own KV stream and seed: a sample does not depend on its batch
    alone = base.generate([Request(messages=msgs, sampling=sp, n=1, sample_offset=1)])[0][0]
    assert alone.text == a[0][1].text


@pytest.mark.builds_model
def test_llamacpp_thinking_then_constrained_label(llama):
    eng = llama.backend
    old = eng.config
    eng.config = replace(old, thinking_end=":", max_thinking_tokens=12)
    try:
        msgs = ({"role": "user", "content": "Is 17 + 25 = 42 easy, medium or hard for a child? Think briefly, "
                                            "then write 'Answer:' and one word."},)
        out = eng.generate([Request(messages=msgs, n=2, choices=LEVELS,
                                    sampling=SamplingParams(temperature=0.7, max_tokens=4))])
    finally:
        eng.config = old
    for c in (c for row in out for c in row):
        assert c.choice in LEVELS and c.text.endswith(":" + c.choice)
        assert c.completion_tokens > len(c.choice) // 4


@pytest.mark.builds_model
def test_llamacpp_context_errors_and_left_truncation(tmp_path):
    cfg = EngineParams(engine="llamacpp", context_length=256, batch_size=2)
    eng = build_engine(cfg, cache_path=str(tmp_path / "c.sqlite"))
    long = Request(messages=({"role": "user", "content": "apple " * 400},), tag="rethinker")
    with pytest.raises(ContextLengthError, match=r"llamacpp: request #1 tag 'rethinker'.*context holds 256"):
        eng.generate([Request(messages=({"role": "user", "content": "hi"},)), long])
    eng.close()
    left = build_engine(replace(cfg, truncation="left"), cache_path=str(tmp_path / "c.sqlite"))
    c = left.generate([replace(long, sampling=SamplingParams(max_tokens=8))])[0][0]
    assert c.prompt_tokens == 248 and left.backend.prompt_truncations == {"rethinker": 1}
    assert left.stats_by_tag()["rethinker"]["prompt_truncations"] == 1
    left.close()


@pytest.mark.builds_model
def test_transformers_labels_always_choices_with_sampling(tmp_path):
    pytest.importorskip("torch")
    eng = build_engine(EngineParams(engine="transformers", device="cpu", batch_size=6, context_length=2048),
                       cache_path=str(tmp_path / "c.sqlite"))
    out = eng.generate(critic_requests(2, 4, max_tokens=2) + verifier_requests(1, 3))
    labels = [c for row in out[:2] for c in row]
    assert len(labels) == 8 and all(c.choice in LEVELS and c.text == c.choice for c in labels)
    assert len(out[2]) == 3 and {c.choice for c in out[2]} <= {"YES", "NO"}
    free = eng.generate([Request(messages=({"role": "user", "content": "Say hello."},),
                                 sampling=SamplingParams(temperature=0.0, max_tokens=8))])[0][0]
    assert free.text.strip() and free.completion_tokens <= 8
    eng.close()


@pytest.mark.builds_model
def test_llamacpp_sequences_moved_to_close_gaps_continue_unchanged(tmp_path, monkeypatch):
    """A sequence moved to a lower slot (its KV stream copied) goes on exactly as it would alone; every
    step is written in slot order, and steps that only decode use contiguous slots."""
    import llama_cpp

    steps = []
    decode = llama_cpp.llama_decode

    def recording(ctx, batch):
        steps.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return decode(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    eng = build_engine(EngineParams(engine="llamacpp", context_length=512, batch_size=3, cache=CacheParams(enabled=False)),
                       cache_path=str(tmp_path / "c.sqlite"))
    msgs = ({"role": "user", "content": "Write a short story about a lighthouse keeper."},)
    sp = SamplingParams(temperature=0.8, seed=11)
    # slots 0-2 take requests 0-2; 0 and 2 finish first and 3, 4 take their slots; then 1 finishes
    # and leaves a gap below request 4, which moves down while it is still generating
    lengths = (2, 24, 3, 40, 40)
    reqs = [Request(messages=msgs, sampling=replace(sp, max_tokens=m, seed=11 + i)) for i, m in enumerate(lengths)]
    together = eng.backend.generate(reqs)
    assert eng.backend.slot_moves >= 1
    assert all(ids == sorted(ids) for ids in steps)
    decode_only = [ids for ids in steps if len(set(ids)) == len(ids) > 1]
    assert decode_only and all(max(ids) - min(ids) + 1 == len(ids) for ids in decode_only)
    for i, r in enumerate(reqs):
        alone = eng.backend.generate([r])[0][0]
        assert alone.text == together[i][0].text, f"request {i}"
    eng.close()


@pytest.mark.builds_model
def test_llamacpp_engine_keeps_llama_cpp_logs_quiet(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(logging.getLogger("llama-cpp-python"), "level", logging.NOTSET)  # as in a fresh process
    eng = build_engine(EngineParams(engine="llamacpp", context_length=256, batch_size=1),
                       cache_path=str(tmp_path / "c.sqlite"))
    eng.close()
    err = capfd.readouterr().err
    assert "llama_context" not in err and "graph_reserve" not in err, err[:300]


@pytest.mark.builds_model
def test_llamacpp_prompt_store_restores_finished_prompts(tmp_path):
    """A prompt asked again in a later batch restores its saved KV cells: fewer tokens through the
    model, the same completions as an engine that evaluates it again."""
    msgs = [({"role": "system", "content": "You are a careful assistant who writes short stories."},
             {"role": "user", "content": f"Write a short story about lighthouse keeper number {i}."}) for i in range(3)]
    sp = SamplingParams(temperature=0.8, seed=3, max_tokens=16)
    first = [Request(messages=m, sampling=sp) for m in msgs]
    later = [replace(r, sample_offset=1) for r in first]  # the next sample of each: asked in a later round
    texts, decoded = {}, {}
    for mb in (64, 0):
        eng = build_engine(EngineParams(engine="llamacpp", context_length=512, batch_size=2, prompt_cache_mb=mb,
                                        cache=CacheParams(enabled=False)), cache_path=str(tmp_path / "c.sqlite"))
        b = eng.backend
        one = b.generate(first)
        before = b.decoded_tokens
        two = b.generate(later)
        decoded[mb] = b.decoded_tokens - before
        texts[mb] = [c[0].text for c in one + two]
        if mb:
            assert b.prompt_store.saved == 3 and b.prompt_store.restored == 3
            assert b.prompt_store.restored_tokens > 3 * 20
        else:
            assert b.prompt_store.saved == 0 and b.prompt_store.restored == 0
        eng.close()
    assert texts[64] == texts[0]
    assert decoded[64] < decoded[0]


@pytest.mark.builds_model
def test_llamacpp_restore_waits_for_a_pending_stream_copy(tmp_path):
    """A saved prompt is never restored into a stream that a pending copy still reads.

    Sample 1 of request A copies sample 0's stream (llama.cpp does the copy at the next decode);
    sample 0 stops after one token and frees its stream at once; request C, whose prompt is saved,
    takes that stream. Restoring there before the copy is done would hand sample 1 C's cells."""
    def req(text, **kw):
        return Request(messages=({"role": "user", "content": text},), sampling=SamplingParams(
            temperature=0.8, seed=5, max_tokens=kw.pop("max_tokens", 12)), **kw)

    a = replace(req("Name three colours of the sea at night and say why.", max_tokens=1), n=2)
    a_long = replace(a, sampling=replace(a.sampling, max_tokens=12))
    c = req("Describe a quiet harbour town in winter, in two sentences.")
    cfg = EngineParams(engine="llamacpp", context_length=512, batch_size=2, cache=CacheParams(enabled=False))
    eng = build_engine(cfg, cache_path=str(tmp_path / "c.sqlite"))
    b = eng.backend
    c_alone = b.generate([c])[0][0].text  # saves C's prompt
    mixed = b.generate([replace(a, n=1), replace(a_long, sample_offset=1, n=1), c])
    assert b.prompt_store.restored >= 1
    eng.close()
    fresh = build_engine(replace(cfg, prompt_cache_mb=0), cache_path=str(tmp_path / "d.sqlite"))
    a1_alone = fresh.backend.generate([replace(a_long, sample_offset=1, n=1)])[0][0].text
    fresh.close()
    assert mixed[2][0].text == c_alone
    assert mixed[1][0].text == a1_alone


@pytest.mark.builds_model
def test_llamacpp_takes_requests_while_it_runs(tmp_path):
    """``more()`` feeds requests into a running batch (numbered after the first ones); each comes out
    as it would alone, and the call returns once ``more()`` has nothing left."""
    eng = build_engine(EngineParams(engine="llamacpp", context_length=512, batch_size=2, prompt_cache_mb=0,
                                    cache=CacheParams(enabled=False)), cache_path=str(tmp_path / "c.sqlite"))
    sp = SamplingParams(temperature=0.8, seed=2)
    reqs = [Request(messages=({"role": "user", "content": f"Give me a fact about the number {k}."},),
                    sampling=replace(sp, seed=2 + k, max_tokens=6 + 4 * k)) for k in range(4)]
    done, asked = [], []

    def on_result(i, j, c):
        done.append(i)

    def more():
        asked.append(len(done))
        if len(asked) == 1:
            return [reqs[1]]
        if 0 in done and len(done) == 2 and reqs[3] not in asked:
            asked.append(reqs[3])
            return [reqs[2], reqs[3]]
        return []

    out = eng.backend.generate([reqs[0]], on_result=on_result, more=more)
    assert len(out) == 4 and sorted(done) == [0, 1, 2, 3]
    for k, r in enumerate(reqs):
        assert out[k][0].text == eng.backend.generate([r])[0][0].text, f"request {k}"
    eng.close()


@pytest.mark.builds_model
def test_llamacpp_every_step_is_one_run_of_consecutive_slots(tmp_path, monkeypatch):
    """A sample waiting for another to evaluate their shared prompt holds no slot meanwhile, so every
    step's sequences sit in consecutive slots (one pass over the weights for their first tokens), and
    the samples come out as they do alone."""
    import llama_cpp

    steps = []
    decode = llama_cpp.llama_decode

    def recording(ctx, batch):
        steps.append(sorted({batch.seq_id[i][0] for i in range(batch.n_tokens)}))
        return decode(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    eng = build_engine(EngineParams(engine="llamacpp", context_length=512, batch_size=3, prompt_cache_mb=0,
                                    cache=CacheParams(enabled=False)), cache_path=str(tmp_path / "c.sqlite"))
    sp = SamplingParams(temperature=0.8, seed=4, max_tokens=8)
    shared = Request(messages=({"role": "system", "content": "You are a lighthouse keeper."},
                               {"role": "user", "content": "Tell me about lighthouses. " * 40}), sampling=sp, n=2)
    other = Request(messages=({"role": "system", "content": "Answer in one word."},
                              {"role": "user", "content": "Name a colour."}), sampling=replace(sp, seed=9))
    together = eng.backend.generate([shared, other])
    assert steps and all(ids == list(range(ids[0], ids[0] + len(ids))) for ids in steps), steps[:4]
    assert eng.backend.generate([other])[0][0].text == together[1][0].text
    assert [c.text for c in eng.backend.generate([shared])[0]] == [c.text for c in together[0]]
    eng.close()


@pytest.mark.builds_model
def test_llamacpp_step_stats_account_for_every_token_fed(llama):
    """``step_stats`` splits the fed tokens into prompt and generated ones, and the steps into prompt and decode
    steps, as the tokens actually sent through the model (``decoded_tokens``) and the samples' lengths say."""
    b = llama.backend
    before, decoded = b.step_stats.as_dict(), b.decoded_tokens
    msgs = ({"role": "user", "content": "Count from one to twenty in words."},)
    reqs = [Request(messages=msgs, sampling=SamplingParams(temperature=0.8, max_tokens=10, seed=s), n=2)
            for s in range(3)]
    out = b.generate(reqs)
    st = {k: v - before[k] for k, v in b.step_stats.as_dict().items()}
    assert st["prompt_tokens"] + st["generated_tokens"] == b.decoded_tokens - decoded
    samples = [c for row in out for c in row]
    completion = sum(c.completion_tokens for c in samples)
    # every generated token is fed back except the last of a sample cut at its limit
    cut = sum(c.finish_reason == "length" for c in samples)
    assert cut and st["generated_tokens"] == completion - cut
    assert st["prompt_steps"] >= 1 and st["decode_steps"] >= 9
    assert st["decode_sequences"] <= st["generated_tokens"]  # decode steps carry generated tokens only
    assert 1 <= st["decode_sequences"] / st["decode_steps"] <= 6
    assert st["wall_s"] >= st["prompt_s"] + st["decode_s"] > 0
