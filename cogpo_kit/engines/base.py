"""The one interface every inference back end implements.

A batch of :class:`Request` (chat messages + sampling) goes in; one list of :class:`Completion`
per request (``n`` samples) comes out. Back ends never see the cache: :mod:`cogpo_kit.engines.cache`
wraps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional, Protocol, Sequence

from cogpo_kit.engines.config import SamplingConfig

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class Request:
    """One chat prompt and how to sample it."""

    messages: tuple[Message, ...]
    """Chat messages (role/content dicts)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
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


class EngineError(RuntimeError):
    """An engine could not serve a request; the message names the engine/server and the cause."""


class ContextLengthError(EngineError):
    """A prompt does not fit the model's context and the truncation policy is ``error``."""


class Engine(Protocol):
    """What every back end provides."""

    name: str
    """Back end name (``llamacpp``, ``transformers``, ``vllm``, ``openai``)."""
    model_id: str
    """Identity of the served model used in cache keys (spec + file hash or revision)."""

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Serve all requests (as one batch where the back end can); one list of ``n`` per request.

        A back end with ``streams_results = True`` also takes ``on_result(request_index,
        sample_number, completion)`` and calls it as each sample finishes, so the response cache
        stores finished samples even when the batch fails later.
        """
        ...

    def close(self) -> None:
        """Release the model / connections."""
        ...
