"""The ``openai`` engine over a fleet of servers: routing by load, ejection, moved requests, per-server counts.

- :class:`~cogpo_kit.engines.fleet.Fleet` on its own (no I/O, a clock passed in): least-loaded routing,
  ejection and re-admission, requests moved off a server that leaves rotation;
- the engine against asyncio HTTP servers in the test process (no thread per connection): a hung
  server's requests move to the others, a sick one comes back after its health check, a thousand
  requests in flight from one client thread, and a CRV run over three URLs that writes exactly what a
  run over one URL writes;
- three real llama.cpp servers behind a CRV critique stage, one killed with SIGKILL mid-run: the stage
  finishes, no request is lost or answered twice (counted from the servers' access logs, the engine's
  per-server counts and the response cache), and the manifest holds the per-server table.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cogpo_kit.engines import build_engine
from cogpo_kit.engines.base import Request
from cogpo_kit.engines.config import EngineParams, SamplingParams
from cogpo_kit.engines.fleet import Fleet, fleet_totals
from cogpo_kit.io import stable_hash

A, B, C = "http://a/v1", "http://b/v1", "http://c/v1"


# -- Fleet, pure --------------------------------------------------------------------------------
def test_least_loaded_routing_with_round_robin_ties():
    f = Fleet([A, B, C])
    picks = []
    for t in range(6):
        url = f.pick(0.0)
        f.start(url, t, 0.0)
        picks.append(url)
    assert picks == [A, B, C, A, B, C]  # ties go to the server picked least recently
    f.finish(B, 1, 1.0, "ok")
    f.finish(B, 4, 1.0, "ok")
    assert f.load() == {A: 2, B: 0, C: 2} and f.pick(1.0) == B
    f.start(B, 6, 1.0)
    assert f.pick(1.0, avoid=B) in (A, C)  # the server an attempt just failed on is avoided...
    only = Fleet([A])
    assert only.pick(0.0, avoid=A) == A  # ...unless it is the only one
    with pytest.raises(ValueError, match="listed twice"):
        Fleet([A, A])
    with pytest.raises(ValueError, match="already in flight"):
        f.start(A, 6, 1.0)


def test_ejection_backoff_and_readmission():
    f = Fleet([A, B], eject_after=3, eject_s=2.0, eject_max_s=5.0, health_interval_s=0)
    for t in range(3):
        f.start(A, t, 0.0)
    f.finish(A, 0, 0.1, "failed", error="HTTP 503")
    f.finish(A, 1, 0.1, "throttled")  # back-pressure is not a failure
    f.finish(A, 2, 0.1, "failed", error="HTTP 503")
    assert f.in_rotation(A)
    f.start(A, 3, 0.2)
    f.finish(A, 3, 0.3, "failed", error="HTTP 503")  # third failure in a row
    assert not f.in_rotation(A) and f.rotation() == [B]
    assert all(f.pick(0.5) == B for _ in range(3))
    assert f.checks_due(2.0) == [] and f.next_check_at() == pytest.approx(2.3)
    assert f.checks_due(2.3) == [A] and f.checks_due(2.4) == []  # not twice while it is checked
    f.check_done(A, 2.5, ok=False, detail="HTTP 503")
    assert not f.in_rotation(A) and f.next_check_at() == pytest.approx(6.5)  # the wait doubled
    assert f.checks_due(6.5) == [A]
    f.check_done(A, 6.6, ok=False, detail="timeout")
    assert f.next_check_at() == pytest.approx(11.6)  # capped at eject_max_s
    assert f.checks_due(11.6) == [A]
    f.check_done(A, 11.7, ok=True)
    assert f.in_rotation(A) and f.pick(12.0) == A
    st = f.stats()[A]
    assert (st["requests"], st["errors"], st["throttled"], st["ejections"]) == (4, 3, 1, 1)
    assert (st["health_checks"], st["health_failures"]) == (3, 2) and st["last_error"] == "health check: timeout"
    # a refused connection ejects at once; an answer puts a server back at once
    f.start(B, 10, 20.0)
    f.finish(B, 10, 20.0, "refused", error="connection refused")
    assert not f.in_rotation(B)
    f.start(B, 11, 20.5)  # sent anyway (e.g. the only server): it answers
    f.finish(B, 11, 21.0, "ok")
    assert f.in_rotation(B)


def test_a_failed_check_moves_the_servers_requests_once():
    f = Fleet([A, B], eject_s=1.0)
    for t in range(4):
        f.start(f.pick(0.0), t, 0.0)
    assert f.finish(A, 0, 1.0, "refused", error="connection refused")  # out of rotation...
    assert f.load() == {A: 1, B: 2}  # ...but what runs there may still finish
    assert f.checks_due(2.0) == [A]
    assert f.check_done(A, 2.1, ok=False, detail="ConnectError") == [2]  # to be moved to B
    f.finish(A, 2, 2.2, "moved")
    assert f.load() == {A: 0, B: 2}
    assert f.finish(A, 2, 2.5, "failed") is False  # an attempt is counted once
    st = f.stats()[A]
    assert (st["requests"], st["errors"], st["moved"], st["ejections"]) == (2, 1, 1, 1)
    # with no other server in rotation nothing moves: the attempts stay where they are
    solo = Fleet([A], eject_s=1.0)
    solo.start(A, 1, 0.0)
    solo.start(A, 2, 0.0)
    assert solo.finish(A, 1, 0.5, "refused") and solo.load() == {A: 1}
    assert solo.checks_due(1.5) == [A] and solo.check_done(A, 1.6, ok=False) == [] and solo.load() == {A: 1}
    assert solo.pick(1.7) == A  # the ejected server due back first still gets the retries


def test_quiet_servers_are_checked_and_counts_add_up():
    f = Fleet([A, B], health_interval_s=10.0, now=0.0)
    f.start(A, 1, 0.0)
    f.start(A, 2, 0.0)
    f.finish(A, 1, 4.0, "ok", prompt_tokens=100, completion_tokens=7)
    f.finish(A, 2, 9.0, "answered")  # a 4xx answer: the server is fine
    assert f.checks_due(10.0) == [B]  # A answered lately; B has been quiet for 10 s
    assert f.check_done(B, 10.5, ok=False, detail="ConnectTimeout") == [] and not f.in_rotation(B)
    assert f.checks_due(15.4) == [] and f.checks_due(15.5) == [B]  # ejected: back after eject_s (5 s)
    assert f.checks_due(18.9) == [] and f.checks_due(19.0) == [A]  # A quiet for 10 s since its last answer
    st = f.stats()[A]
    assert (st["ok"], st["answered_errors"], st["prompt_tokens"], st["completion_tokens"]) == (1, 1, 100, 7)
    assert st["seconds"] == pytest.approx(13.0) and st["max_in_flight"] == 2
    tot = fleet_totals(f.stats())
    assert tot["requests"] == 2 and tot["ejections"] == 1


# -- the engine against loopback servers ---------------------------------------------------------
class AsyncServers:
    """HTTP/1.1 servers on 127.0.0.1, all on one asyncio loop in one thread (keep-alive, no thread per
    connection). ``start(respond)`` -> base URL; ``respond(method, path, body)`` returns
    ``(status, payload, delay_s)`` or an awaitable of it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers, self.writers = [], set()

    def start(self, respond) -> str:
        async def handle(reader, writer):
            self.writers.add(writer)
            try:
                while True:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                    method, path = head[0].split(" ")[:2]
                    size = next((int(h.split(":", 1)[1]) for h in head[1:]
                                 if h.lower().startswith("content-length:")), 0)
                    body = json.loads(await reader.readexactly(size)) if size else None
                    status, payload, delay = respond(method, path, body)
                    if delay:
                        await asyncio.sleep(delay)
                    data = json.dumps(payload).encode()
                    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                self.writers.discard(writer)
                writer.close()

        async def serve():
            return await asyncio.start_server(handle, "127.0.0.1", 0, backlog=2048)

        srv = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        self.servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"

    def stop(self):
        async def shut():
            for s in self.servers:
                s.close()
            for w in list(self.writers):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def servers():
    s = AsyncServers()
    yield s
    s.stop()


def chat_answer(text: str, prompt_tokens: int = 10, completion_tokens: int = 2) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


class Echo:
    """Answers every chat with its question and seed after ``delay`` s; counts what it answered.
    ``sick``: 503 to everything (health checks too); ``hang``: never answers in time."""

    def __init__(self, delay=0.0, sick=False, hang=False):
        self.delay, self.sick, self.hang = delay, sick, hang
        self.answered: list[tuple[str, int]] = []
        self.posts = 0

    def __call__(self, method, path, body):
        if self.hang:
            return 200, {}, 60.0
        if self.sick:
            if method == "POST":
                self.posts += 1
            return 503, {"error": "sick"}, 0.0
        if method == "GET":
            return (200, {"data": [{"id": "m", "owned_by": "someone"}]}, 0.0) if path.endswith("/models") else \
                (200, {"status": "ok"}, 0.0)
        self.posts += 1
        q = body["messages"][-1]["content"]
        self.answered.append((q, body["seed"]))
        return 200, chat_answer(f"echo {q} seed={body['seed']}"), self.delay


def cfg(urls, **kw):
    base = dict(engine="openai", model="m", base_urls=tuple(urls), max_concurrency=8, timeout_s=30.0,
                max_retries=4, retry_backoff_s=0.01, retry_backoff_max_s=0.05, eject_s=0.2,
                health_interval_s=0.3, health_timeout_s=0.3)
    base.update(kw)
    return EngineParams(**base)


def reqs(k, n=1):
    return [Request(messages=({"role": "user", "content": f"question {i}"},), n=n,
                    sampling=SamplingParams(max_tokens=8, seed=i), tag="agent") for i in range(k)]


def test_a_hung_servers_requests_move_to_the_others(servers, tmp_path):
    good = [Echo(delay=0.05), Echo(delay=0.05)]
    hung = Echo(hang=True)
    urls = [servers.start(good[0]), servers.start(hung), servers.start(good[1])]
    eng = build_engine(cfg(urls, max_concurrency=9), cache_path=str(tmp_path / "c.sqlite"))
    t0 = time.time()
    out = eng.generate(reqs(30))
    took = time.time() - t0
    assert all(row[0].ok for row in out) and took < 20  # moved, not left to the 30 s timeout
    answered = good[0].answered + good[1].answered
    assert sorted(answered) == sorted(set(answered)) and len(answered) == 30  # each once, none lost
    st = eng.backend.fleet_stats()
    h = st["servers"][urls[1]]
    assert h["requests"] >= 1 and h["moved"] == h["requests"] and h["ok"] == 0 and not h["in_rotation"]
    assert h["ejections"] == 1 and h["health_failures"] >= 1
    assert st["servers"][urls[0]]["ok"] + st["servers"][urls[2]]["ok"] == 30 == st["totals"]["ok"]
    eng.close()


def test_a_sick_server_leaves_rotation_and_comes_back(servers, tmp_path):
    well, sick = Echo(delay=0.02), Echo(delay=0.02, sick=True)
    urls = [servers.start(well), servers.start(sick)]
    eng = build_engine(cfg(urls, max_concurrency=4, eject_after=2, health_interval_s=0, eject_max_s=0.4),
                       cache_path=str(tmp_path / "c.sqlite"))
    assert all(row[0].ok for row in eng.generate(reqs(20)))
    st = eng.backend.fleet_stats()["servers"][urls[1]]
    assert not st["in_rotation"] and st["ejections"] == 1 and st["errors"] >= 2 and st["ok"] == 0
    assert st["requests"] == st["errors"] + st["moved"] >= sick.posts  # each attempt failed or moved
    sick.sick = False  # it recovers: the next check puts it back
    time.sleep(0.5)  # its next check is due (at most eject_max_s after the last)
    batch = [r for r in reqs(60) if r.messages[-1]["content"] not in {q for q, _ in well.answered}]
    assert all(row[0].ok for row in eng.generate(batch))
    st = eng.backend.fleet_stats()["servers"][urls[1]]
    assert st["in_rotation"] and st["ok"] > 0 and st["health_checks"] >= 1
    assert len(well.answered) + len(sick.answered) == 60
    eng.close()


def test_a_thousand_requests_in_flight_from_one_thread(servers, tmp_path):
    fleet = [Echo(delay=1.0) for _ in range(4)]
    urls = [servers.start(e) for e in fleet]
    eng = build_engine(cfg(urls, max_concurrency=1000, max_retries=0, health_interval_s=0),
                       cache_path=str(tmp_path / "c.sqlite"))
    threads = [threading.active_count()]
    base = threading.active_count()
    out = eng.backend.generate(reqs(1000), on_result=lambda i, j, c: threads.append(threading.active_count()))
    assert all(row[0].ok for row in out)
    st = eng.backend.fleet_stats()["servers"]
    assert sum(s["max_in_flight"] for s in st.values()) >= 900  # (almost) all at once
    assert all(240 <= s["ok"] <= 260 for s in st.values())  # spread by load
    assert max(threads) <= base  # no thread per request
    eng.close()


# -- a CRV run over one URL and over three -------------------------------------------------------
def scripted_agent(method, path, body):
    """A deterministic OpenAI-compatible server for the CRV agents: each answer is a function of the
    request body (role from the system prompt, the user message, the sample's seed)."""
    from cogpo_kit.crv.prompts import SYSTEM_PROMPTS

    if method == "GET":
        return (200, {"data": [{"id": "m", "owned_by": "llamacpp"}]}, 0.0) if path.endswith("/models") else \
            (404, {"error": "no such route"}, 0.0)
    msgs = body["messages"]
    role = next((r for r, p in SYSTEM_PROMPTS.items() if msgs[0]["content"] == p), "?")
    user = msgs[-1]["content"]
    h = int(stable_hash([role, user, body["seed"]])[:8], 16)
    if "grammar" in body:
        text = re.findall(r'"([^"]*)"', body["grammar"])[h % 3 if role == "critic" else h % 2]
    elif role == "critic":
        text = "Hard to say." if h % 3 == 0 else ("easy", "medium", "hard")[h % 3]
    else:
        gold = re.search(r"(?:Correct answer|Answer):\n(.*?)\n", user).group(1).strip()
        wrong = role == "corrupt" or h % 4 == 0
        text = f"Step by step for {role}. So the result is {gold + '1' if wrong else gold}."
    return 200, chat_answer(text, prompt_tokens=len(user.split()), completion_tokens=len(text.split())), 0.001


CRV_ARTIFACTS = ("01_critique/input.jsonl", "01_critique/critiques.jsonl", "02_rethink/rewrites.jsonl",
                 "02_rethink/incorrect.jsonl", "02_rethink/sft.jsonl")


def crv_params(tmp_path, run_id, urls, *extra):
    from cogpo_kit.params import load_params

    engine = {"engine": "openai", "model": "m", "base_urls": list(urls), "max_concurrency": 16, "timeout_s": 30,
              "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}
    agents = [f"crv.{a}.engine={json.dumps(engine)}" for a in ("critic", "rethinker", "verifier")]
    # each run in its own folder: its own response cache
    return load_params([], [f"run.output_dir={tmp_path / run_id}", "run.run_id=t", "data.source=gsm8k_train",
                            "data.limit=6", "crv.incorrect_check=answer_differs", *agents, *extra])


def test_a_crv_run_over_three_servers_writes_what_one_server_writes(servers, tmp_path):
    from cogpo_kit.crv.stage import run_critique, run_rethink

    one = [servers.start(scripted_agent)]
    three = [servers.start(scripted_agent) for _ in range(3)]
    manifests = {}
    for run_id, urls in (("one", one), ("three", three)):
        params = crv_params(tmp_path, run_id, urls)
        manifests[run_id] = (run_critique(params), run_rethink(params))
    for name in CRV_ARTIFACTS:
        assert (tmp_path / "three/t" / name).read_bytes() == (tmp_path / "one/t" / name).read_bytes(), name
    for m_one, m_three in zip(*manifests.values()):
        f1, f3 = dict(m_one["funnel"]), dict(m_three["funnel"])
        c1, c3 = f1.pop("calls"), f3.pop("calls")
        f1.pop("crv_calls", None), f3.pop("crv_calls", None)
        assert f1 == f3 and c1["by_tag"] == c3["by_tag"] and c3["streamed"]
        [fleet] = c3["fleet"].values()
        assert set(fleet["servers"]) == set(three)
        assert all(s["ok"] > 0 and s["errors"] == 0 for s in fleet["servers"].values())
        assert fleet["totals"]["ok"] == c3["paid"] + c3["probe_paid"]
        assert list(c1["fleet"].values())[0]["totals"]["ok"] == c1["paid"] + c1["probe_paid"]
    assert manifests["three"][0]["funnel"]["calls"]["cache_hits"] == 0  # each run asked its servers
    rethink = manifests["three"][1]["funnel"]
    assert rethink["sft"]["total"] > 0 and rethink["incorrect"]["found"] > 0  # the run took several paths


# -- three llama.cpp servers, one killed ---------------------------------------------------------
ACCESS = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" 200')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``cogpo_kit.engines.llamacpp_server`` on loopback (one thread), its output in ``log``."""

    def __init__(self, gguf: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.out = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cogpo_kit.engines.llamacpp_server", "--model", gguf, "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "1024", "--n_threads", "1", "--model_alias", "smollm2"],
            stdout=self.out, stderr=subprocess.STDOUT)

    def wait_ready(self, httpx, deadline: float) -> None:
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"llama.cpp server did not start in time; see {self.log}")

    def answered(self) -> int:
        return len(ACCESS.findall(self.log.read_text(errors="replace")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.out.close()


@pytest.mark.slow
@pytest.mark.builds_model
def test_crv_stage_over_three_llama_cpp_servers_survives_a_sigkill(tmp_path):
    pytest.importorskip("llama_cpp.server")
    httpx = pytest.importorskip("httpx")
    from cogpo_kit.crv.stage import run_critique
    from cogpo_kit.models.resolve import resolve
    from cogpo_kit.params import load_params
    from test_pairs_fixtures import fixture_records

    gguf = resolve("embedded:smollm2-135m-instruct").gguf_path
    fleet = [LlamaServer(gguf, tmp_path / f"server{k}.log") for k in range(3)]
    try:
        for s in fleet:
            s.wait_ready(httpx, time.time() + 90)
        victim, killed = fleet[1], threading.Event()

        def kill_after_first_answer():  # SIGKILL with requests in flight on it and queued for it
            while not killed.is_set():
                if victim.answered() >= 1:
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait(timeout=30)
                    killed.set()
                    return
                time.sleep(0.02)

        engine = {"engine": "openai", "model": "smollm2", "base_urls": [s.url for s in fleet], "max_concurrency": 6,
                  "timeout_s": 120, "max_retries": 4, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2,
                  "eject_s": 30}
        params = load_params([], [f"run.output_dir={tmp_path}", "run.run_id=fleet",
                                  f"crv.critic.engine={json.dumps(engine)}", "crv.critic.sampling.max_tokens=4"])
        records = fixture_records()[:6]
        watcher = threading.Thread(target=kill_after_first_answer, daemon=True)
        watcher.start()
        manifest = run_critique(params, records=records)
        killed.set()
        watcher.join(10)
    finally:
        for s in fleet:
            s.stop()
    assert victim.proc.returncode == -signal.SIGKILL
    run = tmp_path / "fleet" / "01_critique"
    rows = [json.loads(x) for x in (run / "critiques.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in records]
    calls = manifest["funnel"]["calls"]
    votes = sum(len(r["votes"]) for r in rows)
    assert calls["samples"] == calls["paid"] == votes  # every vote asked was answered (none from a cache)
    [stats] = calls["fleet"].values()
    per = stats["servers"]
    assert set(per) == {s.url for s in fleet}
    v = per[victim.url]
    assert v["ejections"] >= 1 and v["errors"] >= 1 and not v["in_rotation"]
    # no request lost or answered twice: the client's answers per server are the servers' own count of
    # answers sent (the killed one may have sent one the client never read), and each is in the cache once
    for s in fleet:
        assert per[s.url]["ok"] <= s.answered() <= per[s.url]["ok"] + (1 if s is victim else 0), s.url
    assert stats["totals"]["ok"] == votes
    conn = sqlite3.connect(str(tmp_path / "cache" / "responses.sqlite"))
    entries = conn.execute("SELECT key, sample, COUNT(*) FROM responses GROUP BY key, sample").fetchall()
    conn.close()
    assert len(entries) == votes and all(n == 1 for _k, _s, n in entries)
