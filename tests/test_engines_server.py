"""The ``openai`` engine against a real llama.cpp server serving the embedded GGUF on loopback.

The server (llama-cpp-python's ``llama_cpp.server``, started through
``cogpo_kit.engines.llamacpp_server``) is started and stopped by the test: concurrent requests,
labels under the server's grammar with sampling on, then the server killed mid-batch: retries, a
clear error naming the server, every completion finished before the kill still in the cache, and a
rerun against a new server pays only for the rest.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from cogpo_kit.engines import build_engine
from cogpo_kit.engines.base import EngineError, Request
from cogpo_kit.engines.config import EngineParams, SamplingParams

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp.server")
httpx = pytest.importorskip("httpx")

LEVELS = ("easy", "medium", "hard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, log_path):
        from cogpo_kit.models.resolve import resolve

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log_path, "wb")
        gguf = resolve("embedded:smollm2-135m-instruct").gguf_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cogpo_kit.engines.llamacpp_server", "--model", gguf, "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "2048", "--model_alias", "smollm2"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama.cpp server did not start within 90 s; see {log_path}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start():
        s = Server(tmp_path / f"server{len(servers)}.log")
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def cfg(url, **kw):
    base = dict(engine="openai", model="smollm2", base_urls=(url,), max_concurrency=3, timeout_s=120,
                max_retries=2, retry_backoff_s=0.05, retry_backoff_max_s=0.2)
    base.update(kw)
    return EngineParams(**base)


def requests(k: int) -> list[Request]:
    return [Request(messages=({"role": "user", "content": f"Reply with one word only: a colour (#{i})."},),
                    sampling=SamplingParams(temperature=0.7, max_tokens=48, seed=i), tag="rethinker")
            for i in range(k)]


@pytest.mark.builds_model
def test_labels_and_concurrency_against_llama_cpp_server(start_server, tmp_path):
    server = start_server()
    eng = build_engine(cfg(server.url), cache_path=str(tmp_path / "c.sqlite"))
    labels = Request(messages=({"role": "system", "content": "Rate the difficulty: easy, medium or hard."},
                               {"role": "user", "content": "Natalia sold 48/2 = 24 clips in May. 48+24 = 72."}),
                     sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_tokens=4), n=6,
                     choices=LEVELS, tag="critic")
    out = eng.generate([labels] + requests(3))
    assert all(c.choice in LEVELS and c.text == c.choice for c in out[0])  # the server's grammar held
    assert all(row[0].ok and row[0].completion_tokens > 0 for row in out[1:]), [row[0] for row in out[1:]]
    assert eng.backend.fleet_stats()["servers"][server.url]["max_in_flight"] >= 2
    assert eng.backend.flavor(server.url) == "grammar"
    eng.close()


@pytest.mark.builds_model
def test_server_killed_mid_batch_then_rerun_pays_only_the_rest(start_server, tmp_path):
    path = tmp_path / "c.sqlite"
    server = start_server()
    eng = build_engine(cfg(server.url, max_concurrency=2), cache_path=str(path))
    reqs = requests(8)
    generate, seen = eng.backend.generate, []

    def generate_then_kill(subs, on_result=None):
        def record(i, j, c):
            on_result(i, j, c)  # committed to the cache first
            seen.append(c)
            if len(seen) == 2:  # mid-batch: the server dies with requests in flight and queued
                server.proc.kill()
                server.proc.wait(timeout=30)

        return generate(subs, on_result=record)

    eng.backend.generate = generate_then_kill
    with pytest.raises(EngineError, match=rf"server {server.url} failed 3 times.*connection error"):
        eng.generate(reqs)
    finished = eng.entries(good_only=True)  # the good completions among those finished before the kill
    assert 2 <= len(seen) < 8 and len(finished) == sum(c.ok for c in seen) >= 1
    st = eng.stats_by_tag()["rethinker"]
    assert st["misses"] == 8 and st["errors"] == 8 - len(seen)
    eng.close()

    second = start_server()
    again = build_engine(cfg(second.url), cache_path=str(path))
    out = again.generate(reqs)
    assert all(row[0].text.strip() and row[0].finish_reason in ("stop", "length") for row in out)
    st = again.stats_by_tag()["rethinker"]
    assert st["cache_hits"] == len(finished) and st["misses"] == 8 - len(finished)
    assert sum(row[0].cached for row in out) == len(finished)
    again.close()
