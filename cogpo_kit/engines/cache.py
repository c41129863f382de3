"""The persistent response cache that sits under every back end (SQLite, WAL mode).

Each sample is stored under ``(key, sample index)``: the key hashes the model identity, the
messages, the sampling settings (seed included), the label choices and the engine settings that
change outputs; sample ``i`` of a request with ``sample_offset=o`` is index ``o + i``, so asking
for ``n=3`` after ``n=2`` pays for one sample. Only missing samples go to the back end, as one
batch. Every result is committed (fsync'ed) before it is returned, as soon as the back end
finishes it when the back end streams its results, so a killed run keeps all finished work.
Errors, empty and truncated completions are recorded as what they are (with an attempt count)
but never served later: a later call asks the back end again (truncated ones may be served,
marked ``length``, with ``retry_truncated=False``). A greedy (temperature 0) completion cut at
``max_tokens`` is always served, marked ``length``: asked again with the same budget (the key holds
it) it would be cut at the same place. Several processes and threads may write to one file at once.

The file itself (schema, keys, reads and writes) is :mod:`cogpo_kit.engines.cache_store`; this
module is the :class:`CachedEngine` wrapper that serves from it and sends the rest to the back end.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cogpo_kit.engines.base import (Completion, EngineCapabilities, EngineError, Request, ResultCallback,
                                    capabilities_of)
from cogpo_kit.engines.cache_store import SCHEMA, ResponseStore, is_good, request_key
from cogpo_kit.engines.common import check_request

STAT_KEYS = ("calls", "cache_hits", "misses", "prompt_tokens", "completion_tokens", "errors",
             "empty", "truncated")

__all__ = ["CachedEngine", "ResultCallback", "SCHEMA", "STAT_KEYS", "completion_dict", "is_good", "request_key"]


@dataclass
class _Ledger:
    """The requests of one call and their samples: cached ones filled in, missing ones in ``subs``."""

    requests: list[Request] = field(default_factory=list)
    keyed: list[tuple[str, dict]] = field(default_factory=list)
    """Cache key and body per request."""
    results: list[list[Optional[Completion]]] = field(default_factory=list)
    subs: list[Request] = field(default_factory=list)
    """Runs of missing samples, as requests for the back end."""
    owners: list[tuple[int, int]] = field(default_factory=list)
    """Sub-request -> (request index, first sample index)."""
    left: list[int] = field(default_factory=list)
    """Missing samples per request, counted down as they arrive."""


class CachedEngine:
    """An :class:`~cogpo_kit.engines.base.Engine` that serves repeated samples from SQLite.

    ``stats_by_tag()`` counts, per ``Request.tag``: samples asked (``calls``), ``cache_hits``,
    ``misses`` (samples sent to the back end), the ``prompt_tokens`` and ``completion_tokens``
    the back end spent on them, and how many came back as ``errors``, ``empty`` or ``truncated``.
    """

    def __init__(self, backend: Any, path: str | os.PathLike | None, *, enabled: bool = True,
                 clear: bool = False, key_extra: Optional[dict] = None,
                 logger: Optional[logging.Logger] = None, show_progress: bool = True,
                 retry_truncated: bool = True):
        self.backend = backend
        self.name: str = backend.name
        self.model_id: str = backend.model_id
        self.backend_capabilities = capabilities_of(backend)
        """What the back end's ``generate`` takes (``on_result``, ``more``)."""
        self.enabled = bool(enabled and path is not None)
        self.path = Path(path) if path is not None else None
        self.key_extra = dict(key_extra or {})
        self.show_progress = show_progress
        self.retry_truncated = retry_truncated
        self._logger = logger or logging.getLogger("cogpo_kit.engines")
        self._lock = threading.RLock()
        self._stats: dict[str, dict[str, int]] = defaultdict(lambda: {k: 0 for k in STAT_KEYS})
        self.store: Optional[ResponseStore] = None
        if self.enabled:
            self.store = ResponseStore(self.path, self.model_id, self.name)
            if clear:
                n = self.clear()
                self._logger.info("cache %s: cleared %d entries of %s", self.path, n, self.model_id)

    @property
    def capabilities(self) -> EngineCapabilities:
        """Whole batches through :meth:`generate`; requests while it runs through :meth:`stream` when the
        back end accepts more."""
        return EngineCapabilities(streams_requests=self.backend_capabilities.accepts_more)

    # -- database -------------------------------------------------------------------------
    def clear(self) -> int:
        """Delete every cached entry of this engine's model; returns how many samples were removed."""
        return self.store.clear() if self.store is not None else 0

    def entries(self, *, good_only: bool = False) -> list[dict]:
        """All stored samples of this model (for inspection and tests)."""
        return self.store.entries(good_only=good_only) if self.store is not None else []

    # -- the Engine interface ---------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Serve cached samples, send the rest to the back end in one batch, store and return all."""
        ledger = _Ledger()
        self._admit(ledger, list(requests))
        if ledger.subs:
            _BackendRun(self, ledger, list(ledger.subs)).run()
        return [[c for c in row] for row in ledger.results]  # type: ignore[misc]

    def stream(self, requests: Sequence[Request], on_done: Callable[[int, list[Completion]], None],
               more: Callable[[], Sequence[Request]]) -> None:
        """:meth:`generate` with requests that keep arriving while the back end runs.

        Requests are numbered in arrival order (``requests``, then each batch ``more()`` returns).
        ``on_done(i, completions)`` is called as soon as request ``i`` has all its samples, from the
        cache at once or from the back end when its last sample finishes; it may make ``more()``
        return new requests. ``more()`` is asked whenever the back end has room (the back end must
        take requests while it runs, ``accepts_more``: then this engine's ``capabilities.streams_requests``
        is set). Returns when ``more()`` has nothing left and every request is done.
        """
        if not self.capabilities.streams_requests:
            raise EngineError(f"{self.name}: this back end cannot take requests while it runs")
        ledger = _Ledger()
        handed = [0]  # subs given to the back end so far

        def admit(new: Sequence[Request]) -> None:
            base = len(ledger.requests)
            missing = self._admit(ledger, list(new))
            for i, n in enumerate(missing, start=base):
                if n == 0:
                    on_done(i, ledger.results[i])  # type: ignore[arg-type]

        def take() -> list[Request]:
            """The subs not yet handed to the back end; asks ``more()`` until there are some or it has none."""
            while handed[0] == len(ledger.subs):
                new = more()
                if not new:
                    return []
                admit(new)
            out = ledger.subs[handed[0]:]
            handed[0] = len(ledger.subs)
            return out

        def sample_done(i: int) -> None:
            ledger.left[i] -= 1
            if ledger.left[i] == 0:
                on_done(i, ledger.results[i])  # type: ignore[arg-type]

        admit(requests)
        first = take()
        if first:
            _BackendRun(self, ledger, first, more=take, sample_done=sample_done).run()
        unfinished = [i for i, n in enumerate(ledger.left) if n]
        if unfinished:
            raise EngineError(f"{self.name}: back end finished with {len(unfinished)} requests unanswered "
                              f"(first: #{unfinished[0]})")

    def _admit(self, ledger: _Ledger, requests: list[Request]) -> list[int]:
        """Check and key ``requests`` (numbered after the ledger's), fill their cached samples into the
        ledger's results and add the missing runs of samples to its subs; returns the missing count per request."""
        base = len(ledger.requests)
        for i, r in enumerate(requests, start=base):
            check_request(i, r)
        ledger.requests.extend(requests)
        new_keys = [request_key(self.model_id, r, self.key_extra) for r in requests]
        ledger.keyed.extend(new_keys)
        hits = self.store.lookup([k for k, _ in new_keys]) if self.store is not None and self.enabled else {}
        missing_per: list[int] = []
        with self._lock:
            for i, (r, (key, _)) in enumerate(zip(requests, new_keys), start=base):
                ledger.results.append([None] * r.n)
                missing_per.append(self._fill(ledger, i, r, key, hits))
        ledger.left.extend(missing_per)
        return missing_per

    def _fill(self, ledger: _Ledger, i: int, r: Request, key: str, hits: dict) -> int:
        """Request ``i``'s cached samples into its results, its runs of missing ones into the subs;
        returns how many are missing."""
        st = self._stats[r.tag]
        st["calls"] += r.n
        run_start, missing_n = None, 0
        for j in range(r.n + 1):
            idx = r.sample_offset + j
            hit = hits.get((key, idx)) if j < r.n else None
            if j < r.n and hit is not None:
                ledger.results[i][j] = hit
                st["cache_hits"] += 1
            missing = j < r.n and hit is None
            if missing and run_start is None:
                run_start = idx
            if not missing and run_start is not None:
                ledger.subs.append(replace(r, n=idx - run_start, sample_offset=run_start))
                ledger.owners.append((i, run_start))
                st["misses"] += idx - run_start
                missing_n += idx - run_start
                run_start = None
        return missing_n

    def _record(self, ledger: _Ledger, sub_index: int, j: int, c: Completion) -> Completion:
        """Store sample ``j`` of sub-request ``sub_index`` and count it; returns what the cache holds."""
        i, start = ledger.owners[sub_index]
        r = ledger.requests[i]
        key, body = ledger.keyed[i]
        sample = start + j
        deterministic = r.sampling.temperature <= 0  # the same budget asked again is cut the same way
        ok = is_good(c, r.choices, serve_truncated=deterministic or not self.retry_truncated)
        if self.enabled and self.store is not None:
            c = self.store.put(key, body, sample, c, ok)
        with self._lock:
            st = self._stats[r.tag]
            if not c.cached:
                st["prompt_tokens"] += int(c.prompt_tokens)
                st["completion_tokens"] += int(c.completion_tokens)
            if c.finish_reason == "error":
                st["errors"] += 1
            elif c.finish_reason == "empty":
                st["empty"] += 1
            elif c.finish_reason == "length":
                st["truncated"] += 1
            ledger.results[i][sample - r.sample_offset] = c
        return c

    def stats_by_tag(self) -> dict[str, dict[str, int]]:
        """Per-tag counters since this engine was built (or :meth:`reset_stats`); a tag whose prompts
        lost their oldest tokens to ``truncation: left`` also gets ``prompt_truncations``."""
        with self._lock:
            out = {tag: dict(v) for tag, v in self._stats.items()}
        for tag, n in dict(getattr(self.backend, "prompt_truncations", None) or {}).items():
            out.setdefault(tag, {k: 0 for k in STAT_KEYS})["prompt_truncations"] = n
        return out

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @logger.setter
    def logger(self, value: logging.Logger) -> None:
        """Send this engine's (and its back end's) log lines to ``value`` (e.g. a stage's log)."""
        self._logger = value
        if hasattr(self.backend, "logger"):
            self.backend.logger = value

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None

    def __enter__(self) -> "CachedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BackendRun:
    """One back end call of a :class:`CachedEngine`: ``sent`` (then what ``more`` returns), each sample
    stored and counted as it arrives; ``sample_done(request index)`` after each."""

    def __init__(self, engine: CachedEngine, ledger: _Ledger, sent: list[Request], *,
                 more: Optional[Callable[[], list[Request]]] = None,
                 sample_done: Optional[Callable[[int], None]] = None):
        self.engine, self.ledger, self.sent = engine, ledger, list(sent)
        self.more, self.sample_done = more, sample_done
        self.done: set[tuple[int, int]] = set()
        self.bar = None
        if engine.show_progress:
            from cogpo_kit.progress import progress

            tags = sorted({s.tag for s in sent if s.tag})
            self.bar = progress(total=sum(s.n for s in sent), desc=f"{engine.name} {','.join(tags)}".strip(),
                                unit="sample")

    def run(self) -> None:
        eng = self.engine
        try:
            out = self._call()
            if len(out) != len(self.sent):
                raise EngineError(f"{eng.name}: back end returned {len(out)} results for {len(self.sent)} requests")
            for si, (sub, comps) in enumerate(zip(self.sent, out)):
                if len(comps) != sub.n:
                    raise EngineError(f"{eng.name}: back end returned {len(comps)} samples, {sub.n} asked")
                for j, c in enumerate(comps):
                    self.on_result(si, j, c)
        except BaseException as exc:
            lost = self._count_lost()
            eng.logger.error("%s: batch failed with %d of %d samples unfinished (finished ones are "
                             "cached): %s", eng.name, lost, sum(s.n for s in self.sent), exc)
            raise
        finally:
            if self.bar is not None:
                self.bar.close()

    def _call(self) -> list[list[Completion]]:
        """The back end's ``generate``, given what its capabilities take."""
        backend, caps = self.engine.backend, self.engine.backend_capabilities
        if self.more is not None:
            return backend.generate(self.sent, on_result=self.on_result, more=self.feed)
        if caps.streams_results:
            return backend.generate(self.sent, on_result=self.on_result)
        return backend.generate(self.sent)

    def on_result(self, sub_index: int, j: int, c: Completion) -> None:
        """A finished sample (each stored once, whether streamed or returned)."""
        with self.engine._lock:
            if (sub_index, j) in self.done:
                return
            self.done.add((sub_index, j))
        self.engine._record(self.ledger, sub_index, j, c)
        if self.bar is not None:
            with self.engine._lock:
                self.bar.update(1)
        if self.sample_done is not None:
            self.sample_done(self.ledger.owners[sub_index][0])

    def feed(self) -> list[Request]:
        assert self.more is not None
        new = self.more()
        self.sent.extend(new)
        if self.bar is not None and new:
            self.bar.total += sum(s.n for s in new)
            self.bar.refresh()
        return new

    def _count_lost(self) -> int:
        """Count the samples that never arrived as errors; returns how many."""
        eng = self.engine
        lost = 0
        with eng._lock:
            for si, sub in enumerate(self.sent):
                for j in range(sub.n):
                    if (si, j) not in self.done:
                        eng._stats[sub.tag]["errors"] += 1
                        lost += 1
        return lost


def completion_dict(c: Completion) -> dict:
    """A completion as a plain dict (for artifacts)."""
    return asdict(c)
