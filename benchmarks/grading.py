"""Grader accuracy and speed: the kit's math grader against math-verify's defaults, in one run.

    python benchmarks/grading.py            # writes benchmarks/results/grading.md

Accuracy
  * labelled cases from public evaluators' own test suites (``tests/data/grader_cases.jsonl``,
    each with its source: Math-Verify, lighteval, lm-evaluation-harness, the MATH grader);
  * held-out real data the grader was not tuned on case by case: MATH-500 and AIME 2024
    reference solutions against their answers (should all be correct), MATH-500 solutions
    against another problem's different integer answer, and against their own answer with one
    digit changed (should all be wrong).
  The baseline is math-verify 0.9.0 with its defaults: ``verify(parse(gold), parse(pred))``.

Speed
  answers graded per second: the kit's batch grader (``MathGrader.check_many``: 2 worker processes,
  5 s limit per check) against math-verify called one answer at a time (5 s default limits),
  on the same answers; then the timeout path (inputs that make SymPy compute for ever).
"""

from __future__ import annotations

import json
import logging
import platform
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogpo_kit.evaluation.grading import MathGrader  # noqa: E402
from cogpo_kit.evaluation.choice import CHOICE_EXTRACTORS, extract_choice  # noqa: E402
from cogpo_kit.io import atomic_write_text, read_jsonl  # noqa: E402

PATHOLOGICAL = [("\\boxed{9^{9^{9}}}", "5"), ("5", "9^{9^{9}}"), ("\\boxed{(10^{100000})!}", "5"),
                ("\\boxed{10^{10^{10}}}", "7"), ("\\boxed{2^{2^{40}}}", "3")]


def timed(fn):
    """``(fn(), seconds)``."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def mv_grade(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(gold), parse(pred)))
    except Exception:
        return False


def held_out_sets() -> dict[str, list[tuple[str, str, bool]]]:
    data = ROOT / "data"
    m500 = read_jsonl(data / "math500" / "test.jsonl")
    aime = read_jsonl(data / "aime24" / "test.jsonl")
    rng = random.Random(0)
    ints = [r for r in m500 if re.fullmatch(r"-?\d+", r["answer"].strip())]
    neg = []
    for r in ints:
        o = rng.choice(ints)
        if int(o["answer"]) != int(r["answer"]):
            neg.append((r["solution"], o["answer"], False))
    perturbed = []
    for r in m500:
        ans = r["answer"]
        m = re.search(r"\d", ans)
        if not m or "\\boxed" not in r["solution"]:
            continue
        d = m.group(0)
        new = ans[: m.start()] + str((int(d) + 1) % 10 if d != "9" else 8) + ans[m.end():]
        # the solution with its final box replaced by the changed answer
        i = r["solution"].rfind("\\boxed{")
        j = i + len("\\boxed{")
        depth, k = 1, j
        while k < len(r["solution"]) and depth:
            depth += {"{": 1, "}": -1}.get(r["solution"][k], 0)
            k += 1
        perturbed.append((r["solution"][:j] + new + "}" + r["solution"][k:], ans, False))
    return {
        "MATH-500 solutions vs answer": [(r["solution"], r["answer"], True) for r in m500],
        "AIME 2024 solutions vs answer": [(r["solution"], str(r["answer"]), True) for r in aime],
        "MATH-500 solution vs another integer answer": neg,
        "MATH-500 solution with one digit changed": perturbed,
    }


def main() -> int:
    logging.disable(logging.WARNING)
    cases = read_jsonl(ROOT / "tests" / "data" / "grader_cases.jsonl")
    math_cases = [c for c in cases if c["kind"] == "math"]
    choice_cases = [c for c in cases if c["kind"] == "choice"]
    grader = MathGrader(timeout_s=5.0, workers=2)
    grader.start()
    lines = ["# Grader accuracy and speed", "",
             f"Machine: {platform.platform()}, Python {platform.python_version()}; one run of "
             "`python benchmarks/grading.py`. Baseline: math-verify 0.9.0 defaults, `verify(parse(gold), parse(pred))`.", ""]

    # ---- accuracy on public test-suite cases ------------------------------------------------
    mine = grader.check_many([(c["pred"], c["gold"]) for c in math_cases])
    base = [mv_grade(c["pred"], c["gold"]) for c in math_cases]
    by = defaultdict(lambda: [0, 0, 0])
    for c, r, b in zip(math_cases, mine, base):
        k = f"{c['repo']} `{c['file']}`"
        by[k][0] += 1
        by[k][1] += r.correct == c["expected"]
        by[k][2] += b == c["expected"]
    lines += ["## Accuracy on labelled cases from public evaluators' test suites", "",
              "| source (repo, file) | cases | cogpo-kit | math-verify defaults |", "|---|---:|---:|---:|"]
    tot = [0, 0, 0]
    for k, (n, a, b) in sorted(by.items()):
        lines.append(f"| {k} | {n} | {a} ({100 * a / n:.1f}%) | {b} ({100 * b / n:.1f}%) |")
        tot = [tot[0] + n, tot[1] + a, tot[2] + b]
    lines.append(f"| **all** | **{tot[0]}** | **{tot[1]} ({100 * tot[1] / tot[0]:.1f}%)** | "
                 f"**{tot[2]} ({100 * tot[2] / tot[0]:.1f}%)** |")
    wrong = [(c, r) for c, r in zip(math_cases, mine) if r.correct != c["expected"]]
    lines += ["", f"Cases the kit's grader gets wrong ({len(wrong)}):", ""]
    for c, r in wrong:
        lines.append(f"- `{c['id']}` expected {c['expected']}: gold `{c['gold'][:60]!r}`, pred `{c['pred'][:60]!r}` "
                     f"-> extracted `{r.extracted!r}` ({r.method}); {c['source']}")
    notes = [c for c in math_cases if c.get("note")]
    if notes:
        lines += ["", "Labels reviewed (the upstream test pins a library behaviour, not the mathematics):", ""]
        lines += [f"- `{c['id']}`: {c['note']} (upstream expected {c['upstream_expected']})" for c in notes]

    # ---- choice extractors --------------------------------------------------------------------
    lines += ["", "## Multiple-choice letter extractors on the same suites", "",
              "| extractor | correct of " + str(len(choice_cases)) + " |", "|---|---:|"]
    for name in CHOICE_EXTRACTORS:
        ok = sum((extract_choice(c["pred"], name) == c["gold"]) == c["expected"] for c in choice_cases)
        lines.append(f"| {name} | {ok} |")

    # ---- held-out real data ---------------------------------------------------------------------
    lines += ["", "## Held-out checks on real benchmark data", "",
              "| check | cases | cogpo-kit | math-verify defaults |", "|---|---:|---:|---:|"]
    for name, rows in held_out_sets().items():
        res = grader.check_many([(p, g) for p, g, _ in rows])
        a = sum(r.correct == e for r, (_, _, e) in zip(res, rows))
        b = sum(mv_grade(p, g) == e for p, g, e in rows)
        lines.append(f"| {name} | {len(rows)} | {a} ({100 * a / len(rows):.1f}%) | {b} ({100 * b / len(rows):.1f}%) |")

    # ---- speed ------------------------------------------------------------------------------------
    data = ROOT / "data"
    solutions = [(r["solution"], r["answer"]) for r in read_jsonl(data / "math500" / "test.jsonl")]
    for r in read_jsonl(data / "gsm8k" / "test.jsonl"):
        body, ans = r["answer"].rsplit("####", 1)
        solutions.append((re.sub(r"<<[^>]*>>", "", body) + f"The answer is {ans.strip()}.", ans.strip().replace(",", "")))
    suites = [(c["pred"], c["gold"]) for c in math_cases]
    lines += ["", "## Speed (answers graded per second, same answers, one run)", "",
              "| workload | answers | cogpo-kit batch: s (answers/s) | math-verify one at a time: s (answers/s) | ratio |",
              "|---|---:|---:|---:|---:|"]
    agree, methods = 0, Counter()
    for label, work in (("1819 solutions: 500 MATH-500 reference solutions + 1319 GSM8K worked solutions "
                         "ending 'The answer is N'", solutions),
                        (f"{len(suites)} test-suite cases (hard, symbolic)", suites)):
        mine_res, mine_s = timed(lambda: grader.check_many(work))
        base_res, base_s = timed(lambda: [mv_grade(p, g) for p, g in work])
        agree += sum(r.correct == b for r, b in zip(mine_res, base_res))
        methods.update(r.method for r in mine_res)
        lines.append(f"| {label} | {len(work)} | {mine_s:.1f} ({len(work) / mine_s:.0f}/s) | "
                     f"{base_s:.1f} ({len(work) / base_s:.0f}/s) | {base_s / mine_s:.1f}x |")
    n_all = len(solutions) + len(suites)
    lines += ["", "cogpo-kit batch = `MathGrader(workers=2).check_many` (worker processes, requests pipelined, "
              "5 CPU-second limit per check); math-verify = `verify(parse(gold), parse(pred))` in a loop "
              "(its 5 s signal limits).", "",
              f"Agreement between the two: {agree} of {n_all}; cogpo-kit decided by: {dict(methods.most_common())}."]

    # ---- timeout path -------------------------------------------------------------------------
    restarts0, timeouts0 = grader.restarts, grader.timeouts
    tres, tm = timed(lambda: grader.check_many(PATHOLOGICAL))
    tb, tbs = timed(lambda: [mv_grade(p, g) for p, g in PATHOLOGICAL])
    after, after_s = timed(lambda: grader.check("\\boxed{72}", "72"))
    lines += ["", "## Timeout path", "",
              f"{len(PATHOLOGICAL)} answers that make SymPy compute for ever (`9^{{9^{{9}}}}`, `(10^{{100000}})!`, ...):", "",
              "| grader | seconds | all graded wrong | notes |", "|---|---:|---|---|",
              f"| cogpo-kit | {tm:.1f} | {all(not r.correct for r in tres)} | {grader.timeouts - timeouts0} timeouts, "
              f"{grader.restarts - restarts0} worker restarts; next check after them: {after.correct} in {after_s * 1000:.0f} ms |",
              f"| math-verify defaults | {tbs:.1f} | {all(not b for b in tb)} | signal-based limits (main thread only) |", ""]
    grader.close()
    out = ROOT / "benchmarks" / "results" / "grading.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
