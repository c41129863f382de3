"""Grading answers: the public ``grade`` and ``extract_answer``, and a batch grader with time limits.

Math checks (:mod:`math_equivalence`: the kit's extraction and normalisation, then math-verify)
run in a separate worker process, because some inputs make SymPy compute for ever inside one C
call (``9^{9^{9}}``), where no signal can interrupt it. Each check has two limits:

- a soft limit inside the worker (``setitimer``), which interrupts ordinary slow Python code and
  returns a ``timeout`` verdict at once;
- a hard limit in the caller (soft limit + grace): when the worker has not answered by then it is
  killed and a fresh one is started for the next check.

So ``grade`` never hangs, works from any thread, and a pathological answer costs at most the hard
limit. Multiple-choice grading (:mod:`choice`) is pure string work and runs in-process.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from cogpo_kit.evaluation.answer_extraction import extract_answer  # noqa: F401  (public)
from cogpo_kit.evaluation.choice import CHOICE_EXTRACTORS, extract_choice, grade_choice  # noqa: F401

KINDS = ("math", "choice")
_WORKER_MEMORY_BYTES = 4 << 30
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class GradeResult:
    """One graded answer."""

    correct: bool
    extracted: Optional[str]
    """The answer found in the prediction (``None``: none)."""
    gold: Optional[str]
    """The reference answer used."""
    method: str
    """What decided (``string``, ``number``, ``text``, ``math_verify``, ``mismatch``, ``no_answer``,
    ``timeout``, ``error: ...``)."""
    seconds: float = 0.0
    timed_out: bool = False


class MathGrader:
    """Math equivalence checks in a worker process with a soft and a hard time limit.

    ``timeout_s`` is the soft limit of one check; the hard limit is ``timeout_s + grace_s``.
    Thread-safe; use one per process (see :func:`default_grader`) or as a context manager.
    """

    def __init__(self, timeout_s: float = 5.0, grace_s: float = 2.0, start_timeout_s: float = 180.0):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = float(timeout_s)
        self.grace_s = float(grace_s)
        self.start_timeout_s = float(start_timeout_s)
        self.restarts = 0
        self.timeouts = 0
        self.checks = 0
        self._proc: Optional[subprocess.Popen] = None
        self._buf = b""
        self._stderr = None
        self._lock = threading.RLock()

    # -- worker lifecycle -------------------------------------------------------------------
    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "cogpo_kit.evaluation.grader_worker", str(_WORKER_MEMORY_BYTES)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                close_fds=True)
        self._proc, self._buf = proc, b""
        line = self._read_line(time.monotonic() + self.start_timeout_s)
        if line is None or json.loads(line).get("ready") is not True:
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")[-2000:]
            self._kill()
            raise RuntimeError(f"math grader worker did not start (exit code {proc.poll()}): {err}")

    def _read_line(self, deadline: float) -> Optional[bytes]:
        """One line from the worker, or ``None`` at the deadline / when it died."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(left):
                    return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        self._proc = None
        self._buf = b""

    def close(self) -> None:
        """Stop the worker (a later check starts a new one)."""
        with self._lock:
            if self._proc is not None:
                try:
                    self._proc.stdin.close()
                    self._proc.wait(2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill()

    def __enter__(self) -> "MathGrader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "MathGrader":
        """Start the worker now (otherwise the first check starts it)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._start()
        return self

    # -- checks -----------------------------------------------------------------------------
    def check(self, prediction: str, gold: str, timeout_s: Optional[float] = None) -> GradeResult:
        """Grade one math answer; never raises for a bad answer, never waits past the hard limit."""
        soft = float(timeout_s or self.timeout_s)
        with self._lock:
            self.checks += 1
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                self._kill()
                self._start()
            start = time.perf_counter()
            try:
                msg = json.dumps({"pred": str(prediction), "gold": str(gold), "timeout": soft}) + "\n"
                self._proc.stdin.write(msg.encode("utf-8"))
                self._proc.stdin.flush()
            except (OSError, ValueError) as exc:
                self._kill()
                self.restarts += 1
                return GradeResult(False, None, None, f"error: grader worker died ({type(exc).__name__})",
                                   time.perf_counter() - start)
            line = self._read_line(time.monotonic() + soft + self.grace_s)
            if line is not None:
                r = json.loads(line)
                if r["timed_out"]:
                    self.timeouts += 1
                return GradeResult(bool(r["correct"]), r["pred"], r["gold"], r["method"], r["seconds"], r["timed_out"])
            # hard limit (or the worker died): it is stuck inside one call -> kill, restart on next check
            died = self._proc.poll() is not None
            self._kill()
            self.restarts += 1
            if died:
                return GradeResult(False, None, None, "error: grader worker died", time.perf_counter() - start)
            self.timeouts += 1
            return GradeResult(False, None, None, "timeout", time.perf_counter() - start, True)

    def check_many(self, pairs: Iterable[tuple[str, str]], *, desc: str = "grading",
                   show_progress: bool = False) -> list[GradeResult]:
        """Grade ``(prediction, gold)`` pairs in order."""
        pairs = list(pairs)
        it: Iterable = pairs
        if show_progress:
            from cogpo_kit.progress import progress

            it = progress(pairs, total=len(pairs), desc=desc, unit="answer")
        return [self.check(p, g) for p, g in it]


_DEFAULT: Optional[MathGrader] = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> MathGrader:
    """The process-wide grader used by :func:`grade` (started on first use, stopped at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MathGrader()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def grade(prediction: str, gold: str, kind: str = "math") -> bool:
    """Whether ``prediction`` (a completion or an answer) answers ``gold`` correctly.

    ``kind="math"``: extraction + normalisation + math-verify, time-limited (never hangs);
    ``kind="choice"``: the chosen option letter (``default`` extractor) equals ``gold``.
    """
    if kind == "math":
        return default_grader().check(prediction, gold).correct
    if kind == "choice":
        return grade_choice(prediction, gold)
    raise ValueError(f"unknown grading kind '{kind}' (known: {', '.join(KINDS)})")


def grade_detailed(prediction: str, gold: str, kind: str = "math", *, n_choices: int = 4) -> GradeResult:
    """Like :func:`grade`, with the extracted answer and what decided."""
    if kind == "math":
        return default_grader().check(prediction, gold)
    if kind == "choice":
        letter = extract_choice(prediction, "default", n_choices=n_choices)
        return GradeResult(grade_choice(prediction, gold, n_choices=n_choices), letter, str(gold).strip(), "default")
    raise ValueError(f"unknown grading kind '{kind}' (known: {', '.join(KINDS)})")


def choice_verdicts(prediction: str, gold: str, n_choices: int = 4,
                    extractors: Sequence[str] = ("strict", "leading", "flexible", "default")) -> dict[str, bool]:
    """Correctness under each named letter extractor, side by side."""
    return {name: grade_choice(prediction, gold, extractor=name, n_choices=n_choices) for name in extractors}
