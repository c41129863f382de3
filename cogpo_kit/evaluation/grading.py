"""Grading answers: the public ``grade`` and ``extract_answer``, and a batch grader with time limits.

Math checks (:mod:`math_equivalence`: the kit's extraction and normalisation, then math-verify)
run in a separate worker process, because some inputs can make SymPy compute for ever inside one C
call, where no signal can interrupt it. Each check has two limits:

- a soft limit inside the worker, in CPU seconds (``setitimer(ITIMER_PROF)``), which interrupts
  ordinary slow Python code and returns a ``timeout`` verdict at once — counted in CPU time so a
  busy machine does not turn slow-but-fine checks into timeouts;
- a hard limit in the caller, in wall seconds (``hard_factor`` x soft limit + grace): when the
  worker has not answered by then it is killed and a fresh one is started for the next check.

So ``grade`` never hangs, works from any thread, and a pathological answer costs at most the hard
limit. :class:`MathGrader` can run several workers and pipelines requests to each (see
:mod:`grader_pool`). Multiple-choice grading (:mod:`choice`) is pure string work and runs in-process.
"""

from __future__ import annotations

import atexit
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from cogpo_kit.answers.extraction import extract_answer  # noqa: F401  (public)
from cogpo_kit.evaluation.choice import CHOICE_EXTRACTORS, extract_choice, gold_letter, grade_choice  # noqa: F401
from cogpo_kit.evaluation.grader_pool import WorkerProc

KINDS = ("math", "choice")


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
    """Math equivalence checks in worker processes with a soft and a hard time limit.

    ``timeout_s`` is the soft limit of one check (CPU seconds); the hard limit is
    ``hard_factor * timeout_s + grace_s`` wall seconds.
    ``workers`` processes grade in parallel in :meth:`check_many` (requests pipelined to each).
    Thread-safe; use as a context manager or call :meth:`close`.
    """

    def __init__(self, timeout_s: float = 5.0, grace_s: float = 2.0, workers: int = 1, start_timeout_s: float = 180.0,
                 hard_factor: float = 4.0):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.timeout_s = float(timeout_s)
        self.grace_s = float(grace_s)
        self.hard_factor = float(hard_factor)
        self.checks = 0
        self.timeouts = 0
        self._workers = [WorkerProc(start_timeout_s) for _ in range(workers)]
        self._idle: "queue.Queue[WorkerProc]" = queue.Queue()
        for w in self._workers:
            self._idle.put(w)
        self._lock = threading.Lock()

    @property
    def restarts(self) -> int:
        """Workers replaced after a hard timeout or a crash."""
        return sum(w.restarts for w in self._workers)

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.alive()]

    def start(self) -> "MathGrader":
        """Start the workers now (otherwise the first check starts them)."""
        ws = [self._idle.get() for _ in self._workers]
        try:
            for w in ws:
                w.ensure()
        finally:
            for w in ws:
                self._idle.put(w)
        return self

    def close(self) -> None:
        """Stop the workers (a later check starts new ones)."""
        for w in self._workers:
            w.close()

    def __enter__(self) -> "MathGrader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, items: Sequence[tuple[str, str]], soft: float) -> list[GradeResult]:
        w = self._idle.get()
        try:
            raw = w.run_batch([(str(p), str(g)) for p, g in items], soft, self.hard_factor * soft + self.grace_s)
        finally:
            self._idle.put(w)
        out = [GradeResult(bool(r["correct"]), r["pred"], r["gold"], r["method"], float(r["seconds"]),
                           bool(r["timed_out"])) for r in raw]
        with self._lock:
            self.checks += len(out)
            self.timeouts += sum(r.timed_out for r in out)
        return out

    def check(self, prediction: str, gold: str, timeout_s: Optional[float] = None) -> GradeResult:
        """Grade one math answer; never raises for a bad answer, never waits past the hard limit."""
        return self._run([(prediction, gold)], float(timeout_s or self.timeout_s))[0]

    def check_many(self, pairs: Iterable[tuple[str, str]], *, desc: str = "grading",
                   show_progress: bool = False, chunk: int = 64) -> list[GradeResult]:
        """Grade ``(prediction, gold)`` pairs, spread over the workers; results in input order."""
        pairs = list(pairs)
        chunks = [pairs[i:i + chunk] for i in range(0, len(pairs), chunk)]
        results: list[list[GradeResult]] = [[] for _ in chunks]
        bar = None
        if show_progress:
            from cogpo_kit.progress import progress

            bar = progress(total=len(pairs), desc=desc, unit="answer")

        def work(k: int) -> None:
            results[k] = self._run(chunks[k], self.timeout_s)
            if bar is not None:
                bar.update(len(chunks[k]))

        if len(self._workers) == 1 or len(chunks) <= 1:
            for k in range(len(chunks)):
                work(k)
        else:
            with ThreadPoolExecutor(max_workers=len(self._workers)) as pool:
                list(pool.map(work, range(len(chunks))))
        if bar is not None:
            bar.close()
        return [r for part in results for r in part]


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
    ``kind="choice"``: the chosen option letter (``default`` extractor) equals the gold letter (``C``,
    ``(C)``, or the letter given with its option text: ``(D) Alina``, ``C Cecile``).
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
        g = gold_letter(gold, n_choices)
        letter = extract_choice(prediction, "default", n_choices=max(n_choices, "ABCDEFGHIJ".index(g) + 1))
        return GradeResult(letter == g, letter, g, "default")
    raise ValueError(f"unknown grading kind '{kind}' (known: {', '.join(KINDS)})")


def choice_verdicts(prediction: str, gold: str, n_choices: int = 4,
                    extractors: Sequence[str] = ("strict", "leading", "flexible", "default")) -> dict[str, bool]:
    """Correctness under each named letter extractor, side by side."""
    return {name: grade_choice(prediction, gold, extractor=name, n_choices=n_choices) for name in extractors}
