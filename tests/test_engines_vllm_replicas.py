"""Data-parallel vLLM replicas with a stand-in ``LLM`` that starts a child process, as vLLM's does.

Replicas must be allowed children, a replica that fails to start must surface its traceback, a
failed batch must not leave replies behind for the next batch, and closing must stop every process.
"""

from __future__ import annotations

import multiprocessing as mp
import sys

import pytest

from cogpo_kit.engines.base import EngineError, Request
from cogpo_kit.engines.config import EngineParams, SamplingParams

from test_engines_vllm_fakes import model_dirs, write_fake_vllm  # noqa: F401  (fixture)


def replicas_alive():
    return [p for p in mp.active_children() if p.name.startswith("vllm-replica")]


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory, model_dirs):
    """The stand-in vLLM on the path, ``CUDA_VISIBLE_DEVICES=0,1`` and the model folder."""
    with pytest.MonkeyPatch.context() as mp_:
        root = write_fake_vllm(tmp_path_factory.mktemp("fakevllm"))
        mp_.syspath_prepend(str(root))
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            mp_.delitem(sys.modules, name)
        mp_.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        mp_.setattr("cogpo_kit.models.resolve.hf_path", lambda spec: model_dirs["smollm"])
        yield mp_


def build(**kw):
    from cogpo_kit.engines.vllm_engine import VLLMEngine

    return VLLMEngine(EngineParams(engine="vllm", model="tiny:llama", data_parallel_size=2, **kw))


@pytest.fixture(scope="module")
def engine(fake_env):
    eng = build()
    yield eng
    eng.close()


def ask(k, text=None):
    return Request(messages=({"role": "user", "content": text or f"question number {k}"},),
                   sampling=SamplingParams(seed=k, max_tokens=8))


def test_replicas_serve_in_order(engine):
    procs = replicas_alive()
    assert len(procs) == 2 and not any(p.daemon for p in procs)
    out = engine.generate([ask(k) for k in range(5)])
    for k, row in enumerate(out):
        assert row[0].ok and f"number {k}" in row[0].text, row[0].text


def test_failed_batch_leaves_no_reply_for_the_next(engine):
    with pytest.raises(EngineError, match=r"(?s)replica 0:.*RuntimeError: fake engine failure"):
        engine.generate([ask(0, "BOOM"), ask(1), ask(2), ask(3)])  # 0 and 2 on replica 0, 1 and 3 on replica 1
    out = engine.generate([ask(k) for k in range(10, 14)])
    for k, row in zip(range(10, 14), out):
        assert f"number {k}" in row[0].text, row[0].text


def test_close_stops_every_replica(engine):
    procs = replicas_alive()
    engine.close()
    assert procs and not replicas_alive() and all(p.exitcode is not None for p in procs)
    with pytest.raises(EngineError, match="closed"):
        engine.generate([ask(0)])


def test_start_failure_carries_the_replicas_traceback(fake_env):
    fake_env.setenv("FAKE_VLLM_FAIL_GPUS", "1")
    try:
        with pytest.raises(EngineError, match=r"(?s)replica 1 \(GPUs 1\).*Traceback.*CUDA out of memory on GPUs 1"):
            build()
    finally:
        fake_env.delenv("FAKE_VLLM_FAIL_GPUS")
    assert not replicas_alive()
