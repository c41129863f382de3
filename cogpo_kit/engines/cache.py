"""The persistent response cache that sits under every back end (SQLite, WAL mode).

Each sample is stored under ``(key, sample index)``: the key hashes the model identity, the
messages, the sampling settings (seed included), the label choices and the engine settings that
change outputs; sample ``i`` of a request with ``sample_offset=o`` is index ``o + i``, so asking
for ``n=3`` after ``n=2`` pays for one sample. Only missing samples go to the back end, as one
batch. Every result is committed (fsync'ed) before it is returned, as soon as the back end
finishes it when the back end streams its results, so a killed run keeps all finished work.
Errors, empty and truncated completions are recorded as what they are (with an attempt count)
but never served later: a later call asks the back end again (truncated ones may be served,
marked ``length``, with ``retry_truncated=False``). Several processes and threads may
write to one file at once.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, EngineError, Request
from cogpo_kit.engines.common import check_request
from cogpo_kit.io import stable_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    key TEXT NOT NULL,
    sample INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    engine TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    error TEXT,
    choice TEXT,
    ok INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    PRIMARY KEY (key, sample)
);
CREATE INDEX IF NOT EXISTS responses_model ON responses(model_id);
"""

STAT_KEYS = ("calls", "cache_hits", "misses", "prompt_tokens", "completion_tokens", "errors",
             "empty", "truncated")

ResultCallback = Callable[[int, int, Completion], None]


def is_good(c: Completion, choices: Optional[Sequence[str]], *, serve_truncated: bool = False) -> bool:
    """A completion the cache may serve later: finished normally, non-empty (and a label if asked);
    with ``serve_truncated`` also one cut at ``max_tokens``."""
    finished = c.finish_reason == "stop" or (serve_truncated and c.finish_reason == "length")
    return finished and bool(c.text.strip()) and (choices is None or c.choice is not None)


def request_key(model_id: str, request: Request, extra: Optional[dict] = None) -> tuple[str, dict]:
    """Cache key of a request (without ``n``, ``sample_offset`` and ``tag``) and its JSON body."""
    s = request.sampling
    body = {
        "model": model_id,
        "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
        "sampling": {"temperature": float(s.temperature), "top_p": float(s.top_p), "top_k": int(s.top_k),
                     "max_tokens": int(s.max_tokens), "stop": list(s.stop), "seed": int(s.seed)},
        "choices": list(request.choices) if request.choices is not None else None,
        "extra": extra or {},
    }
    return stable_hash(body), body


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
        self.enabled = bool(enabled and path is not None)
        self.path = Path(path) if path is not None else None
        self.key_extra = dict(key_extra or {})
        self.show_progress = show_progress
        self.retry_truncated = retry_truncated
        self._logger = logger or logging.getLogger("cogpo_kit.engines")
        self._lock = threading.RLock()
        self._stats: dict[str, dict[str, int]] = defaultdict(lambda: {k: 0 for k in STAT_KEYS})
        self._conn: Optional[sqlite3.Connection] = None
        if self.enabled:
            self._conn = self._open(self.path)
            if clear:
                n = self.clear()
                self._logger.info("cache %s: cleared %d entries of %s", self.path, n, self.model_id)

    # -- database -------------------------------------------------------------------------
    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for attempt in range(50):
            try:
                conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(SCHEMA)
                return conn
            except sqlite3.OperationalError as exc:  # another process is creating the file
                last = exc
                time.sleep(0.05 * (attempt + 1))
        raise EngineError(f"response cache {path}: cannot open ({last})")

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one IMMEDIATE transaction (committed and synced on return)."""
        assert self._conn is not None
        with self._lock:
            for attempt in range(100):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    time.sleep(0.02 * min(attempt + 1, 20))
            else:
                raise EngineError(f"response cache {self.path}: database stays locked")
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def clear(self) -> int:
        """Delete every cached entry of this engine's model; returns how many samples were removed."""
        if self._conn is None:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM responses WHERE model_id = ?", (self.model_id,)).rowcount
            conn.execute("DELETE FROM requests WHERE model_id = ?", (self.model_id,))
            return n

        return self._write(run)

    def _lookup(self, keys: Sequence[str]) -> dict[tuple[str, int], Completion]:
        found: dict[tuple[str, int], Completion] = {}
        if self._conn is None or not keys:
            return found
        uniq = sorted(set(keys))
        with self._lock:
            for i in range(0, len(uniq), 500):
                chunk = uniq[i:i + 500]
                q = ("SELECT key, sample, text, finish_reason, prompt_tokens, completion_tokens, choice "
                     f"FROM responses WHERE ok = 1 AND key IN ({','.join('?' * len(chunk))})")
                for key, sample, text, fin, pt, ct, choice in self._conn.execute(q, chunk):
                    found[(key, sample)] = Completion(text=text, finish_reason=fin, prompt_tokens=pt,
                                                      completion_tokens=ct, cached=True, choice=choice)
        return found

    def _store(self, key: str, body: dict, sample: int, c: Completion, ok: bool) -> Completion:
        """Record one sample; returns what the cache now holds for it (another writer may have won)."""

        def run(conn: sqlite3.Connection) -> Completion:
            conn.execute("INSERT OR IGNORE INTO requests (key, model_id, body) VALUES (?, ?, ?)",
                         (key, self.model_id, json.dumps(body, ensure_ascii=False)))
            cur = conn.execute(
                "INSERT INTO responses (key, sample, model_id, engine, text, finish_reason, prompt_tokens,"
                " completion_tokens, error, choice, ok, attempts, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,1,?)"
                " ON CONFLICT(key, sample) DO UPDATE SET text=excluded.text,"
                " finish_reason=excluded.finish_reason, prompt_tokens=excluded.prompt_tokens,"
                " completion_tokens=excluded.completion_tokens, error=excluded.error, choice=excluded.choice,"
                " ok=excluded.ok, attempts=responses.attempts + 1, created=excluded.created"
                " WHERE responses.ok = 0",
                (key, sample, self.model_id, self.name, c.text, c.finish_reason, int(c.prompt_tokens),
                 int(c.completion_tokens), c.error, c.choice, int(ok), time.time()))
            if cur.rowcount == 0 and ok:  # a good answer was stored first by another writer: serve it
                row = conn.execute("SELECT text, finish_reason, prompt_tokens, completion_tokens, choice "
                                   "FROM responses WHERE key = ? AND sample = ?", (key, sample)).fetchone()
                return Completion(text=row[0], finish_reason=row[1], prompt_tokens=row[2],
                                  completion_tokens=row[3], cached=True, choice=row[4])
            return c

        return self._write(run)

    def entries(self, *, good_only: bool = False) -> list[dict]:
        """All stored samples of this model (for inspection and tests)."""
        if self._conn is None:
            return []
        q = ("SELECT key, sample, text, finish_reason, prompt_tokens, completion_tokens, error, choice, ok,"
             " attempts FROM responses WHERE model_id = ?" + (" AND ok = 1" if good_only else ""))
        cols = ("key", "sample", "text", "finish_reason", "prompt_tokens", "completion_tokens", "error",
                "choice", "ok", "attempts")
        with self._lock:
            return [dict(zip(cols, row)) for row in self._conn.execute(q, (self.model_id,))]

    # -- the Engine interface ---------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Serve cached samples, send the rest to the back end in one batch, store and return all."""
        requests = list(requests)
        keyed: list[tuple[str, dict]] = []
        results: list[list[Optional[Completion]]] = []
        subs: list[Request] = []
        owners: list[tuple[int, int]] = []  # sub-request -> (request index, first sample index)
        self._admit(requests, 0, keyed, results, subs, owners)
        if subs:
            self._run_backend(requests, keyed, subs, owners, results)
        return [[c for c in row] for row in results]  # type: ignore[misc]

    @property
    def accepts_more(self) -> bool:
        """Whether :meth:`stream` can feed requests to the back end while it runs."""
        return bool(getattr(self.backend, "accepts_more", False))

    def _admit(self, requests: Sequence[Request], base: int, keyed: list, results: list, subs: list,
               owners: list) -> list[int]:
        """Check and key ``requests`` (numbered from ``base``), fill their cached samples into
        ``results`` and add the missing runs of samples to ``subs``; returns the missing count per request."""
        for i, r in enumerate(requests, start=base):
            check_request(i, r)
        new_keys = [request_key(self.model_id, r, self.key_extra) for r in requests]
        keyed.extend(new_keys)
        hits = self._lookup([k for k, _ in new_keys]) if self.enabled else {}
        missing_per: list[int] = []
        with self._lock:
            for i, (r, (key, _)) in enumerate(zip(requests, new_keys), start=base):
                results.append([None] * r.n)
                st = self._stats[r.tag]
                st["calls"] += r.n
                run_start, missing_n = None, 0
                for j in range(r.n + 1):
                    idx = r.sample_offset + j
                    hit = hits.get((key, idx)) if j < r.n else None
                    if j < r.n and hit is not None:
                        results[i][j] = hit
                        st["cache_hits"] += 1
                    missing = j < r.n and hit is None
                    if missing and run_start is None:
                        run_start = idx
                    if not missing and run_start is not None:
                        subs.append(replace(r, n=idx - run_start, sample_offset=run_start))
                        owners.append((i, run_start))
                        st["misses"] += idx - run_start
                        missing_n += idx - run_start
                        run_start = None
                missing_per.append(missing_n)
        return missing_per

    def stream(self, requests: Sequence[Request], on_done: Callable[[int, list[Completion]], None],
               more: Callable[[], Sequence[Request]]) -> None:
        """:meth:`generate` with requests that keep arriving while the back end runs.

        Requests are numbered in arrival order (``requests``, then each batch ``more()`` returns).
        ``on_done(i, completions)`` is called as soon as request ``i`` has all its samples, from the
        cache at once or from the back end when its last sample finishes; it may make ``more()``
        return new requests. ``more()`` is asked whenever the back end has room (the back end must
        accept requests while it runs: :attr:`accepts_more`). Returns when ``more()`` has nothing
        left and every request is done.
        """
        if not self.accepts_more:
            raise EngineError(f"{self.name}: this back end cannot take requests while it runs")
        reqs: list[Request] = []
        keyed: list[tuple[str, dict]] = []
        results: list[list[Optional[Completion]]] = []
        subs: list[Request] = []
        owners: list[tuple[int, int]] = []
        left: list[int] = []
        handed = [0]  # subs given to the back end so far

        def admit(new: Sequence[Request]) -> None:
            new = list(new)
            base = len(reqs)
            reqs.extend(new)
            missing = self._admit(new, base, keyed, results, subs, owners)
            left.extend(missing)
            for i, n in enumerate(missing, start=base):
                if n == 0:
                    on_done(i, results[i])  # type: ignore[arg-type]

        def take() -> list[Request]:
            """The subs not yet handed to the back end; asks ``more()`` until there are some or it has none."""
            while handed[0] == len(subs):
                new = more()
                if not new:
                    return []
                admit(new)
            out = subs[handed[0]:]
            handed[0] = len(subs)
            return out

        def sample_done(i: int) -> None:
            left[i] -= 1
            if left[i] == 0:
                on_done(i, results[i])  # type: ignore[arg-type]

        admit(requests)
        first = take()
        if first:
            self._run_backend(reqs, keyed, subs, owners, results, first=first, more=take, sample_done=sample_done)
        unfinished = [i for i, n in enumerate(left) if n]
        if unfinished:
            raise EngineError(f"{self.name}: back end finished with {len(unfinished)} requests unanswered "
                              f"(first: #{unfinished[0]})")

    def _run_backend(self, requests, keyed, subs, owners, results, *, first=None, more=None,
                     sample_done=None) -> None:
        """Send ``subs`` (or ``first``, then what ``more`` returns) to the back end; store each sample."""
        sent = list(subs if first is None else first)
        total = sum(s.n for s in sent)
        bar = None
        if self.show_progress:
            from cogpo_kit.progress import progress

            tags = sorted({s.tag for s in sent if s.tag})
            bar = progress(total=total, desc=f"{self.name} {','.join(tags)}".strip(), unit="sample")
        done: set[tuple[int, int]] = set()

        def on_result(sub_index: int, j: int, c: Completion) -> None:
            i, start = owners[sub_index]
            r = requests[i]
            key, body = keyed[i]
            sample = start + j
            with self._lock:
                if (sub_index, j) in done:
                    return
                done.add((sub_index, j))
            ok = is_good(c, r.choices, serve_truncated=not self.retry_truncated)
            if self.enabled:
                c = self._store(key, body, sample, c, ok)
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
                results[i][sample - r.sample_offset] = c
                if bar is not None:
                    bar.update(1)
            if sample_done is not None:
                sample_done(i)

        def feed() -> list[Request]:
            new = more()
            sent.extend(new)
            if bar is not None and new:
                bar.total += sum(s.n for s in new)
                bar.refresh()
            return new

        try:
            if more is not None:
                out = self.backend.generate(sent, on_result=on_result, more=feed)
            elif getattr(self.backend, "streams_results", False):
                out = self.backend.generate(sent, on_result=on_result)
            else:
                out = self.backend.generate(sent)
            if len(out) != len(sent):
                raise EngineError(f"{self.name}: back end returned {len(out)} results for {len(sent)} requests")
            for si, (sub, comps) in enumerate(zip(sent, out)):
                if len(comps) != sub.n:
                    raise EngineError(f"{self.name}: back end returned {len(comps)} samples, {sub.n} asked")
                for j, c in enumerate(comps):
                    on_result(si, j, c)
        except BaseException as exc:
            with self._lock:
                lost = 0
                for si, sub in enumerate(sent):
                    for j in range(sub.n):
                        if (si, j) not in done:
                            self._stats[sub.tag]["errors"] += 1
                            lost += 1
            self._logger.error("%s: batch failed with %d of %d samples unfinished (finished ones are "
                               "cached): %s", self.name, lost, sum(s.n for s in sent), exc)
            raise
        finally:
            if bar is not None:
                bar.close()

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
            if self._conn is not None:
                with self._lock:
                    self._conn.close()
                    self._conn = None

    def __enter__(self) -> "CachedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def completion_dict(c: Completion) -> dict:
    """A completion as a plain dict (for artifacts)."""
    return asdict(c)
