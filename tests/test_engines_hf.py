"""transformers back end on the tiny random model: batching, per-sample seeds, labels, context."""

from __future__ import annotations

import pytest

from cogpo_kit.engines.base import ContextLengthError, Request
from cogpo_kit.engines.config import EngineParams, SamplingParams

pytest.importorskip("transformers")

LEVELS = ("easy", "medium", "hard")


@pytest.fixture(scope="module")
def engine():
    from cogpo_kit.engines.hf import TransformersEngine

    eng = TransformersEngine(EngineParams(engine="transformers", model="tiny:llama", batch_size=4, device="cpu",
                                          context_length=256))
    yield eng
    eng.close()


def msgs(k):
    return ({"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question number {k}?" * (k + 1)})


def sp(**kw):
    base = dict(temperature=0.9, top_p=0.9, top_k=50, max_tokens=6, seed=1)
    base.update(kw)
    return SamplingParams(**base)


@pytest.mark.builds_model
def test_batched_free_text_with_counts(engine):
    reqs = [Request(messages=msgs(k), sampling=sp(seed=k), n=2) for k in range(3)]
    out = engine.generate(reqs)
    assert [len(r) for r in out] == [2, 2, 2]
    for k, row in enumerate(out):
        for c in row:
            assert c.finish_reason in ("stop", "length", "empty")
            assert c.prompt_tokens == len(engine.prompt_ids(msgs(k)))
            assert 0 <= c.completion_tokens <= 6


@pytest.mark.builds_model
def test_samples_follow_their_own_seed_whatever_the_batch(engine):
    """A sample depends on its request seed and index, not on its neighbours or their settings."""
    alone = engine.generate([Request(messages=msgs(1), sampling=sp(seed=7), n=1, sample_offset=2)])[0][0]
    mixed = engine.generate([Request(messages=msgs(1), sampling=sp(seed=7), n=3),
                             Request(messages=msgs(1), sampling=sp(seed=8, temperature=0.0), n=1)])
    assert mixed[0][2].text == alone.text
    assert len({c.text for c in mixed[0]}) > 1  # different indices, different samples


@pytest.mark.builds_model
def test_greedy_is_deterministic(engine):
    r = Request(messages=msgs(2), sampling=sp(temperature=0.0, seed=0))
    r2 = Request(messages=msgs(2), sampling=sp(temperature=0.0, seed=99))
    a, b = engine.generate([r, r2])
    assert a[0].text == b[0].text


@pytest.mark.builds_model
def test_stop_strings_cut_the_text(engine):
    free = engine.generate([Request(messages=msgs(0), sampling=sp(seed=3, max_tokens=12))])[0][0]
    stop = free.text[10:13]
    assert len(stop) == 3
    cut = engine.generate([Request(messages=msgs(0), sampling=sp(seed=3, max_tokens=12, stop=(stop,)))])[0][0]
    assert cut.text == free.text[:free.text.index(stop)] and cut.finish_reason == "stop"
    # a stop string is looked for in the generated text only, never across the prompt's end
    nl = engine.generate([Request(messages=msgs(0), sampling=sp(temperature=0.0, max_tokens=3, stop=("\n\n",)))])[0][0]
    assert nl.completion_tokens >= 2


@pytest.mark.builds_model
def test_labels_are_always_choices_with_sampling_on(engine):
    reqs = [Request(messages=msgs(k), sampling=sp(temperature=1.0, seed=k), n=8, choices=LEVELS) for k in range(3)]
    reqs.append(Request(messages=msgs(0), sampling=sp(temperature=1.0), n=4, choices=("YES", "NO")))
    out = engine.generate(reqs)
    labels = [c.choice for row in out[:3] for c in row]
    assert all(c.choice == c.text and c.finish_reason == "stop" for row in out for c in row)
    assert set(labels) <= set(LEVELS) and len(labels) == 24
    assert {c.choice for c in out[3]} <= {"YES", "NO"}
    greedy = engine.generate([Request(messages=msgs(0), sampling=sp(temperature=0.0), n=3, choices=LEVELS)])[0]
    assert len({c.choice for c in greedy}) == 1


@pytest.mark.builds_model
def test_thinking_then_scored_label(engine):
    from dataclasses import replace

    old = engine.config
    engine.config = replace(old, thinking_end="</think>", max_thinking_tokens=5)
    try:
        out = engine.generate([Request(messages=msgs(0), sampling=sp(), n=2, choices=LEVELS)])[0]
    finally:
        engine.config = old
    for c in out:
        assert "</think>" in c.text and c.choice in LEVELS and c.text.endswith("</think>" + c.choice)
        assert c.completion_tokens >= 2


@pytest.mark.builds_model
def test_prompt_longer_than_context(engine):
    long = ({"role": "user", "content": "word " * 400},)
    with pytest.raises(ContextLengthError, match=r"transformers: request #1 \('word word.*context holds 256"):
        engine.generate([Request(messages=msgs(0)), Request(messages=long)])
    from dataclasses import replace

    old = engine.config
    engine.config = replace(old, truncation="left")
    try:
        c = engine.generate([Request(messages=long, sampling=sp(max_tokens=4), tag="x")])[0][0]
    finally:
        engine.config = old
    assert c.prompt_tokens == 252 and engine.prompt_truncations["x"] == 1
