"""The one interface every inference back end implements.

A batch of :class:`Request` (chat messages + sampling) goes in; one list of :class:`Completion`
per request (``n`` samples) comes out. Back ends never see the cache: :mod:`cogpo_kit.engines.cache`
wraps them. What an engine takes beyond that (results reported as they finish, requests while it
runs) it declares in ``capabilities`` (:class:`EngineCapabilities`); callers read
:func:`capabilities_of` instead of probing for attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Optional, Protocol, Sequence, runtime_checkable

from cogpo_kit.engines.config import SamplingParams

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class Request:
    """One chat prompt and how to sample it."""

    messages: tuple[Message, ...]
    """Chat messages (role/content dicts)."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Sampling settings."""
    n: int = 1
    """Samples wanted; sample ``i`` is cached under index ``sample_offset + i``."""
    choices: Optional[tuple[str, ...]] = None
    """Constrained decoding: the answer must be exactly one of these strings."""
    sample_offset: int = 0
    """Index of the first sample (a fourth vote after three is ``sample_offset=3``)."""
    tag: str = ""
    """Who asked (agent name), for the per-agent counters; not part of the cache key."""

    def with_sampling(self, **changes) -> "Request":
        return replace(self, sampling=replace(self.sampling, **changes))


@dataclass(frozen=True)
class Completion:
    """One generated sample."""

    text: str
    """Generated text (for a constrained request with thinking: the thinking, then the label)."""
    finish_reason: Literal["stop", "length", "error", "empty"] = "stop"
    """``stop``: ended normally; ``length``: hit max_tokens; ``error``: failed (``error`` says why);
    ``empty``: no text."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    """Served from the response cache."""
    error: Optional[str] = None
    """The error message when ``finish_reason == "error"``."""
    choice: Optional[str] = None
    """Constrained requests: the chosen label (one of ``Request.choices``)."""

    @property
    def ok(self) -> bool:
        return self.finish_reason == "stop" and bool(self.text.strip())


ResultCallback = Callable[[int, int, Completion], None]
"""``on_result(request_index, sample_number, completion)``."""


class EngineError(RuntimeError):
    """An engine could not serve a request; the message names the engine/server and the cause."""


class ContextLengthError(EngineError):
    """A prompt does not fit the model's context and the truncation policy is ``error``."""


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine's calls take beyond a batch of requests (``Engine.capabilities``).

    Callers read these instead of probing for attributes: a back end is sent ``on_result`` only
    when it ``streams_results`` and ``more`` only when it ``accepts_more``.
    """

    streams_results: bool = False
    """``generate(requests, on_result=...)`` calls ``on_result(request_index, sample_number, completion)``
    as each sample finishes, so the response cache stores finished samples even when the batch fails later."""
    accepts_more: bool = False
    """``generate(requests, on_result=..., more=...)`` asks ``more()`` for further requests whenever it has
    room; they join the running batch (their indices follow the ones given so far). Only with
    ``streams_results``."""
    streams_requests: bool = False
    """``stream(requests, on_done, more)`` (:class:`RequestStream`) feeds requests to the engine while it
    runs: the cached engine over a back end that ``accepts_more``."""


BATCH_ONLY = EngineCapabilities()
"""An engine that serves whole batches: a plain ``generate(requests)``."""


class Engine(Protocol):
    """What every back end provides."""

    name: str
    """Back end name (``llamacpp``, ``transformers``, ``vllm``, ``openai``)."""
    model_id: str
    """Identity of the served model used in cache keys (spec + file hash or revision)."""
    capabilities: EngineCapabilities
    """What ``generate`` takes besides the requests (``on_result``, ``more``)."""

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Serve all requests (as one batch where the back end can); one list of ``n`` per request.

        With ``capabilities.streams_results`` it also takes ``on_result`` (:class:`StreamingEngine`), with
        ``capabilities.accepts_more`` also ``more`` (:class:`OpenBatchEngine`).
        """
        ...

    def close(self) -> None:
        """Release the model / connections."""
        ...


class StreamingEngine(Engine, Protocol):
    """A back end with ``capabilities.streams_results``: ``generate`` reports samples as they finish."""

    def generate(self, requests: Sequence[Request],
                 on_result: Optional[ResultCallback] = None) -> list[list[Completion]]:
        ...


class OpenBatchEngine(Engine, Protocol):
    """A back end with ``capabilities.accepts_more`` (and ``streams_results``): ``generate`` also takes
    requests while it runs."""

    def generate(self, requests: Sequence[Request], on_result: Optional[ResultCallback] = None,
                 more: Optional[Callable[[], Sequence[Request]]] = None) -> list[list[Completion]]:
        ...


class RequestStream(Protocol):
    """An engine with ``capabilities.streams_requests``: requests keep arriving while it runs."""

    capabilities: EngineCapabilities

    def stream(self, requests: Sequence[Request], on_done: Callable[[int, list[Completion]], None],
               more: Callable[[], Sequence[Request]]) -> None:
        """Serve ``requests`` and what ``more()`` returns; ``on_done(i, completions)`` as request ``i`` is answered."""
        ...


@runtime_checkable
class TagStats(Protocol):
    """An engine that counts its work per ``Request.tag`` (the cached engine)."""

    def stats_by_tag(self) -> dict[str, dict[str, int]]:
        ...


def capabilities_of(engine: object) -> EngineCapabilities:
    """``engine.capabilities``; an engine that declares none serves whole batches (:data:`BATCH_ONLY`)."""
    caps = getattr(engine, "capabilities", None)
    return caps if isinstance(caps, EngineCapabilities) else BATCH_ONLY
