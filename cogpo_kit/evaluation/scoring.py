"""Grading one model's completions on one benchmark, and summarising them.

``grade_benchmark`` turns completions into sample rows (the ``samples_<bench>.jsonl`` lines:
prompt, output, extracted answer, gold, verdict) and a per-problem list of sample verdicts;
``summarize_benchmark`` turns those into the benchmark's entry in ``results.json``: pass@1 with its
bootstrap interval, pass@k, breakdowns, the multiple-choice extractors side by side, code test
verdict counts, how generation ended (stop / length / error), the decoding protocol, and the
answers cut at ``max_tokens``: ``truncated`` outputs and ``truncated_correct`` (graded correct
although cut; counted wrong with ``eval.truncated_as_wrong``).
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from cogpo_kit.evaluation.benchmarks import Benchmark, Problem
from cogpo_kit.evaluation.choice import CHOICE_EXTRACTORS, extract_choice, gold_letter
from cogpo_kit.evaluation.code_tests import extract_code, run_tests
from cogpo_kit.evaluation.grading import MathGrader
from cogpo_kit.evaluation.metrics import breakdown, per_problem_pass, score_summary
from cogpo_kit.evaluation.sandbox import Limits


def _meta_view(p: Problem) -> dict:
    return {k: v for k, v in p.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}


def grade_benchmark(bench: Benchmark, problems: Sequence[Problem], prompts: Sequence[str], completions: Sequence[Sequence],
                    ev, grader: Optional[MathGrader] = None, show_progress: bool = True) -> tuple[list[dict], list[list[bool]]]:
    """Grade every sample; returns ``(sample rows, per-problem verdict lists)``."""
    from cogpo_kit.progress import progress

    rows: list[dict] = []
    verdicts: list[list[bool]] = []
    math_results: dict[tuple[int, int], object] = {}
    if bench.kind == "math":  # all math checks at once: pipelined over the grader's workers
        keys = [(k, i) for k, comps in enumerate(completions) for i, c in enumerate(comps) if c.finish_reason != "error"]
        res = grader.check_many([(completions[k][i].text or "", problems[k].gold) for k, i in keys],
                                desc=f"grading {bench.name}", show_progress=show_progress)
        math_results = dict(zip(keys, res))
    code_items = sum(len(c) for c in completions) if bench.kind == "code" else 0
    bar = progress(total=code_items, desc=f"testing {bench.name}", unit="program") if code_items and show_progress else None
    limits = code_limits(ev)
    for k, (prob, prompt, comps) in enumerate(zip(problems, prompts, completions)):
        per: list[bool] = []
        for i, comp in enumerate(comps):
            text = comp.text or ""
            row = {"id": prob.id, "sample": i, "prompt": prompt, "output": text, "gold": prob.gold,
                   "finish_reason": comp.finish_reason, "truncated": comp.finish_reason == "length",
                   "completion_tokens": comp.completion_tokens, "meta": _meta_view(prob)}
            if comp.finish_reason == "error":
                row.update(extracted=None, correct=False, method=f"generation error: {comp.error}")
            elif bench.kind == "math":
                res = math_results[(k, i)]
                row.update(extracted=res.extracted, correct=res.correct, method=res.method)
            elif bench.kind == "choice":
                n = len(prob.choices) or 4
                gold = gold_letter(prob.gold, n, prob.choices)
                by = {name: extract_choice(text, name, n_choices=n, choices=prob.choices) for name in CHOICE_EXTRACTORS}
                row.update(extracted=by[ev.choice_extractor], correct=by[ev.choice_extractor] == gold,
                           method=ev.choice_extractor, extractors={k2: v == gold for k2, v in by.items()},
                           letters=by)
            elif bench.kind == "code":
                code = extract_code(text)
                if code is None:
                    row.update(extracted=None, correct=False, method="no_code", verdict="no_code", tests=[])
                else:
                    tv = run_tests(code, prob.tests, func_name=prob.func_name, limits=limits,
                                   allow_unisolated=getattr(ev, "code_allow_unisolated", False))
                    failed = next((t for t in tv if t.verdict != "pass"), None)
                    row.update(extracted=code, correct=failed is None, method="sandbox",
                               verdict="pass" if failed is None else failed.verdict,
                               reason=failed.reason if failed else "",
                               tests=[t.verdict for t in tv], tests_source=prob.meta.get("tests_source"))
                if bar is not None:
                    bar.update(1)
            else:
                raise ValueError(f"benchmark '{bench.name}': unknown kind '{bench.kind}'")
            row["graded_correct"] = bool(row["correct"])
            if row["truncated"] and getattr(ev, "truncated_as_wrong", False):
                row["correct"] = False
                row["method"] = f"{row['method']} (cut at max_tokens: counted wrong)"
            per.append(bool(row["correct"]))
            rows.append(row)
        verdicts.append(per)
    if bar is not None:
        bar.close()
    return rows, verdicts


def code_limits(ev) -> Limits:
    """Limits of one program run on one test: ``code_timeout_s`` CPU seconds, and wall clock with 1 s more
    for the interpreter start."""
    return Limits(cpu_s=ev.code_timeout_s, wall_s=ev.code_timeout_s + 1.0, memory_mb=ev.code_memory_mb)


def summarize_benchmark(bench: Benchmark, problems: Sequence[Problem], verdicts: Sequence[Sequence[bool]],
                        rows: Sequence[dict], ev, protocol: Optional[dict] = None) -> dict:
    """The benchmark's entry in ``results.json`` (scores in percent)."""
    n_samples = min(len(v) for v in verdicts) if verdicts else 0
    ks = sorted(set((1,) + tuple(ev.pass_k)))
    passes = per_problem_pass(verdicts, ks) if verdicts else {}
    p1 = passes.get(1, [])
    out = {"benchmark": bench.name, "kind": bench.kind, **score_summary(p1, resamples=ev.bootstrap, seed=ev.seed),
           "n_samples": n_samples}
    out["pass@k"] = {str(k): round(100 * sum(v) / len(v), 2) for k, v in passes.items() if v}
    skipped_k = [k for k in ks if k not in passes]
    if skipped_k:
        out["pass@k_skipped"] = f"k={skipped_k} exceeds the {n_samples} samples per problem"
    fields = [bench.breakdown] if bench.breakdown else []
    if bench.name == "math500":
        fields.append("level")
    out["breakdown"] = {f: breakdown(p1, [p.meta.get(f) for p in problems], resamples=ev.bootstrap, seed=ev.seed)
                        for f in fields}
    out["protocol"] = protocol if protocol is not None else ev.decoding().record()
    out["finish_reasons"] = dict(Counter(r["finish_reason"] for r in rows))
    out["truncated"] = sum(1 for r in rows if r.get("truncated"))
    out["truncated_correct"] = sum(1 for r in rows if r.get("truncated") and r.get("graded_correct"))
    out["truncated_as_wrong"] = bool(getattr(ev, "truncated_as_wrong", False))
    out["no_answer"] = sum(1 for r in rows if r.get("extracted") in (None, ""))
    out["grader_methods"] = dict(Counter(str(r.get("method")).split(":")[0] for r in rows))
    toks = [r["completion_tokens"] for r in rows if r.get("completion_tokens")]
    out["mean_completion_tokens"] = round(sum(toks) / len(toks), 1) if toks else None
    if bench.kind == "choice":
        out["extractor"] = ev.choice_extractor
        out["extractors"] = {}
        by_id: dict[str, list[dict]] = {}
        for r in rows:
            by_id.setdefault(r["id"], []).append(r)
        for name in CHOICE_EXTRACTORS:
            vals = []
            for p in problems:
                got = [r["extractors"][name] for r in by_id.get(p.id, []) if "extractors" in r]
                vals.append(sum(got) / len(got) if got else 0.0)
            out["extractors"][name] = score_summary(vals, resamples=0, seed=ev.seed)["score"]
    if bench.kind == "code":
        out["verdicts"] = dict(Counter(r.get("verdict") for r in rows))
        out["test_verdicts"] = dict(Counter(t for r in rows for t in r.get("tests", [])))
        out["tests_source"] = sorted({str(p.meta.get("tests_source")) for p in problems})
    return out


def problem_scores(problems: Sequence[Problem], verdicts: Sequence[Sequence[bool]]) -> dict[str, float]:
    """Per-problem pass@1 (``c/n``) by problem id, for paired comparisons."""
    return {p.id: (sum(v) / len(v) if v else 0.0) for p, v in zip(problems, verdicts)}
