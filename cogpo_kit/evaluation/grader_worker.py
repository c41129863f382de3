"""The math grader's worker process: JSON lines in on stdin, verdicts out on stdout.

Started by :class:`cogpo_kit.evaluation.grading.MathGrader` as ``python -m
cogpo_kit.evaluation.grader_worker MEMORY_BYTES``. Each request ``{"pred", "gold", "timeout"}``
is checked under a soft time limit counted in CPU seconds (``ITIMER_PROF``, so a busy machine does
not turn a slow check into a timeout); the parent enforces the hard, wall-clock limit by killing
this process.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import sys
import time


class SoftTimeout(BaseException):
    """Raised by the timer; a BaseException so library ``except Exception`` cannot swallow it."""


def _cap(text, limit: int = 2000):
    return text if text is None or len(text) <= limit else text[:limit] + "..."


def _on_alarm(signum, frame):
    raise SoftTimeout()


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)  # math-verify warns that its own timeouts are off
    if argv:
        limit = int(argv[0])
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass
    from cogpo_kit.evaluation.math_equivalence import check_math

    signal.signal(signal.SIGPROF, _on_alarm)
    try:  # import and warm math-verify's parsers outside any time limit
        check_math("$x^2+1$", "1+x^2")
    except Exception:
        pass
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        start = time.perf_counter()
        res = {"correct": False, "pred": None, "gold": None, "method": "", "timed_out": False}
        try:
            signal.setitimer(signal.ITIMER_PROF, float(req.get("timeout", 5.0)))
            chk = check_math(req["pred"], req["gold"])
            signal.setitimer(signal.ITIMER_PROF, 0)
            res.update(correct=chk.correct, pred=_cap(chk.pred_answer), gold=_cap(chk.gold_answer), method=chk.method)
        except SoftTimeout:
            res.update(method="timeout", timed_out=True)
        except MemoryError:
            res.update(method="error: out of memory")
        except Exception as exc:  # a grader error is a wrong answer, reported, never a crash
            res.update(method=f"error: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        res["seconds"] = time.perf_counter() - start
        out.write(json.dumps(res) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
