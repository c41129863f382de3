"""OpenAI-compatible HTTP back end: ``vllm serve``, SGLang, llama.cpp's server, hosted APIs.

Each sample is one ``POST {base_url}/chat/completions`` with ``n=1`` and its own seed; up to
``max_concurrency`` are in flight (a thread pool over one pooled ``httpx`` client), spread over the
``base_urls``. 429, 408, 5xx, timeouts, refused or dropped connections and malformed bodies are
retried with exponential backoff and jitter (``Retry-After`` honoured), moving to the next server;
after ``max_retries`` the batch stops with an :class:`EngineError` naming the server and the last
status, and samples already finished have been handed to the cache. Other 4xx answers are recorded
as error completions (a prompt too long for the server's context raises :class:`ContextLengthError`).
The key comes from the environment variable named by ``api_key_env``, never from params.

Label answers use the server's own guided-choice extension where it has one (see
:mod:`cogpo_kit.engines.openai_bodies`); ``guided_choice: auto`` tells the servers apart by
``GET /models`` (``owned_by``) and vLLM releases by ``GET /version``. Reasoning models on vLLM think
first; the label then continues their tokens under the constraint (``/v1/completions`` with the
prompt, thinking and end-of-thinking token ids; the end-of-thinking ids come from ``/tokenize``).
Elsewhere the label is parsed from the text after the end-of-thinking marker. On servers started
with a reasoning parser the thinking is read from the message's ``reasoning`` field.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, ContextLengthError, EngineCapabilities, EngineError, Request
from cogpo_kit.engines.common import describe_request, error_completion, label_completion
from cogpo_kit.engines.config import EngineParams
from cogpo_kit.engines.openai_bodies import (Reply, Server, completion_label_body, flavor_from_models,
                                             parse_response, parse_tokens, parse_version, request_body)
from cogpo_kit.engines.vllm_engine import continuation_ids

RETRY_STATUS = {408, 409, 425, 429}
CONTEXT_ERROR = re.compile(r"context (length|window)|maximum context|exceed.*(context|tokens)|too long",
                           re.IGNORECASE)

__all__ = ["OpenAIEngine", "Reply", "Server", "flavor_from_models", "parse_response", "request_body"]


class _Aborted(Exception):
    """A queued sample skipped because the batch already failed."""


def server_root(url: str) -> str:
    """The server's root (``/version``, ``/tokenize`` live there) from a ``.../v1`` base URL."""
    return url[:-3] if url.endswith("/v1") else url


class OpenAIEngine:
    """Client of one or more OpenAI-compatible servers serving the same model."""

    name = "openai"
    capabilities = EngineCapabilities(streams_results=True)

    def __init__(self, config: EngineParams):
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
        self._servers: dict[str, Server] = {}
        self._think_ids: Optional[list[int]] = None
        self._next = 0
        self._lock = threading.Lock()
        self.prompt_truncations: dict[str, int] = {}

    # -- servers --------------------------------------------------------------------------
    def server(self, url: str) -> Server:
        """What the server at ``url`` is: how it takes labels (``guided_choice`` unless ``auto``) and,
        for vLLM, its release."""
        if url in self._servers:
            return self._servers[url]
        flavor = self.config.guided_choice
        if flavor == "auto":
            try:
                r = self.client.get(url + "/models", timeout=min(10.0, self.config.timeout_s))
                r.raise_for_status()
                flavor = flavor_from_models(r.json())
            except Exception as exc:  # the server is not up yet: the request itself will retry
                self.logger.warning("openai: cannot identify %s (%s); labels parsed from free text", url, exc)
                return Server("none")
        version = None
        if flavor == "vllm":
            try:
                r = self.client.get(server_root(url) + "/version", timeout=min(10.0, self.config.timeout_s))
                r.raise_for_status()
                version = parse_version(r.json())
            except Exception as exc:
                self.logger.warning("openai: no vLLM release from %s/version (%s); taken as recent",
                                    server_root(url), exc)
        info = Server(flavor, version)
        self.logger.info("openai: %s takes labels as: %s%s", url, flavor,
                         f" (vLLM {'.'.join(map(str, version))})" if version else "")
        self._servers[url] = info
        return info

    def flavor(self, url: str) -> str:
        """How the server at ``url`` takes constrained labels."""
        return self.server(url).flavor

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        cap = float(self.config.retry_backoff_max_s)
        if retry_after:
            try:
                return min(cap, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(cap, float(self.config.retry_backoff_s) * (2 ** attempt))
        return random.uniform(base / 2, base)

    def _post(self, make_body: Callable[[str], dict], where: str, abort: threading.Event, *,
              endpoint: Callable[[str], str] = lambda url: url + "/chat/completions",
              parse: Callable[[Any], Any] = parse_response) -> Any:
        """POST with retries; returns the parsed answer, or an error Completion for 4xx."""
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
                r = self.client.post(endpoint(url), json=make_body(url))
            except httpx.TimeoutException:
                last = f"timeout after {self.config.timeout_s:g} s"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {exc})"
            else:
                if r.status_code == 200:
                    try:
                        out = parse(r.json())
                    except ValueError as exc:
                        last = f"HTTP 200 with a malformed body ({exc})"
                    else:
                        if not (isinstance(out, Reply) and out.finish == "error"):
                            return out
                        last = "HTTP 200 with finish_reason 'error' (a server-side failure)"
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

    def _tokenize(self, text: str, abort: threading.Event) -> Any:
        """Token ids of ``text`` (no special tokens) from vLLM's ``/tokenize``; the marker's are kept."""
        if text == self.config.thinking_end and self._think_ids is not None:
            return self._think_ids
        out = self._post(lambda url: {"model": self.config.model, "prompt": text, "add_special_tokens": False},
                         "tokenize", abort, endpoint=lambda url: server_root(url) + "/tokenize", parse=parse_tokens)
        if text == self.config.thinking_end and not isinstance(out, Completion):
            self._think_ids = out
        return out

    # -- generation -----------------------------------------------------------------------
    def _label_after_thinking(self, r: Request, index: int, where: str, first: Reply,
                              abort: threading.Event) -> Completion:
        """Continue a reasoning model's tokens after its thinking under the label constraint."""
        think = self.config.thinking_end or ""
        thought = first.reasoning + first.text
        if first.prompt_ids is None or first.token_ids is None:
            return error_completion(f"openai: the server returned no token ids for the thinking of {where} "
                                    f"(return_token_ids, vLLM >= 0.11); set guided_choice: none to parse "
                                    f"labels from free text instead", first.prompt_tokens)
        think_ids = self._tokenize(think, abort)
        if isinstance(think_ids, Completion):
            return think_ids
        failed: list[Completion] = []

        def encode(text: str) -> list[int]:
            ids = self._tokenize(text, abort)
            if isinstance(ids, Completion):
                failed.append(ids)
                return []
            return ids

        ids = continuation_ids(first.prompt_ids, first.token_ids, thought, first.finish, think_ids, encode)
        if failed:
            return failed[0]
        out = self._post(lambda url: completion_label_body(r, index, self.config, self.server(url), ids),
                         where + " (label)", abort, endpoint=lambda url: url + "/completions",
                         parse=lambda payload: parse_response(payload, chat=False))
        if isinstance(out, Completion):
            return out
        n_new = first.completion_tokens or len(first.token_ids)
        return label_completion(thought + think + out.text, out.finish, first.prompt_tokens or len(first.prompt_ids),
                                n_new + (out.completion_tokens or 0), r.choices, think, constrained=True)

    def _sample(self, r: Request, i: int, j: int, abort: threading.Event) -> Completion:
        index = r.sample_offset + j
        where = describe_request(i, r) + f" sample {index}"
        think = self.config.thinking_end
        used: dict[str, Server] = {}

        def body(url: str) -> dict:
            used["server"] = self.server(url)
            return request_body(r, index, self.config, used["server"])

        out = self._post(body, where, abort)
        if isinstance(out, Completion):
            return out
        srv = used.get("server", Server())
        if r.choices is not None and think and srv.token_level:
            return self._label_after_thinking(r, index, where, out, abort)
        constrained = r.choices is not None and srv.flavor in ("vllm", "grammar") and not think
        return label_completion(out.full_text(think), out.finish, out.prompt_tokens, out.completion_tokens,
                                r.choices, think, constrained=constrained)

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
