"""OpenAI-compatible HTTP back end: ``vllm serve``, SGLang, llama.cpp's server, hosted APIs.

Each sample is one ``POST {base_url}/chat/completions`` with ``n=1`` and its own seed; up to
``max_concurrency`` are in flight (a thread pool over one pooled ``httpx`` client), spread over the
``base_urls``. 429, 408, 5xx, timeouts, refused or dropped connections and malformed bodies are
retried with exponential backoff and jitter (``Retry-After`` honoured), moving to the next server;
after ``max_retries`` the batch stops with an :class:`EngineError` naming the server and the last
status, and samples already finished have been handed to the cache. Other 4xx answers are recorded
as error completions (a prompt too long for the server's context raises :class:`ContextLengthError`).
The key comes from the environment variable named by ``api_key_env``, never from params.

Label answers use the server's own guided-choice extension where it has one: a GBNF ``grammar``
field (llama.cpp server) or vLLM's ``structured_outputs: {"choice": [...]}``; other servers get
free text, parsed. ``guided_choice: auto`` tells the servers apart by ``GET /models`` (``owned_by``).
Reasoning models on vLLM think first, then the label continues their message under the constraint;
elsewhere the label is parsed from the text after the end-of-thinking marker.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, ContextLengthError, EngineError, Request
from cogpo_kit.engines.common import (choices_grammar, describe_request, error_completion,
                                      label_budget, label_completion, sample_seed)
from cogpo_kit.engines.config import EngineConfig

RETRY_STATUS = {408, 409, 425, 429}
CONTEXT_ERROR = re.compile(r"context (length|window)|maximum context|exceed.*(context|tokens)|too long",
                           re.IGNORECASE)


class _Aborted(Exception):
    """A queued sample skipped because the batch already failed."""


def flavor_from_models(payload: Any) -> str:
    """``vllm``, ``grammar`` (llama.cpp) or ``none`` from a ``GET /models`` answer."""
    try:
        owners = {str(m.get("owned_by", "")).lower() for m in payload.get("data", [])}
    except AttributeError:
        return "none"
    if "vllm" in owners:
        return "vllm"
    if owners & {"llamacpp", "llama.cpp", "me"}:
        return "grammar"
    return "none"


def request_body(request: Request, index: int, config: EngineConfig, flavor: str, *, phase: int = 1,
                 thought: str = "") -> dict:
    """The JSON body of sample ``index`` of ``request`` for a server of the given flavor."""
    s = request.sampling
    think = config.thinking_end
    msgs = [{"role": m["role"], "content": m["content"]} for m in request.messages]
    body: dict[str, Any] = {"model": config.model, "messages": msgs, "n": 1,
                            "temperature": max(0.0, float(s.temperature)), "top_p": float(s.top_p),
                            "max_tokens": int(s.max_tokens), "seed": sample_seed(s.seed, index)}
    stops = list(s.stop)
    if flavor in ("vllm", "grammar") and s.top_k and s.top_k > 0:
        body["top_k"] = int(s.top_k)
    if request.choices is not None:
        if think and flavor == "vllm" and phase == 1:
            body["max_tokens"] = int(config.max_thinking_tokens)
            stops.append(think)
        elif think and flavor == "vllm":
            body["messages"] = msgs + [{"role": "assistant", "content": thought + think}]
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
            body["max_tokens"] = label_budget(request)
            body["structured_outputs"] = {"choice": list(request.choices)}
        elif think:
            body["max_tokens"] = int(config.max_thinking_tokens) + label_budget(request)
        elif flavor == "vllm":
            body["max_tokens"] = label_budget(request)
            body["structured_outputs"] = {"choice": list(request.choices)}
        elif flavor == "grammar":
            body["max_tokens"] = label_budget(request)
            body["grammar"] = choices_grammar(request.choices)
        else:
            body["max_tokens"] = max(label_budget(request), int(s.max_tokens))
    if flavor == "vllm" and config.truncation == "left":
        body["truncate_prompt_tokens"] = max(1, int(config.context_length) - int(body["max_tokens"]))
    if stops:
        body["stop"] = stops
    return body


def parse_response(payload: Any) -> tuple[str, str, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of a chat completion; ValueError if malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
        raise ValueError("no 'choices' list")
    ch = payload["choices"][0]
    msg = ch.get("message") if isinstance(ch, dict) else None
    if not isinstance(msg, dict) or not isinstance(msg.get("content", ""), (str, type(None))):
        raise ValueError("no 'choices[0].message.content'")
    text = msg.get("content") or ""
    fin = ch.get("finish_reason")
    usage = payload.get("usage") or {}
    finish = "length" if fin == "length" else "stop"
    return text, finish, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class OpenAIEngine:
    """Client of one or more OpenAI-compatible servers serving the same model."""

    name = "openai"
    streams_results = True

    def __init__(self, config: EngineConfig):
        import httpx

        if not config.base_urls:
            raise EngineError("openai: params give no base_urls (e.g. http://127.0.0.1:8000/v1)")
        self.config = config
        self.logger = logging.getLogger("cogpo_kit.engines.openai")
        self.urls = [u.rstrip("/") for u in config.base_urls]
        self.model_id = f"openai:{config.model}"
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise EngineError(f"openai: environment variable {config.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        conc = max(1, int(config.max_concurrency))
        self._httpx = httpx
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)),
                                   limits=httpx.Limits(max_connections=conc, max_keepalive_connections=conc))
        self._flavors: dict[str, str] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.prompt_truncations: dict[str, int] = {}

    # -- servers --------------------------------------------------------------------------
    def flavor(self, url: str) -> str:
        """How the server at ``url`` takes constrained labels (``guided_choice`` unless ``auto``)."""
        if self.config.guided_choice != "auto":
            return self.config.guided_choice
        if url not in self._flavors:
            try:
                r = self.client.get(url + "/models", timeout=min(10.0, self.config.timeout_s))
                r.raise_for_status()
                self._flavors[url] = flavor_from_models(r.json())
                self.logger.info("openai: %s takes labels as: %s", url, self._flavors[url])
            except Exception as exc:  # the server is not up yet: the request itself will retry
                self.logger.warning("openai: cannot identify %s (%s); labels parsed from free text", url, exc)
                return "none"
        return self._flavors[url]

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        cap = float(self.config.retry_backoff_max_s)
        if retry_after:
            try:
                return min(cap, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(cap, float(self.config.retry_backoff_s) * (2 ** attempt))
        return random.uniform(base / 2, base)

    def _post(self, make_body: Callable[[str], dict], where: str, abort: threading.Event) -> tuple:
        """POST with retries; returns the parsed response or an error Completion for 4xx."""
        httpx = self._httpx
        with self._lock:
            start = self._next
            self._next += 1
        last, url = "no attempt", self.urls[start % len(self.urls)]
        attempts = int(self.config.max_retries) + 1
        for attempt in range(attempts):
            if abort.is_set():
                raise _Aborted()
            url = self.urls[(start + attempt) % len(self.urls)]
            retry_after = None
            try:
                r = self.client.post(url + "/chat/completions", json=make_body(url))
            except httpx.TimeoutException:
                last = f"timeout after {self.config.timeout_s:g} s"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {exc})"
            else:
                if r.status_code == 200:
                    try:
                        return parse_response(r.json())
                    except ValueError as exc:
                        last = f"HTTP 200 with a malformed body ({exc})"
                elif r.status_code in RETRY_STATUS or r.status_code >= 500:
                    last = f"HTTP {r.status_code} {r.text[:200]!r}"
                    retry_after = r.headers.get("retry-after")
                else:
                    detail = r.text[:300]
                    if r.status_code in (400, 413) and CONTEXT_ERROR.search(detail):
                        raise ContextLengthError(f"openai: {where} does not fit the context of {url}: {detail}")
                    return error_completion(f"{url}: HTTP {r.status_code}: {detail}")
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                self.logger.warning("openai: %s: %s from %s; retry %d/%d in %.2f s", where, last, url,
                                    attempt + 1, attempts - 1, delay)
                if abort.wait(delay):
                    raise _Aborted()
        abort.set()  # the server is gone: queued samples are not started
        raise EngineError(f"openai: server {url} failed {attempts} times for {where}; last status: {last}")

    # -- generation -----------------------------------------------------------------------
    def _sample(self, r: Request, i: int, j: int, abort: threading.Event) -> Completion:
        index = r.sample_offset + j
        where = describe_request(i, r) + f" sample {index}"
        think = self.config.thinking_end
        used: dict[str, str] = {}

        def body(url: str, phase: int = 1, thought: str = "") -> dict:
            used["flavor"] = self.flavor(url) if r.choices is not None or r.sampling.top_k else "none"
            return request_body(r, index, self.config, used["flavor"], phase=phase, thought=thought)

        out = self._post(body, where, abort)
        if isinstance(out, Completion):
            return out
        text, fin, n_prompt, n_new = out
        flavor = used.get("flavor", "none")
        constrained = r.choices is not None and flavor in ("vllm", "grammar") and not think
        if r.choices is not None and think and flavor == "vllm":
            out2 = self._post(lambda url: body(url, 2, text), where + " (label)", abort)
            if isinstance(out2, Completion):
                return out2
            label, fin, _p, n2 = out2
            return label_completion(text + think + label, fin, n_prompt, n_new + n2, r.choices, think,
                                    constrained=True)
        return label_completion(text, fin, n_prompt, n_new, r.choices, think, constrained=constrained)

    def generate(self, requests: Sequence[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]] = None) -> list[list[Completion]]:
        requests = list(requests)
        results: list[list[Optional[Completion]]] = [[None] * r.n for r in requests]
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=max(1, int(self.config.max_concurrency)),
                                  thread_name_prefix="openai")
        futures = {}
        try:
            for i, r in enumerate(requests):
                for j in range(r.n):
                    futures[pool.submit(self._sample, r, i, j, abort)] = (i, j)
            pending = set(futures)
            first_error: Optional[BaseException] = None
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, j = futures[fut]
                    exc = fut.exception()
                    if exc is None:
                        results[i][j] = fut.result()
                        if on_result is not None:
                            on_result(i, j, results[i][j])
                    elif not isinstance(exc, _Aborted) and first_error is None:
                        first_error = exc
                        abort.set()  # queued samples stop; running ones finish or fail
            if first_error is not None:
                raise first_error
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [[c for c in row] for row in results]  # type: ignore[misc]

    def close(self) -> None:
        self.client.close()
