"""OpenAI-compatible HTTP back end: a client of one server or a fleet (``vllm serve``, SGLang, llama.cpp's
server, hosted APIs).

Each sample is one ``POST {base_url}/chat/completions`` with ``n=1`` and its own seed. Requests go out
from one asyncio loop in a background thread over ``httpx``'s async client, so thousands may be in
flight (``max_concurrency``) without a thread each; ``generate`` keeps its blocking API and calls
``on_result`` in the caller's thread as each sample finishes (so the response cache keeps a killed
run's finished work). ``generate(..., more=...)`` takes further requests while it runs
(``accepts_more``): a CRV stage streams through the servers instead of waiting for each round's slowest
request.

Each attempt goes to the server in rotation with the fewest requests in flight
(:class:`~cogpo_kit.engines.fleet.Fleet`). A server that refuses connections or fails ``eject_after``
attempts in a row leaves rotation, its requests in flight move to the others, and it is checked again
(``GET /health`` at its root) after ``eject_s``, doubling up to ``eject_max_s``; servers in rotation
that have answered nothing for ``health_interval_s`` are checked too. :meth:`OpenAIEngine.fleet_stats`
counts per server the attempts, answers, errors, tokens and time (the CRV stages put them in their
manifest).

429, 408, 5xx, timeouts, refused or dropped connections and malformed bodies are retried with
exponential backoff and jitter (``Retry-After`` honoured), on another server where there is one;
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

import asyncio
import itertools
import json
import logging
import os
import queue
import random
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

try:  # httpcore imports sniffio on every async request; where it is not installed, each import searches
    import sniffio  # noqa: F401  # sys.path (a third of the client's CPU, measured at 64 in flight)
except ImportError:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]  # fail at once, as it would anyway

from cogpo_kit.engines.base import Completion, ContextLengthError, EngineCapabilities, EngineError, Request
from cogpo_kit.engines.common import describe_request, error_completion, label_completion
from cogpo_kit.engines.config import EngineParams
from cogpo_kit.engines.fleet import Fleet, fleet_totals
from cogpo_kit.engines.openai_bodies import (Reply, Server, completion_label_body, flavor_from_models,
                                             parse_response, parse_tokens, parse_version, request_body)
from cogpo_kit.engines.vllm_engine import continuation_ids

RETRY_STATUS = {408, 409, 425, 429}
CONTEXT_ERROR = re.compile(r"context (length|window)|maximum context|exceed.*(context|tokens)|too long",
                           re.IGNORECASE)
START_CHUNK = 64
"""Samples started per turn of the loop."""
KEEPALIVE_S = 4.0
"""Idle connections are closed after this long: before the 5 s after which uvicorn (vLLM, SGLang,
llama-cpp-python) closes them itself, so a request never goes out on a connection the server is closing."""

__all__ = ["OpenAIEngine", "Reply", "Server", "flavor_from_models", "parse_response", "request_body"]


class _Aborted(Exception):
    """A queued sample skipped because the batch already failed."""


def server_root(url: str) -> str:
    """The server's root (``/version``, ``/tokenize``, ``/health`` live there) from a ``.../v1`` base URL."""
    return url[:-3] if url.endswith("/v1") else url


def _chat(url: str) -> str:
    return url + "/chat/completions"


@dataclass
class _Reply:
    """An HTTP answer: status, headers (lower-case names), body."""

    status_code: int
    headers: dict
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connections:
    """Keep-alive HTTP/1.1 connections to one server, one per request in flight, reused last-in first-out.

    Each is an ``httpcore`` connection (the layer under httpx): httpx's pool re-examines every connection
    and waiting request whenever one starts or ends. Against the stub servers of ``benchmarks/fleet.py``
    (2 loaded cores), one ``httpx.AsyncClient`` with a pool of 64 took 2.9 ms of CPU per request at 64 in
    flight and 4.2 ms at 512; pools of 8 took 1.9 ms; a connection per request in flight 0.8-0.9 ms. A
    server reached through a proxy (``HTTP(S)_PROXY``/``ALL_PROXY``, not bypassed by ``NO_PROXY``) goes
    through an ``httpx`` client instead, which honours the proxy settings."""

    def __init__(self, url: str, *, headers: list, timeout_s: float, ssl_context: Any, backend: Any,
                 proxied: bool, limit: int):
        import httpcore
        import httpx

        self.httpcore = httpcore
        self.headers = headers
        self.origin = httpcore.URL(url).origin
        self.ssl_context, self.backend = ssl_context, backend
        connect = min(10.0, timeout_s)
        self.extensions = {"timeout": {"connect": connect, "read": timeout_s, "write": timeout_s, "pool": timeout_s}}
        self.idle: list = []
        self.client = None
        if proxied:
            self.client = httpx.AsyncClient(
                headers={k.decode(): v.decode() for k, v in headers}, verify=ssl_context,
                timeout=httpx.Timeout(timeout_s, connect=connect),
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit,
                                    keepalive_expiry=KEEPALIVE_S))

    def _usable(self, conn: Any) -> bool:
        return conn.is_available() and not conn.has_expired()

    async def post(self, target: str, body: dict) -> _Reply:
        """``POST target`` with ``body`` as JSON; httpcore's or httpx's exceptions when it fails."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if self.client is not None:
            r = await self.client.post(target, content=data, headers={"Content-Type": "application/json"})
            return _Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)
        conn = None
        while self.idle and conn is None:
            conn = self.idle.pop()
            if not self._usable(conn):
                _close_soon(conn)
                conn = None
        if conn is None:
            conn = self.httpcore.AsyncHTTPConnection(self.origin, ssl_context=self.ssl_context,
                                                     keepalive_expiry=KEEPALIVE_S, network_backend=self.backend)
        try:
            r = await conn.request("POST", target, headers=self.headers, content=data, extensions=self.extensions)
        except BaseException:
            _close_soon(conn)
            raise
        if self._usable(conn):
            self.idle.append(conn)
        else:
            _close_soon(conn)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in r.headers}
        return _Reply(r.status, headers, r.content)

    def prune(self) -> None:
        """Close idle connections that expired or that the server closed."""
        keep = [c for c in self.idle if self._usable(c)]
        for c in self.idle:
            if not self._usable(c):
                _close_soon(c)
        self.idle = keep

    async def aclose(self) -> None:
        for c in self.idle:
            await c.aclose()
        self.idle = []
        if self.client is not None:
            await self.client.aclose()


def _close_soon(conn: Any) -> None:
    """Close a connection in the background (from the loop's thread)."""
    task = asyncio.ensure_future(conn.aclose())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing to report


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to ``url`` through a proxy."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    return (parts.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(parts.hostname or "")


@dataclass
class _Result:
    """How one attempt ended: ``done`` (``value`` is the answer or an error completion), ``retry``,
    ``moved`` (cancelled: its server left rotation) or ``context`` (the prompt does not fit)."""

    kind: str
    value: Any = None
    status: str = ""
    retry_after: Optional[str] = None


class _Batch:
    """One ``generate`` call: its samples waiting in the loop, its tasks, its abort flag, and the results
    it sends to the caller's thread."""

    def __init__(self) -> None:
        self.events: "queue.SimpleQueue[tuple[int, int, Optional[Completion], Optional[BaseException]]]" = \
            queue.SimpleQueue()
        self.pending: deque = deque()
        self.tasks: set = set()
        self.abort: Optional[asyncio.Event] = None  # made in the loop's thread
        self.dispatch_queued = False

    def post(self, i: int, j: int, c: Optional[Completion], exc: Optional[BaseException]) -> None:
        self.events.put((i, j, c, exc))


class OpenAIEngine:
    """Client of one or more OpenAI-compatible servers serving the same model."""

    name = "openai"
    capabilities = EngineCapabilities(streams_results=True, accepts_more=True)

    def __init__(self, config: EngineParams):
        import httpcore
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
        try:
            self.fleet = Fleet(self.urls, eject_after=config.eject_after, eject_s=config.eject_s,
                               eject_max_s=config.eject_max_s, health_interval_s=config.health_interval_s,
                               now=time.monotonic())
        except ValueError as exc:
            raise EngineError(f"openai: base_urls: {exc}") from None
        self._httpx, self._httpcore = httpx, httpcore
        self._headers = headers
        self._concurrency = max(1, int(config.max_concurrency))
        self._timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
        self._connections: dict[str, _Connections] = {}
        self._ssl_context = httpx.create_ssl_context()
        self._backend = None  # httpcore's network backend, made in the loop
        self._control = None  # small client for /models, /version and /health
        self._servers: dict[str, Server] = {}
        self._server_locks: dict[str, asyncio.Lock] = {}
        self._think_ids: Optional[list[int]] = None
        self._tickets = itertools.count()
        self._attempts: dict[int, asyncio.Future] = {}
        self._active = 0
        self._monitor_task: Optional[asyncio.Task] = None
        self._pruned = 0.0
        self.prompt_truncations: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-http", daemon=True)
        self._thread.start()
        self._closed = False

    # -- the loop -------------------------------------------------------------------------------
    def _call(self, coro: Awaitable, timeout: Optional[float] = None) -> Any:
        """Run ``coro`` on the engine's loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _conns(self, url: str) -> _Connections:
        """The connections to ``url`` (made on first use)."""
        conns = self._connections.get(url)
        if conns is None:
            if self._backend is None:
                self._backend = self._httpcore.AnyIOBackend()
            headers = [(b"Content-Type", b"application/json")] + [(k.encode(), v.encode())
                                                                 for k, v in self._headers.items()]
            conns = self._connections[url] = _Connections(
                url, headers=headers, timeout_s=float(self.config.timeout_s), ssl_context=self._ssl_context,
                backend=self._backend, proxied=_proxied(url), limit=self._concurrency)
        return conns

    def _control_client(self):
        if self._control is None:
            self._control = self._httpx.AsyncClient(headers=self._headers, timeout=self._timeout,
                                                    verify=self._ssl_context)
        return self._control

    # -- servers --------------------------------------------------------------------------
    def server(self, url: str) -> Server:
        """What the server at ``url`` is: how it takes labels (``guided_choice`` unless ``auto``) and,
        for vLLM, its release."""
        return self._call(self._server(url))

    def flavor(self, url: str) -> str:
        """How the server at ``url`` takes constrained labels."""
        return self.server(url).flavor

    async def _server(self, url: str) -> Server:
        if url in self._servers:
            return self._servers[url]
        lock = self._server_locks.setdefault(url, asyncio.Lock())
        async with lock:  # one identification per server, however many requests wait for it
            if url in self._servers:
                return self._servers[url]
            return await self._identify(url)

    async def _identify(self, url: str) -> Server:
        client, short = self._control_client(), min(10.0, self.config.timeout_s)
        flavor = self.config.guided_choice
        if flavor == "auto":
            try:
                r = await client.get(url + "/models", timeout=short)
                r.raise_for_status()
                flavor = flavor_from_models(r.json())
            except Exception as exc:  # the server is not up yet: the request itself will retry
                self.logger.warning("openai: cannot identify %s (%s); labels parsed from free text", url, exc)
                return Server("none")
        version = None
        if flavor == "vllm":
            try:
                r = await client.get(server_root(url) + "/version", timeout=short)
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

    def fleet_stats(self) -> dict:
        """Per server (``servers``: URL -> counts, see :class:`~cogpo_kit.engines.fleet.ServerStats`) and
        their sums (``totals``), since this engine was built."""
        if self._loop.is_closed() or not self._thread.is_alive():
            stats = self.fleet.stats()
        else:  # read where the counts are kept
            stats = self._call(_as_coro(self.fleet.stats), timeout=30)
        return {"servers": stats, "totals": fleet_totals(stats)}

    # -- health ---------------------------------------------------------------------------
    async def _monitor(self) -> None:
        """Health checks while a batch runs: ejected servers when their wait is over, quiet ones in rotation."""
        while self._active:
            now = time.monotonic()
            for url in self.fleet.checks_due(now):
                self._loop.create_task(self._check(url))
            if now - self._pruned >= KEEPALIVE_S:
                self._pruned = now
                for conns in self._connections.values():
                    conns.prune()
            nxt = self.fleet.next_check_at()
            await asyncio.sleep(0.5 if nxt is None else min(0.5, max(0.02, nxt - now)))

    async def _check(self, url: str) -> None:
        httpx = self._httpx
        was = self.fleet.in_rotation(url)
        try:
            r = await self._control_client().get(server_root(url) + "/health", timeout=self.config.health_timeout_s)
            ok, detail = r.status_code < 500, f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # never let a check kill the loop
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        moved = self.fleet.check_done(url, time.monotonic(), ok, detail)
        self._rotation_changed(url, was, detail)
        self._move(moved)

    def _rotation_changed(self, url: str, was: bool, why: str) -> None:
        now = self.fleet.in_rotation(url)
        if was and not now:
            self.logger.warning("openai: %s out of rotation (%s); %d of %d servers left", url, why,
                                len(self.fleet.rotation()), len(self.urls))
        elif now and not was:
            self.logger.info("openai: %s back in rotation", url)

    def _move(self, tickets: Sequence[int]) -> None:
        """Cancel attempts in flight on a server that left rotation: they retry elsewhere at once."""
        for t in tickets:
            task = self._attempts.get(t)
            if task is not None and not task.done():
                task.cancel()

    # -- one POST, retried ----------------------------------------------------------------
    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        cap = float(self.config.retry_backoff_max_s)
        if retry_after:
            try:
                return min(cap, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(cap, float(self.config.retry_backoff_s) * (2 ** attempt))
        return random.uniform(base / 2, base)

    async def _attempt(self, url: str, make_body: Callable[[str], Awaitable[dict]], endpoint: Callable[[str], str],
                       parse: Callable[[Any], Any]) -> _Result:
        """One POST to ``url`` (just picked): counted in the fleet from now on, cancelled if its server
        leaves rotation (while the body is made, the server identified, or the answer awaited)."""
        httpx, httpcore = self._httpx, self._httpcore
        ticket = next(self._tickets)
        self.fleet.start(url, ticket, time.monotonic())
        conns = self._conns(url)

        async def send() -> Any:
            return await conns.post(endpoint(url), await make_body(url))

        task = asyncio.ensure_future(send())
        self._attempts[ticket] = task
        try:
            await asyncio.wait({task})
        except BaseException:  # this sample was cancelled (the batch stopped): the attempt goes too
            task.cancel()
            self.fleet.drop(url, ticket)
            raise
        finally:
            self._attempts.pop(ticket, None)
        now = time.monotonic()
        if task.cancelled():  # moved: its server failed a health check (only _move cancels it)
            self.fleet.finish(url, ticket, now, "moved")
            return _Result("moved", status=f"moved off {url} (out of rotation)")
        was = self.fleet.in_rotation(url)
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, (httpx.TimeoutException, httpcore.TimeoutException)):
                connecting = isinstance(exc, (httpx.ConnectTimeout, httpcore.ConnectTimeout))
                limit = min(10.0, self.config.timeout_s) if connecting else self.config.timeout_s
                outcome, status = "failed", f"timeout after {limit:g} s ({type(exc).__name__})"
            elif isinstance(exc, (httpx.ConnectError, httpcore.ConnectError)):
                outcome, status = "refused", f"connection error ({type(exc).__name__}: {exc})"
            elif isinstance(exc, (httpx.TransportError, httpcore.NetworkError, httpcore.ProtocolError, OSError)):
                outcome, status = "failed", f"connection error ({type(exc).__name__}: {exc})"
            else:
                self.fleet.drop(url, ticket)
                raise exc
            self.fleet.finish(url, ticket, now, outcome, error=status)
            self._rotation_changed(url, was, status)
            return _Result("retry", status=status)
        r = task.result()
        result, outcome, tokens = self._read(url, r, parse)
        self.fleet.finish(url, ticket, now, outcome, error=result.status, prompt_tokens=tokens[0],
                          completion_tokens=tokens[1])
        self._rotation_changed(url, was, result.status)
        return result

    def _read(self, url: str, r: Any, parse: Callable[[Any], Any]) -> tuple[_Result, str, tuple[int, int]]:
        """What an HTTP answer means: the result, the fleet's outcome and the tokens it used."""
        if r.status_code == 200:
            try:
                out = parse(r.json())
            except ValueError as exc:
                return _Result("retry", status=f"HTTP 200 with a malformed body ({exc})"), "failed", (0, 0)
            if isinstance(out, Reply) and out.finish == "error":
                return (_Result("retry", status="HTTP 200 with finish_reason 'error' (a server-side failure)"),
                        "failed", (0, 0))
            tokens = (out.prompt_tokens, out.completion_tokens) if isinstance(out, Reply) else (0, 0)
            return _Result("done", out), "ok", tokens
        if r.status_code in RETRY_STATUS or r.status_code >= 500:
            status = f"HTTP {r.status_code} {r.text[:200]!r}"
            outcome = "throttled" if r.status_code in RETRY_STATUS else "failed"
            return _Result("retry", status=status, retry_after=r.headers.get("retry-after")), outcome, (0, 0)
        detail = r.text[:300]
        if r.status_code in (400, 413) and CONTEXT_ERROR.search(detail):
            return _Result("context", status=detail), "answered", (0, 0)
        return _Result("done", error_completion(f"{url}: HTTP {r.status_code}: {detail}")), "answered", (0, 0)

    async def _post(self, make_body: Callable[[str], Awaitable[dict]], where: str, batch: _Batch, *,
                    endpoint: Callable[[str], str] = _chat, parse: Callable[[Any], Any] = parse_response) -> Any:
        """POST with retries; returns the parsed answer, or an error Completion for 4xx."""
        assert batch.abort is not None
        attempts = int(self.config.max_retries) + 1
        last, url, avoid, tried = "no attempt", self.urls[0], None, []
        for attempt in range(attempts):
            if batch.abort.is_set():
                raise _Aborted()
            url = self.fleet.pick(time.monotonic(), avoid)
            res = await self._attempt(url, make_body, endpoint, parse)
            if res.kind == "done":
                return res.value
            if res.kind == "context":
                raise ContextLengthError(f"openai: {where} does not fit the context of {url}: {res.status}")
            last, avoid = res.status, url
            tried.append(url)
            if attempt + 1 < attempts:
                # off a server out of rotation, onto another one: at once; otherwise back off
                elsewhere = not self.fleet.in_rotation(url) and bool(self.fleet.rotation())
                delay = 0.0 if res.kind == "moved" or elsewhere else self._delay(attempt, res.retry_after)
                self.logger.warning("openai: %s: %s from %s; retry %d/%d in %.2f s", where, last, url,
                                    attempt + 1, attempts - 1, delay)
                if delay > 0:
                    try:
                        await asyncio.wait_for(batch.abort.wait(), delay)
                        raise _Aborted()
                    except asyncio.TimeoutError:
                        pass
        batch.abort.set()  # the servers are gone: queued samples are not started
        servers = list(dict.fromkeys(tried))
        if len(servers) == 1:
            raise EngineError(f"openai: server {url} failed {attempts} times for {where}; last status: {last}")
        raise EngineError(f"openai: servers {', '.join(servers)} failed {attempts} times for {where}; "
                          f"last status (from {url}): {last}")

    async def _tokenize(self, text: str, batch: _Batch) -> Any:
        """Token ids of ``text`` (no special tokens) from vLLM's ``/tokenize``; the marker's are kept."""
        if text == self.config.thinking_end and self._think_ids is not None:
            return self._think_ids

        async def body(url: str) -> dict:
            return {"model": self.config.model, "prompt": text, "add_special_tokens": False}

        out = await self._post(body, "tokenize", batch, endpoint=lambda url: server_root(url) + "/tokenize",
                               parse=parse_tokens)
        if text == self.config.thinking_end and not isinstance(out, Completion):
            self._think_ids = out
        return out

    # -- generation -----------------------------------------------------------------------
    async def _label_after_thinking(self, r: Request, index: int, where: str, first: Reply,
                                    batch: _Batch) -> Completion:
        """Continue a reasoning model's tokens after its thinking under the label constraint."""
        think = self.config.thinking_end or ""
        thought = first.reasoning + first.text
        if first.prompt_ids is None or first.token_ids is None:
            return error_completion(f"openai: the server returned no token ids for the thinking of {where} "
                                    f"(return_token_ids, vLLM >= 0.11); set guided_choice: none to parse "
                                    f"labels from free text instead", first.prompt_tokens)
        think_ids = await self._tokenize(think, batch)
        if isinstance(think_ids, Completion):
            return think_ids
        pieces: dict[str, list[int]] = {}  # continuation_ids asks for texts' ids only where it needs them

        def encode(text: str) -> list[int]:
            if text not in pieces:
                raise _NeedsTokens(text)
            return pieces[text]

        while True:
            try:
                ids = continuation_ids(first.prompt_ids, first.token_ids, thought, first.finish, think_ids, encode)
                break
            except _NeedsTokens as need:
                got = await self._tokenize(need.text, batch)
                if isinstance(got, Completion):
                    return got
                pieces[need.text] = got

        async def body(url: str) -> dict:
            return completion_label_body(r, index, self.config, await self._server(url), ids)

        out = await self._post(body, where + " (label)", batch, endpoint=lambda url: url + "/completions",
                               parse=lambda payload: parse_response(payload, chat=False))
        if isinstance(out, Completion):
            return out
        n_new = first.completion_tokens or len(first.token_ids)
        return label_completion(thought + think + out.text, out.finish, first.prompt_tokens or len(first.prompt_ids),
                                n_new + (out.completion_tokens or 0), r.choices, think, constrained=True)

    async def _sample(self, r: Request, i: int, j: int, batch: _Batch) -> Completion:
        index = r.sample_offset + j
        where = describe_request(i, r) + f" sample {index}"
        think = self.config.thinking_end
        used: dict[str, Server] = {}

        async def body(url: str) -> dict:
            used["server"] = await self._server(url)
            return request_body(r, index, self.config, used["server"])

        out = await self._post(body, where, batch)
        if isinstance(out, Completion):
            return out
        srv = used.get("server", Server())
        if r.choices is not None and think and srv.token_level:
            return await self._label_after_thinking(r, index, where, out, batch)
        constrained = r.choices is not None and srv.flavor in ("vllm", "grammar") and not think
        return label_completion(out.full_text(think), out.finish, out.prompt_tokens, out.completion_tokens,
                                r.choices, think, constrained=constrained)

    # -- the batch, on the loop -------------------------------------------------------------
    def _open(self, batch: _Batch) -> None:
        batch.abort = asyncio.Event()
        self._active += 1
        if self._monitor_task is None or self._monitor_task.done():
            self._monitor_task = self._loop.create_task(self._monitor())

    def _enqueue(self, batch: _Batch, items: list) -> None:
        batch.pending.extend(items)
        self._dispatch(batch)

    def _dispatch(self, batch: _Batch) -> None:
        """Start waiting samples while fewer than ``max_concurrency`` run, :data:`START_CHUNK` per turn of
        the loop (thousands started in one turn would hold the loop for seconds: the first connections'
        timeouts would run out before the loop reads their answers); after an abort, skip them."""
        assert batch.abort is not None
        batch.dispatch_queued = False
        if batch.abort.is_set():
            while batch.pending:
                i, j, _r = batch.pending.popleft()
                batch.post(i, j, None, _Aborted())
            return
        started = 0
        while batch.pending and len(batch.tasks) < self._concurrency:
            if started == START_CHUNK:
                if not batch.dispatch_queued:
                    batch.dispatch_queued = True
                    self._loop.call_soon(self._dispatch, batch)  # after the answers that came in meanwhile
                return
            i, j, r = batch.pending.popleft()
            task = self._loop.create_task(self._run_sample(batch, i, j, r))
            batch.tasks.add(task)
            task.add_done_callback(lambda t, b=batch: self._sample_done(b, t))
            started += 1

    def _sample_done(self, batch: _Batch, task: asyncio.Task) -> None:
        batch.tasks.discard(task)
        self._dispatch(batch)

    async def _run_sample(self, batch: _Batch, i: int, j: int, r: Request) -> None:
        try:
            c = await self._sample(r, i, j, batch)
        except asyncio.CancelledError:
            batch.post(i, j, None, _Aborted())
            raise
        except BaseException as exc:
            batch.post(i, j, None, exc)
        else:
            batch.post(i, j, c, None)

    def _set_abort(self, batch: _Batch) -> None:
        assert batch.abort is not None
        batch.abort.set()
        self._dispatch(batch)

    async def _stop(self, batch: _Batch) -> None:
        """Abort the batch and cancel its running samples (the caller is gone)."""
        self._set_abort(batch)
        tasks = list(batch.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    def _close_batch(self, batch: _Batch) -> None:
        self._active -= 1

    # -- the public call ----------------------------------------------------------------------
    def generate(self, requests: Sequence[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]] = None,
                 more: Optional[Callable[[], Sequence[Request]]] = None) -> list[list[Completion]]:
        """Every sample of ``requests``; ``on_result(i, j, completion)`` in this thread as each finishes.

        ``more()``, when given, is asked for further requests whenever fewer than ``max_concurrency``
        samples are under way; they join the batch (their indices follow the ones given so far). The call
        returns once ``more()`` has nothing left and every sample has finished."""
        if self._closed:
            raise EngineError("openai: generate called after close()")
        requests = list(requests)
        results: list[list[Optional[Completion]]] = [[None] * r.n for r in requests]
        batch = _Batch()
        self._call(_as_coro(self._open, batch))
        state = {"outstanding": 0, "error": None}

        def submit(new: list[Request], base: int) -> None:
            items = [(base + k, j, r) for k, r in enumerate(new) for j in range(r.n)]
            state["outstanding"] += len(items)
            if items:
                self._loop.call_soon_threadsafe(self._enqueue, batch, items)

        def ask_more() -> None:
            if more is None or state["error"] is not None or state["outstanding"] >= self._concurrency:
                return
            new = list(more())
            if new:
                base = len(requests)
                requests.extend(new)
                results.extend([None] * r.n for r in new)
                submit(new, base)

        def handle(event) -> None:
            i, j, c, exc = event
            state["outstanding"] -= 1
            if exc is None:
                results[i][j] = c
                if on_result is not None:
                    on_result(i, j, c)
            elif not isinstance(exc, _Aborted) and state["error"] is None:
                state["error"] = exc
                self._loop.call_soon_threadsafe(self._set_abort, batch)  # queued samples stop; running ones end

        try:
            submit(requests, 0)
            while True:
                ask_more()
                if state["outstanding"] == 0:
                    break
                handle(_next_event(batch))
                while state["outstanding"]:  # take what else has arrived before asking more()
                    try:
                        event = batch.events.get_nowait()
                    except queue.Empty:
                        break
                    handle(event)
            if state["error"] is not None:
                raise state["error"]
        except BaseException:
            if not self._loop.is_closed():
                try:
                    self._call(self._stop(batch), timeout=60)
                except Exception:  # stopping must not hide why the batch failed
                    pass
            raise
        finally:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._close_batch, batch)
        return [[c for c in row] for row in results]  # type: ignore[misc]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            if self._monitor_task is not None:
                self._monitor_task.cancel()
            closing = [c.aclose() for c in self._connections.values()]
            if self._control is not None:
                closing.append(self._control.aclose())
            await asyncio.gather(*closing, return_exceptions=True)

        try:
            self._call(shut(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()


class _NeedsTokens(Exception):
    """:func:`continuation_ids` asked for the ids of a text not tokenized yet."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


async def _as_coro(fn: Callable, *args) -> Any:
    return fn(*args)


def _next_event(batch: _Batch):
    """The next finished sample (waits in slices, so that Ctrl-C reaches the caller's thread)."""
    while True:
        try:
            return batch.events.get(timeout=0.5)
        except queue.Empty:
            continue
