"""Worker processes that run math checks, with pipelined requests and a hard time limit.

A :class:`WorkerProc` is one ``python -m cogpo_kit.evaluation.grader_worker`` process talking
JSON lines over pipes. :meth:`WorkerProc.run_batch` keeps a few requests in flight (bounded in
count and bytes, so neither pipe can fill up and block) and reads the verdicts in order. The
worker handles requests one after the other, so the hard limit of the request at the head is
measured from the moment the worker could start it (the previous verdict, or its sending): when
nothing comes back by then, the worker is stuck inside one C call — it is killed, that request
is a ``timeout``, a fresh worker is started and the requests behind it are sent again.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Optional, Sequence

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
WORKER_MEMORY_BYTES = 4 << 30
MAX_IN_FLIGHT = 16
MAX_IN_FLIGHT_BYTES = 48 << 10


class WorkerProc:
    """One grader worker process (not thread-safe: one caller at a time)."""

    def __init__(self, start_timeout_s: float = 180.0):
        self.start_timeout_s = start_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.buf = b""
        self.restarts = 0
        self.hard_timeouts = 0
        self._stderr = None
        self._sel: Optional[selectors.BaseSelector] = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "cogpo_kit.evaluation.grader_worker", str(WORKER_MEMORY_BYTES)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                     close_fds=True)
        self.buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout.fileno(), selectors.EVENT_READ)
        line = self._read_line(time.monotonic() + self.start_timeout_s)
        if line is None or json.loads(line).get("ready") is not True:
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")[-2000:]
            code = self.proc.poll()
            self.kill()
            raise RuntimeError(f"math grader worker did not start (exit code {code}): {err}")

    def ensure(self) -> None:
        if not self.alive():
            if self.proc is not None:
                self.restarts += 1
            self.kill()
            self.start()

    def kill(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if getattr(self, "_sel", None) is not None:
            self._sel.close()
            self._sel = None
        self.proc = None
        self.buf = b""

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _read_line(self, deadline: float) -> Optional[bytes]:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._sel.select(left):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def run_batch(self, items: Sequence[tuple[str, str]], soft_s: float, hard_s: float) -> list[dict]:
        """Verdict dicts (``correct``, ``pred``, ``gold``, ``method``, ``timed_out``, ``seconds``), in order.

        ``soft_s``: CPU seconds the worker gives one check; ``hard_s``: wall seconds after which a
        worker that has not answered is killed."""
        results: list[Optional[dict]] = [None] * len(items)
        pending = deque(range(len(items)))
        while pending:
            self.ensure()
            in_flight: deque[tuple[int, int]] = deque()  # (index, bytes)
            queued = deque(pending)
            pending.clear()
            last_event = time.monotonic()
            stuck = False
            while queued or in_flight:
                while queued and (not in_flight or (len(in_flight) < MAX_IN_FLIGHT and
                                                    sum(b for _, b in in_flight) < MAX_IN_FLIGHT_BYTES)):
                    i = queued.popleft()
                    data = (json.dumps({"pred": items[i][0], "gold": items[i][1], "timeout": soft_s}) + "\n").encode()
                    try:
                        self.proc.stdin.write(data)
                        self.proc.stdin.flush()
                    except (OSError, ValueError):
                        queued.appendleft(i)
                        stuck = True
                        break
                    if not in_flight:
                        last_event = time.monotonic()
                    in_flight.append((i, len(data)))
                if stuck:
                    break
                line = self._read_line(last_event + hard_s)
                now = time.monotonic()
                if line is None:
                    stuck = True
                    break
                i, _ = in_flight.popleft()
                results[i] = json.loads(line)
                last_event = now
            if stuck:
                died = self.proc is not None and self.proc.poll() is not None
                self.kill()
                self.restarts += 1
                if in_flight:
                    head, _ = in_flight.popleft()
                    if died:
                        results[head] = {"correct": False, "pred": None, "gold": None,
                                         "method": "error: grader worker died", "timed_out": False, "seconds": 0.0}
                    else:
                        self.hard_timeouts += 1
                        results[head] = {"correct": False, "pred": None, "gold": None, "method": "timeout",
                                         "timed_out": True, "seconds": hard_s}
                pending.extend([i for i, _ in in_flight] + list(queued))
        return [r for r in results]  # type: ignore[misc]
