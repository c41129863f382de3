"""A deterministic engine whose answers come from a Python function.

:class:`ScriptedEngine` implements the :class:`~cogpo_kit.engines.base.Engine` protocol for tests
and benchmarks of the code that drives engines: a ``responder(request, sample_index)`` decides each
sample, so every outcome (a label, garbage, an empty answer, an error completion, an engine that
fails mid-run) can be produced on purpose and reproduced exactly. It counts what it was asked.

    engine = ScriptedEngine(lambda req, i: "medium")
    engine.generate([Request(messages=(...,), n=2)])   # two "medium" completions

A responder returns a ``str`` (the text; for a request with ``choices`` it is also the chosen
label when it is one of them), a ready :class:`Completion`, or an ``Exception`` instance, which
the engine raises (as a back end does when it fails). Like the streaming back ends, it reports
each sample through ``on_result`` as soon as it is done, so the response cache keeps the samples
finished before a failure. With ``accepts_more=True`` it also takes further requests while it runs
(``generate(..., more=...)``), as the llama.cpp back end does: after each request it asks ``more()``
and queues what comes back.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence, Union

from cogpo_kit.engines.base import Completion, EngineCapabilities, Request

Responder = Callable[[Request, int], Union[str, Completion, BaseException]]


def _words(text: str) -> int:
    return len(text.split())


class ScriptedEngine:
    """An :class:`Engine` answering each sample with ``responder(request, sample_index)``."""

    name = "scripted"

    def __init__(self, responder: Responder, model_id: str = "scripted", *, accepts_more: bool = False):
        self.responder = responder
        self.model_id = model_id
        self.capabilities = EngineCapabilities(streams_results=True, accepts_more=accepts_more)
        self.calls = 0
        """Samples produced (one per completion returned)."""
        self.batches = 0
        """``generate`` invocations."""
        self.batch_sizes: list[int] = []
        """Requests per ``generate`` invocation, in order."""
        self.closed = False
        self._lock = threading.Lock()

    def _complete(self, request: Request, index: int) -> Completion:
        out = self.responder(request, index)
        if isinstance(out, BaseException):
            raise out
        if isinstance(out, Completion):
            return out
        if not isinstance(out, str):
            raise TypeError(f"scripted responder returned {type(out).__name__}; expected str, Completion "
                            "or an Exception")
        prompt_tokens = sum(_words(str(m.get("content", ""))) for m in request.messages)
        if not out.strip():
            return Completion(text=out, finish_reason="empty", prompt_tokens=prompt_tokens)
        choice = out if request.choices and out in request.choices else None
        return Completion(text=out, finish_reason="stop", prompt_tokens=prompt_tokens,
                          completion_tokens=_words(out), choice=choice)

    def generate(self, requests: Sequence[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]] = None,
                 more: Optional[Callable[[], Sequence[Request]]] = None) -> list[list[Completion]]:
        if self.closed:
            raise RuntimeError("ScriptedEngine.generate called after close()")
        if more is not None and not self.capabilities.accepts_more:
            raise TypeError("this ScriptedEngine was made with accepts_more=False")
        queue = list(requests)
        with self._lock:
            self.batches += 1
            self.batch_sizes.append(len(queue))
            mine = len(self.batch_sizes) - 1
        results: list[list[Completion]] = []
        r = 0
        while True:
            if r == len(queue) and more is not None:
                queue.extend(more())
            if r == len(queue):
                break
            req = queue[r]
            samples = []
            for i in range(req.n):
                c = self._complete(req, req.sample_offset + i)
                samples.append(c)
                with self._lock:
                    self.calls += 1
                if on_result is not None:
                    on_result(r, i, c)
            results.append(samples)
            r += 1
            if more is not None:
                queue.extend(more())
        with self._lock:
            self.batch_sizes[mine] = len(queue)  # with the requests taken from more()
        return results

    def close(self) -> None:
        self.closed = True
