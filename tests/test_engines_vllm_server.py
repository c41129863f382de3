"""The OpenAI-compatible engine against a loopback server that answers as ``vllm serve`` does.

The server renders chats with the real (transformers 5) tokenizer and an R1-like template, so a
continued assistant message that the template rewrites fails as it does in vLLM (HTTP 400). It
plays a server started with ``--reasoning-parser`` (the thinking comes back in ``reasoning``), and
a given vLLM release: before 0.11 it reads ``guided_choice`` and ignores ``structured_outputs``,
before 0.9 it rejects ``top_k: 0``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from cogpo_kit.engines import build_engine
from cogpo_kit.engines.base import EngineError, Request
from cogpo_kit.engines.config import EngineParams, SamplingParams

from test_engines_vllm_fakes import model_dirs  # noqa: F401  (fixture)

THOUGHT = "let me think"
Q = ({"role": "user", "content": "Is 2+2=4 right?"},)


class VLLMLike:
    def __init__(self, folder, version="0.30.0", fail_first=0):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        self.version = tuple(int(x) for x in version.split("."))
        self.version_text = version
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.posts: list[tuple[str, dict]] = []

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False)

    def choice(self, body):
        if self.version >= (0, 11):
            choices = (body.get("structured_outputs") or {}).get("choice")
        else:
            choices = body.get("guided_choice")
        return choices[body["seed"] % len(choices)] if choices else None

    def chat(self, body):
        if self.version < (0, 9) and body.get("top_k") == 0:
            return 400, {"error": "top_k must be -1 (disable), or at least 1, got 0."}
        try:
            text = self.tok.apply_chat_template(body["messages"], tokenize=False,
                                                add_generation_prompt=body.get("add_generation_prompt", True),
                                                continue_final_message=body.get("continue_final_message", False))
        except Exception as exc:
            return 400, {"error": str(exc)}
        prompt = self.encode(text)
        label = self.choice(body)
        finish = "stop"
        if label is not None:
            msg, out_ids = {"role": "assistant", "content": label}, self.encode(label)
        elif "</think>" in body.get("stop", []):
            msg = {"role": "assistant", "content": None, "reasoning": THOUGHT}
            out_ids = self.encode(THOUGHT) + self.encode("</think>")
        else:
            msg = {"role": "assistant", "content": "The answer is YES.", "reasoning": THOUGHT}
            out_ids = self.encode(THOUGHT + "</think>The answer is YES.")
        with self.lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                finish = "error"
        reply = {"choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                 "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out_ids)}}
        if body.get("return_token_ids"):
            reply["prompt_token_ids"] = prompt
            reply["choices"][0]["token_ids"] = out_ids
        return 200, reply

    def completions(self, body):
        if not isinstance(body.get("prompt"), list):
            return 400, {"error": "this test server takes token prompts only"}
        label = self.choice(body) or "free text"
        return 200, {"choices": [{"index": 0, "text": label, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(self.encode(label))}}


def handler(state: VLLMLike):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/version":
                return self._send(200, {"version": state.version_text})
            if self.path == "/v1/models":
                return self._send(200, {"data": [{"id": "r1", "owned_by": "vllm"}]})
            self._send(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.posts.append((self.path, body))
            if self.path == "/v1/chat/completions":
                return self._send(*state.chat(body))
            if self.path == "/v1/completions":
                return self._send(*state.completions(body))
            if self.path == "/tokenize":
                return self._send(200, {"tokens": state.encode(body["prompt"])})
            self._send(404, {"error": "not found"})

    return Handler


@pytest.fixture
def serve(loopback_server):
    return lambda state: loopback_server(handler(state))


def engine(url, tmp_path, **kw):
    base = dict(engine="openai", model="r1", base_urls=(url,), max_concurrency=2, timeout_s=5.0, max_retries=2,
                retry_backoff_s=0.01, retry_backoff_max_s=0.02)
    base.update(kw)
    return build_engine(EngineParams(**base), cache_path=str(tmp_path / "c.sqlite"))


def test_r1_label_after_thinking_on_a_reasoning_parser_server(serve, tmp_path, model_dirs):
    state = VLLMLike(model_dirs["r1"])
    eng = engine(serve(state), tmp_path, thinking_end="</think>", max_thinking_tokens=100)
    out = eng.generate([Request(messages=Q, n=2, choices=("YES", "NO"), sampling=SamplingParams(max_tokens=2))])[0]
    assert all(c.ok and c.choice in ("YES", "NO") and c.text == THOUGHT + "</think>" + c.choice for c in out), \
        [c.error for c in out]
    chat = [b for p, b in state.posts if p == "/v1/chat/completions"]
    labels = [b for p, b in state.posts if p == "/v1/completions"]
    assert chat[0]["max_completion_tokens"] == 100 and chat[0]["stop"] == ["</think>"] and chat[0]["return_token_ids"]
    prompt = state.encode(state.tok.apply_chat_template(list(Q), tokenize=False, add_generation_prompt=True))
    assert labels[0]["prompt"] == prompt + state.encode(THOUGHT) + state.encode("</think>")
    assert labels[0]["structured_outputs"] == {"choice": ["YES", "NO"]} and labels[0]["max_tokens"] == 4
    eng.close()


def test_thinking_read_from_the_reasoning_field(serve, tmp_path, model_dirs):
    state = VLLMLike(model_dirs["r1"])
    eng = engine(serve(state), tmp_path, thinking_end="</think>", guided_choice="none")
    [c] = eng.generate([Request(messages=Q, choices=("YES", "NO"))])[0]
    assert c.ok and c.choice == "YES" and c.text == THOUGHT + "</think>The answer is YES."
    eng.close()


def test_old_server_gets_guided_choice_and_top_k_minus_one(serve, tmp_path, model_dirs):
    state = VLLMLike(model_dirs["smollm"], version="0.8.5")
    eng = engine(serve(state), tmp_path)
    out = eng.generate([Request(messages=Q, n=2, choices=("YES", "NO"), sampling=SamplingParams(top_k=0))])[0]
    assert all(c.ok and c.choice in ("YES", "NO") for c in out), [(c.text, c.error) for c in out]
    body = state.posts[0][1]
    assert body["guided_choice"] == ["YES", "NO"] and "structured_outputs" not in body and body["top_k"] == -1
    eng.close()


def test_new_server_gets_structured_outputs_top_k_zero_and_max_completion_tokens(serve, tmp_path, model_dirs):
    state = VLLMLike(model_dirs["smollm"], version="0.30.0")
    eng = engine(serve(state), tmp_path)
    eng.generate([Request(messages=Q, choices=("YES", "NO"), sampling=SamplingParams(top_k=0, max_tokens=2)),
                  Request(messages=Q, sampling=SamplingParams(top_k=0, max_tokens=9))])
    label, free = sorted((b for _p, b in state.posts), key=lambda b: "structured_outputs" not in b)
    assert label["structured_outputs"] == {"choice": ["YES", "NO"]} and "guided_choice" not in label
    assert label["top_k"] == 0 and label["max_completion_tokens"] == 4 and "max_tokens" not in label
    assert free["max_completion_tokens"] == 9 and free["top_k"] == 0
    eng.close()


def test_finish_reason_error_is_retried_then_raised(serve, tmp_path, model_dirs):
    state = VLLMLike(model_dirs["smollm"], fail_first=1)
    eng = engine(serve(state), tmp_path)
    [c] = eng.generate([Request(messages=Q, sampling=SamplingParams(max_tokens=4))])[0]
    assert c.ok and len(state.posts) == 2
    state.fail_first = 10
    with pytest.raises(EngineError, match="finish_reason 'error'"):
        eng.generate([Request(messages=Q, sampling=SamplingParams(max_tokens=4, seed=1))])
    eng.close()
