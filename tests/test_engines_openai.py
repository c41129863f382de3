"""The OpenAI-compatible engine against a scripted loopback server: faults, retries, labels, keys."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from cogpo_kit.engines import build_engine
from cogpo_kit.engines.base import ContextLengthError, EngineError, Request
from cogpo_kit.engines.config import EngineParams, SamplingParams
from cogpo_kit.engines.common import sample_seed
from cogpo_kit.engines.openai_bodies import (Server, completion_label_body, flavor_from_models, parse_response,
                                             parse_version, request_body)

LEVELS = ("easy", "medium", "hard")


class Script:
    """What the server answers, in order; then ``default``."""

    def __init__(self, actions=(), default="ok", owner="someone", slow_s=1.0):
        self.actions, self.default, self.owner, self.slow_s = list(actions), default, owner, slow_s
        self.lock = threading.Lock()
        self.posts: list[dict] = []
        self.headers: list[dict] = []
        self.answered_ok = 0

    def next(self):
        with self.lock:
            return self.actions.pop(0) if self.actions else self.default


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code, body: bytes, headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send(200, json.dumps({"data": [{"id": "m", "owned_by": script.owner}]}).encode())

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.posts.append(body)
                script.headers.append(dict(self.headers))
            action = script.next()
            if action in ("429", "500", "503"):
                return self._send(int(action), b'{"error": "busy"}', [("Retry-After", "0")] if action == "429" else [])
            if action == "400":
                return self._send(400, b'{"error": "bad request: unsupported field"}')
            if action == "ctx":
                return self._send(400, b'{"error": "This model\'s maximum context length is 2048 tokens"}')
            if action == "malformed":
                return self._send(200, b'{"choices": [{"text": "no message here"}]}')
            if action == "garbage":
                return self._send(200, b"<html>oops</html>")
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == "slow":
                time.sleep(script.slow_s)
            last = body["messages"][-1]["content"]
            if "grammar" in body or "structured_outputs" in body:
                text = LEVELS[body["seed"] % 3]
            elif "rate" in last:
                text = "I would call this one Medium."
            else:
                text = f"echo {last} seed={body['seed']}"
            with script.lock:
                script.answered_ok += 1
            self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                                     "finish_reason": "stop"}],
                                        "usage": {"prompt_tokens": 11, "completion_tokens": 3}}).encode())

    return Handler


@pytest.fixture
def server(loopback_server):
    return lambda script: loopback_server(make_handler(script))


def cfg(urls, **kw):
    base = dict(engine="openai", model="m", base_urls=tuple(urls), max_concurrency=3, timeout_s=0.5,
                max_retries=6, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
    base.update(kw)
    return EngineParams(**base)


def req(k, **kw):
    return Request(messages=({"role": "user", "content": f"question {k}"},),
                   sampling=SamplingParams(max_tokens=16, seed=k), tag="agent", **kw)


def test_faults_end_with_exactly_one_good_cached_result(server, tmp_path):
    script = Script(["429", "500", "slow", "malformed", "drop", "garbage", "503", "429"], slow_s=1.0)
    url = server(script)
    path = tmp_path / "c.sqlite"
    eng = build_engine(cfg([url]), cache_path=str(path))
    reqs = [req(k) for k in range(6)] + [req(9, n=2)]
    out = eng.generate(reqs)
    assert all(c.ok and not c.cached for row in out for c in row)
    assert out[0][0].text == f"echo question 0 seed={sample_seed(0, 0)}" and out[6][1].text.endswith(
        f"seed={sample_seed(9, 1)}")
    conn = sqlite3.connect(str(path))
    rows = conn.execute("SELECT key, sample, ok, COUNT(*) FROM responses GROUP BY key, sample").fetchall()
    assert len(rows) == 8 and all(r[2] == 1 and r[3] == 1 for r in rows)
    assert len(script.posts) >= 8 + 8  # every fault was retried
    st = eng.stats_by_tag()["agent"]
    assert (st["calls"], st["misses"], st["errors"]) == (8, 8, 0)
    time.sleep(1.1)  # the slow answer arrives after the client gave up: still one entry
    before = len(script.posts)
    again = eng.generate(reqs)
    assert all(c.cached for row in again for c in row) and len(script.posts) == before
    eng.close()


def test_retries_exhausted_name_server_and_status(server, tmp_path):
    script = Script(default="503")
    url = server(script)
    eng = build_engine(cfg([url], max_retries=2, max_concurrency=1), cache_path=str(tmp_path / "c.sqlite"))
    with pytest.raises(EngineError, match=r"server http://127\.0\.0\.1:\d+/v1 failed 3 times.*last status: HTTP 503"):
        eng.generate([req(0), req(1), req(2)])
    assert len(script.posts) == 3  # one request's attempts; the queued ones were not started
    eng.close()


def test_refused_connections_are_retried_then_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = build_engine(cfg([f"http://127.0.0.1:{port}/v1"], max_retries=1), cache_path=str(tmp_path / "c.sqlite"))
    with pytest.raises(EngineError, match=r"127\.0\.0\.1:%d.*connection error" % port):
        eng.generate([req(0)])
    eng.close()


def test_second_server_takes_over_from_a_dead_one(server, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    script = Script()
    live = server(script)
    eng = build_engine(cfg([dead, live]), cache_path=str(tmp_path / "c.sqlite"))
    out = eng.generate([req(k) for k in range(4)])
    assert all(row[0].ok for row in out) and script.answered_ok == 4
    eng.close()


def test_client_errors_are_recorded_not_served_and_context_errors_raise(server, tmp_path):
    script = Script(["400"])
    url = server(script)
    eng = build_engine(cfg([url]), cache_path=str(tmp_path / "c.sqlite"))
    c = eng.generate([req(0)])[0][0]
    assert c.finish_reason == "error" and "HTTP 400" in c.error and url in c.error
    assert eng.generate([req(0)])[0][0].ok  # retried on the next call, not served from the cache
    script.actions = ["ctx"]
    with pytest.raises(ContextLengthError, match="request #0 tag 'agent'.*maximum context length"):
        eng.generate([req(5)])
    eng.close()


@pytest.mark.parametrize("owner,field", [("llamacpp", "grammar"), ("vllm", "structured_outputs"), ("openai", None)])
def test_labels_use_the_servers_guided_choice(server, tmp_path, owner, field):
    script = Script(owner=owner)
    url = server(script)
    eng = build_engine(cfg([url]), cache_path=str(tmp_path / "c.sqlite"))
    r = Request(messages=({"role": "user", "content": "rate this"},), n=6, choices=LEVELS,
                sampling=SamplingParams(max_tokens=4, temperature=0.7, top_k=50))
    out = eng.generate([r])[0]
    assert all(c.choice in LEVELS for c in out)
    body = script.posts[0]
    if field == "grammar":
        assert body["grammar"] == 'root ::= "easy" | "medium" | "hard"' and body["top_k"] == 50
        assert body["max_tokens"] == 7  # room for the longest label: "mediu" is not an answer
    elif field == "structured_outputs":
        assert body["structured_outputs"] == {"choice": list(LEVELS)}
    else:
        assert "grammar" not in body and "structured_outputs" not in body and "top_k" not in body
        assert all(c.choice == "medium" and c.text.startswith("I would") for c in out)  # parsed
    eng.close()


def test_key_from_environment_only(server, tmp_path, monkeypatch):
    script = Script()
    url = server(script)
    monkeypatch.delenv("COGPO_TEST_OPENAI_KEY", raising=False)
    with pytest.raises(EngineError, match="COGPO_TEST_OPENAI_KEY"):
        build_engine(cfg([url], api_key_env="COGPO_TEST_OPENAI_KEY"), cache_path=str(tmp_path / "c.sqlite"))
    monkeypatch.setenv("COGPO_TEST_OPENAI_KEY", "sk-secret")
    eng = build_engine(cfg([url], api_key_env="COGPO_TEST_OPENAI_KEY"), cache_path=str(tmp_path / "c.sqlite"))
    eng.generate([req(0)])
    assert script.headers[0].get("Authorization") == "Bearer sk-secret"
    assert "sk-secret" not in (tmp_path / "c.sqlite").read_bytes().decode("latin-1")
    eng.close()


def test_request_body_translation():
    c = EngineParams(engine="openai", model="served", thinking_end="</think>", max_thinking_tokens=100)
    r = Request(messages=({"role": "user", "content": "q"},), choices=("YES", "NO"),
                sampling=SamplingParams(max_tokens=2, stop=("\n\n",)))
    b1 = request_body(r, 0, c, "vllm")  # vLLM: think, stopped at the marker, token ids returned
    assert b1["max_completion_tokens"] == 100 and b1["stop"] == ["\n\n", "</think>"] and b1["return_token_ids"]
    assert "structured_outputs" not in b1 and "max_tokens" not in b1
    b2 = completion_label_body(r, 0, c, Server("vllm", (0, 30, 0)), [1, 2, 3])
    assert b2["prompt"] == [1, 2, 3] and b2["structured_outputs"] == {"choice": ["YES", "NO"]}
    assert b2["max_tokens"] == 4 and b2["top_k"] == 50
    old = completion_label_body(r, 0, c, Server("vllm", (0, 10, 2)), [1])
    assert old["guided_choice"] == ["YES", "NO"] and "structured_outputs" not in old
    b3 = request_body(r, 0, c, "grammar")  # no continuation API: think, then the label is parsed
    assert b3["max_tokens"] == 104 and "grammar" not in b3
    b4 = request_body(r, 0, c, Server("vllm", (0, 10, 0)))  # old vLLM: think and answer in one request
    assert b4["max_completion_tokens"] == 104 and "return_token_ids" not in b4 and "guided_choice" not in b4
    nolimit = Request(messages=r.messages, sampling=SamplingParams(top_k=0))
    assert request_body(nolimit, 0, c, Server("vllm", (0, 8, 5)))["top_k"] == -1
    assert request_body(nolimit, 0, c, Server("vllm", (0, 9, 0)))["top_k"] == 0
    assert request_body(nolimit, 0, c, Server("vllm"))["top_k"] == 0
    assert "top_k" not in request_body(nolimit, 0, c, "grammar")
    assert parse_version({"version": "0.11.0rc2"}) == (0, 11, 0) and parse_version("dev") is None
    assert flavor_from_models({"data": [{"owned_by": "vllm"}]}) == "vllm"
    assert flavor_from_models({"data": [{"owned_by": "me"}]}) == "grammar"
    assert flavor_from_models("nonsense") == "none"
    with pytest.raises(ValueError):
        parse_response({"choices": []})
    none = parse_response({"choices": [{"message": {"content": None}, "finish_reason": "length"}]})
    assert (none.text, none.finish, none.prompt_tokens, none.completion_tokens) == ("", "length", 0, 0)
    for reason, finish in (("error", "error"), ("abort", "error"), ("stop", "stop"), (None, "stop")):
        assert parse_response({"choices": [{"message": {"content": "x"}, "finish_reason": reason}]}).finish == finish
    th = parse_response({"choices": [{"message": {"content": None, "reasoning_content": "hm"}, "finish_reason": "stop",
                                      "token_ids": [4, 5]}], "prompt_token_ids": [1]})
    assert th.reasoning == "hm" and th.token_ids == [4, 5] and th.prompt_ids == [1]
    assert th.full_text("</think>") == "hm</think>"
    cut = parse_response({"choices": [{"message": {"content": None, "reasoning": "hm"}, "finish_reason": "length"}]})
    assert cut.full_text("</think>") == "hm"  # the thinking never ended
    assert parse_response({"choices": [{"text": "YES", "finish_reason": "stop"}]}, chat=False).text == "YES"
    with pytest.raises(ValueError):
        parse_response({"choices": [{"text": "YES", "finish_reason": "stop"}]})  # not a chat answer
