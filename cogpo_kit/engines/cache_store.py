"""The response cache's SQLite file: its schema, the cache key of a request, and one model's samples.

Each sample is stored under ``(key, sample index)``: the key hashes the model identity, the
messages, the sampling settings (seed included), the label choices and the engine settings that
change outputs. Every write is one IMMEDIATE transaction, committed and synced (WAL mode,
``synchronous=FULL``) before it returns. Errors, empty and truncated completions are recorded as
what they are (``ok = 0``, with an attempt count) and replaced by the next attempt; a good sample
is never overwritten. Several processes and threads may write to one file at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, EngineError, Request
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

_UPSERT = (
    "INSERT INTO responses (key, sample, model_id, engine, text, finish_reason, prompt_tokens,"
    " completion_tokens, error, choice, ok, attempts, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,1,?)"
    " ON CONFLICT(key, sample) DO UPDATE SET text=excluded.text,"
    " finish_reason=excluded.finish_reason, prompt_tokens=excluded.prompt_tokens,"
    " completion_tokens=excluded.completion_tokens, error=excluded.error, choice=excluded.choice,"
    " ok=excluded.ok, attempts=responses.attempts + 1, created=excluded.created"
    " WHERE responses.ok = 0")

ENTRY_COLUMNS = ("key", "sample", "text", "finish_reason", "prompt_tokens", "completion_tokens", "error",
                 "choice", "ok", "attempts")


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


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the cache file at ``path`` in WAL mode with the schema in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(50):
        try:
            conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            return conn
        except sqlite3.OperationalError as exc:  # another process is creating the file
            last = exc
            time.sleep(0.05 * (attempt + 1))
    raise EngineError(f"response cache {path}: cannot open ({last})")


class ResponseStore:
    """The samples of one model (``model_id``, served by back end ``engine``) in the cache file at ``path``."""

    def __init__(self, path: str | os.PathLike, model_id: str, engine: str):
        self.path = Path(path)
        self.model_id = model_id
        self.engine = engine
        self._lock = threading.RLock()
        self._conn: Optional[sqlite3.Connection] = open_database(self.path)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one IMMEDIATE transaction (committed and synced on return)."""
        with self._lock:
            conn = self._connection()
            for attempt in range(100):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    time.sleep(0.02 * min(attempt + 1, 20))
            else:
                raise EngineError(f"response cache {self.path}: database stays locked")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EngineError(f"response cache {self.path}: used after close()")
        return self._conn

    def clear(self) -> int:
        """Delete every entry of this model; returns how many samples were removed."""

        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM responses WHERE model_id = ?", (self.model_id,)).rowcount
            conn.execute("DELETE FROM requests WHERE model_id = ?", (self.model_id,))
            return n

        return self._write(run)

    def lookup(self, keys: Sequence[str]) -> dict[tuple[str, int], Completion]:
        """The good samples stored under ``keys``, by ``(key, sample index)`` (marked ``cached``)."""
        found: dict[tuple[str, int], Completion] = {}
        if not keys:
            return found
        uniq = sorted(set(keys))
        with self._lock:
            conn = self._connection()
            for i in range(0, len(uniq), 500):
                chunk = uniq[i:i + 500]
                q = ("SELECT key, sample, text, finish_reason, prompt_tokens, completion_tokens, choice "
                     f"FROM responses WHERE ok = 1 AND key IN ({','.join('?' * len(chunk))})")
                for key, sample, text, fin, pt, ct, choice in conn.execute(q, chunk):
                    found[(key, sample)] = Completion(text=text, finish_reason=fin, prompt_tokens=pt,
                                                      completion_tokens=ct, cached=True, choice=choice)
        return found

    def put(self, key: str, body: dict, sample: int, c: Completion, ok: bool) -> Completion:
        """Record one sample; returns what the cache now holds for it (another writer may have won)."""

        def run(conn: sqlite3.Connection) -> Completion:
            conn.execute("INSERT OR IGNORE INTO requests (key, model_id, body) VALUES (?, ?, ?)",
                         (key, self.model_id, json.dumps(body, ensure_ascii=False)))
            cur = conn.execute(_UPSERT, (key, sample, self.model_id, self.engine, c.text, c.finish_reason,
                                         int(c.prompt_tokens), int(c.completion_tokens), c.error, c.choice,
                                         int(ok), time.time()))
            if cur.rowcount == 0 and ok:  # a good answer was stored first by another writer: serve it
                row = conn.execute("SELECT text, finish_reason, prompt_tokens, completion_tokens, choice "
                                   "FROM responses WHERE key = ? AND sample = ?", (key, sample)).fetchone()
                return Completion(text=row[0], finish_reason=row[1], prompt_tokens=row[2],
                                  completion_tokens=row[3], cached=True, choice=row[4])
            return c

        return self._write(run)

    def entries(self, *, good_only: bool = False) -> list[dict]:
        """All stored samples of this model (for inspection and tests)."""
        q = ("SELECT key, sample, text, finish_reason, prompt_tokens, completion_tokens, error, choice, ok,"
             " attempts FROM responses WHERE model_id = ?" + (" AND ok = 1" if good_only else ""))
        with self._lock:
            return [dict(zip(ENTRY_COLUMNS, row)) for row in self._connection().execute(q, (self.model_id,))]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
