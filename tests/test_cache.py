"""The persistent response cache: keys, hits/misses, durability, error entries, concurrency, clear/off."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading

import pytest

from cogpo_kit.engines.base import Completion, EngineCapabilities, EngineError, Request
from cogpo_kit.engines.cache import CachedEngine, request_key
from cogpo_kit.engines.config import SamplingParams

MSG = ({"role": "user", "content": "What is 2+2?"},)


class FakeBackend:
    """Deterministic back end: text from the prompt, seed and sample index; scripted failures."""

    name = "fake"

    def __init__(self, model_id="fake:model", streams=True, fail=None, fail_after=None):
        self.model_id = model_id
        self.capabilities = EngineCapabilities(streams_results=streams)
        self.calls: list[tuple[str, int, int]] = []  # (content, sample index, seed)
        self.fail = dict(fail or {})  # sample index -> list of finish reasons to return first
        self.fail_after = fail_after  # raise after this many samples
        self.closed = False

    def _one(self, r: Request, idx: int) -> Completion:
        self.calls.append((r.messages[-1]["content"], idx, r.sampling.seed))
        queue = self.fail.get(idx)
        if queue:
            kind = queue.pop(0)
            if kind == "error":
                return Completion(text="", finish_reason="error", error="boom")
            if kind == "empty":
                return Completion(text="  ", finish_reason="empty")
            if kind == "length":
                return Completion(text="cut", finish_reason="length", completion_tokens=4)
        text = f"answer {r.messages[-1]['content']} s{r.sampling.seed} #{idx}"
        choice = None
        if r.choices:
            choice = r.choices[idx % len(r.choices)]
            text = choice
        return Completion(text=text, prompt_tokens=5, completion_tokens=3, choice=choice)

    def generate(self, requests, on_result=None):
        out, produced = [], 0
        for i, r in enumerate(requests):
            row = []
            for j in range(r.n):
                if self.fail_after is not None and produced >= self.fail_after:
                    raise EngineError("fake: server went away")
                c = self._one(r, r.sample_offset + j)
                produced += 1
                row.append(c)
                if on_result is not None:
                    on_result(i, j, c)
            out.append(row)
        return out

    def close(self):
        self.closed = True


def req(content="What is 2+2?", n=1, offset=0, seed=0, tag="critic", **kw):
    return Request(messages=({"role": "user", "content": content},), sampling=SamplingParams(seed=seed, **kw),
                   n=n, sample_offset=offset, tag=tag)


def test_each_sample_cached_separately_and_only_misses_paid(tmp_path):
    be = FakeBackend()
    eng = CachedEngine(be, tmp_path / "c.sqlite", show_progress=False)
    first = eng.generate([req(n=2)])[0]
    assert [c.cached for c in first] == [False, False]
    more = eng.generate([req(n=3)])[0]
    assert [c.cached for c in more] == [True, True, False]
    assert [c.text for c in more[:2]] == [c.text for c in first]
    assert [call[1] for call in be.calls] == [0, 1, 2]  # n=3 after n=2 paid for one sample
    fourth = eng.generate([req(n=1, offset=3)])[0][0]
    assert be.calls[-1][1] == 3 and not fourth.cached
    st = eng.stats_by_tag()["critic"]
    assert (st["calls"], st["cache_hits"], st["misses"]) == (6, 2, 4)
    assert st["completion_tokens"] == 12 and st["prompt_tokens"] == 20 and st["errors"] == 0


def test_key_covers_model_messages_sampling_choices_not_tag():
    base = request_key("m", req())[0]
    assert request_key("m", req(tag="other"))[0] == base
    assert request_key("m", req(n=5, offset=2))[0] == base
    for other in (request_key("m2", req()), request_key("m", req(seed=1)), request_key("m", req(temperature=0.1)),
                  request_key("m", req(content="x")), request_key("m", req(max_tokens=7)),
                  request_key("m", req(stop=("\n",))), request_key("m", req(top_k=3)),
                  request_key("m", Request(messages=MSG, choices=("a", "b"))),
                  request_key("m", req(), {"thinking_end": "</think>"})):
        assert other[0] != base


def test_results_are_committed_before_return_and_survive_a_crash(tmp_path):
    path = tmp_path / "c.sqlite"
    be = FakeBackend(fail_after=3)
    eng = CachedEngine(be, path, show_progress=False)
    with pytest.raises(EngineError):
        eng.generate([req(content=f"q{k}") for k in range(5)])
    # another connection (as a new process would) sees the three finished samples
    rows = sqlite3.connect(str(path)).execute("SELECT COUNT(*) FROM responses WHERE ok = 1").fetchone()[0]
    assert rows == 3
    assert eng.stats_by_tag()["critic"]["errors"] == 2
    eng2 = CachedEngine(FakeBackend(), path, show_progress=False)
    out = eng2.generate([req(content=f"q{k}") for k in range(5)])
    assert [r[0].cached for r in out] == [True, True, True, False, False]
    assert len(eng2.backend.calls) == 2  # the rerun pays only for the rest


def test_non_streaming_backend_results_are_stored_too(tmp_path):
    eng = CachedEngine(FakeBackend(streams=False), tmp_path / "c.sqlite", show_progress=False)
    eng.generate([req(n=2)])
    assert len(eng.entries(good_only=True)) == 2
    assert all(c.cached for c in eng.generate([req(n=2)])[0])


@pytest.mark.parametrize("kind", ["error", "empty", "length"])
def test_bad_completions_are_recorded_but_never_served(tmp_path, kind):
    be = FakeBackend(fail={0: [kind, kind]})
    eng = CachedEngine(be, tmp_path / "c.sqlite", show_progress=False)
    c1 = eng.generate([req()])[0][0]
    assert c1.finish_reason == kind and not c1.cached
    [entry] = eng.entries()
    assert entry["ok"] == 0 and entry["finish_reason"] == kind and entry["attempts"] == 1
    c2 = eng.generate([req()])[0][0]  # retried, not served
    assert c2.finish_reason == kind and not c2.cached
    c3 = eng.generate([req()])[0][0]
    assert c3.ok and not c3.cached
    [entry] = eng.entries()
    assert entry["ok"] == 1 and entry["attempts"] == 3
    assert eng.generate([req()])[0][0].cached
    key = {"error": "errors", "empty": "empty", "length": "truncated"}[kind]
    assert eng.stats_by_tag()["critic"][key] == 2
    assert len(be.calls) == 3


def test_label_without_choice_is_not_good(tmp_path):
    class NoLabel(FakeBackend):
        def _one(self, r, idx):
            self.calls.append((r.messages[-1]["content"], idx, 0))
            return Completion(text="I think it is fine", choice=None)

    eng = CachedEngine(NoLabel(), tmp_path / "c.sqlite", show_progress=False)
    r = Request(messages=MSG, choices=("easy", "hard"))
    eng.generate([r])
    eng.generate([r])
    assert len(eng.backend.calls) == 2


def test_clear_removes_only_this_model_and_disable_bypasses(tmp_path):
    path = tmp_path / "c.sqlite"
    a = CachedEngine(FakeBackend("model:a"), path, show_progress=False)
    b = CachedEngine(FakeBackend("model:b"), path, show_progress=False)
    a.generate([req(n=2)])
    b.generate([req(n=2)])
    a2 = CachedEngine(FakeBackend("model:a"), path, clear=True, show_progress=False)
    assert a2.entries() == [] and len(b.entries()) == 2
    assert not a2.generate([req()])[0][0].cached
    off = CachedEngine(FakeBackend("model:b"), path, enabled=False, show_progress=False)
    assert not off.generate([req(n=2)])[0][0].cached
    assert len(off.backend.calls) == 2 and len(b.entries()) == 2
    assert off.stats_by_tag()["critic"]["misses"] == 2
    none = CachedEngine(FakeBackend(), None, show_progress=False)
    assert not none.enabled and none.generate([req()])[0][0].text


def test_close_closes_backend_and_bad_request_names_field(tmp_path):
    be = FakeBackend()
    eng = CachedEngine(be, tmp_path / "c.sqlite", show_progress=False)
    with pytest.raises(ValueError, match=r"request #1 \(tag 'critic'\).*'n'"):
        eng.generate([req(), req(n=0)])
    with pytest.raises(ValueError, match="messages"):
        eng.generate([Request(messages=())])
    eng.close()
    assert be.closed


def _writer(path: str, worker: int, out) -> None:
    eng = CachedEngine(FakeBackend(), path, show_progress=False)
    reqs = [req(content=f"q{k}", n=3) for k in range(12)]  # every process asks for the same samples
    res = eng.generate(reqs)
    out.put([[c.text for c in row] for row in res])
    eng.close()


def test_concurrent_writers_from_several_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, w, q)) for w in range(4)]
    for p in procs:
        p.start()
    answers = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(a == answers[0] for a in answers)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    n, good = conn.execute("SELECT COUNT(*), SUM(ok) FROM responses").fetchone()
    assert n == good == 36  # exactly one good entry per sample


def test_concurrent_threads_share_one_engine(tmp_path):
    eng = CachedEngine(FakeBackend(), tmp_path / "c.sqlite", show_progress=False)
    errors = []

    def work(k):
        try:
            eng.generate([req(content=f"t{k % 3}", n=2, tag=f"t{k}")])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(eng.entries(good_only=True)) == 6
    assert sum(s["calls"] for s in eng.stats_by_tag().values()) == 16


def test_truncated_can_be_served_when_asked(tmp_path):
    be = FakeBackend(fail={0: ["length"]})
    eng = CachedEngine(be, tmp_path / "c.sqlite", show_progress=False, retry_truncated=False)
    eng.generate([req()])
    again = eng.generate([req()])[0][0]
    assert again.cached and again.finish_reason == "length" and len(be.calls) == 1


def test_greedy_truncated_is_served_not_asked_again(tmp_path):
    """A temperature-0 completion cut at max_tokens would be cut the same way again: it is served,
    marked ``length``, even with ``retry_truncated`` on; a larger budget is another key and is asked."""
    be = FakeBackend(fail={0: ["length"]})
    eng = CachedEngine(be, tmp_path / "c.sqlite", show_progress=False, retry_truncated=True)
    first = eng.generate([req(temperature=0.0, max_tokens=8)])[0][0]
    assert first.finish_reason == "length" and not first.cached
    again = eng.generate([req(temperature=0.0, max_tokens=8)])[0][0]
    assert again.cached and again.finish_reason == "length" and again.text == first.text
    assert len(be.calls) == 1
    eng.generate([req(temperature=0.0, max_tokens=16)])
    assert len(be.calls) == 2


def test_sampled_truncated_is_still_asked_again(tmp_path):
    be = FakeBackend(fail={0: ["length"]})
    eng = CachedEngine(be, tmp_path / "c.sqlite", show_progress=False, retry_truncated=True)
    eng.generate([req(temperature=0.7, max_tokens=8)])
    again = eng.generate([req(temperature=0.7, max_tokens=8)])[0][0]
    assert not again.cached and len(be.calls) == 2
