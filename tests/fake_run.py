"""A small, complete fake run folder (every stage's artifacts and manifest) for display tests.

The rows follow the artifact fields of :mod:`cogpo_kit.viz.artifacts`; manifests are written by
the real :func:`cogpo_kit.pipeline.stage.open_stage` so freshness checks see real ones.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import yaml

from cogpo_kit.io import atomic_write_json, atomic_write_jsonl
from cogpo_kit.params import load_params, params_dict
from cogpo_kit.pipeline.freshness import stage_params
from cogpo_kit.pipeline.stage import STAGES, open_stage, run_dir

WORDS = ("first we add the two numbers then multiply by three so the total is clearly the answer because "
         "each step follows from the previous one and we check it").split()


def _text(rng: random.Random, n: int, answer: str) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f". The answer is {answer}."


def write_params(root: Path, run_id: str = "fake", *, sweep: Sequence[float] = (0.5, 2.0)) -> Path:
    """A YAML parameter file for a fake run under ``root``."""
    data = {
        "run": {"run_id": run_id, "output_dir": str(root / "outputs"), "description": "fake run for tests"},
        "student": {"model": "tiny:llama"},
        "preference": {"beta_sweep": list(sweep)},
        "eval": {"benchmarks": ["gsm8k", "math500"], "limit": 4},
        "report": {"png": False},
    }
    path = root / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def make_fake_run(root: Path, run_id: str = "fake", *, levels: Sequence[str | None] | None = None,
                  stages: Sequence[str] = STAGES[:-1], sweep: Sequence[float] = (0.5, 2.0), seed: int = 0) -> Path:
    """Write ``<root>/outputs/<run_id>/`` with the artifacts of ``stages``; return the params file."""
    rng = random.Random(seed)
    yaml_path = write_params(root, run_id, sweep=sweep)
    params = load_params([yaml_path])
    tree = params_dict(params)
    run = run_dir(params)
    levels = list(levels if levels is not None else
                  ["easy"] * 6 + ["medium"] * 2 + ["hard"] * 3 + ["easy", None])
    ids = [f"ex{i:03d}" for i in range(len(levels))]
    answers = {i: str(10 + k) for k, i in enumerate(ids)}
    inputs = [{"id": i, "problem": f"What is {k} plus {k + 10}? <b>bold</b>", "answer": answers[i],
               "reasoning": _text(rng, 30, answers[i]), "source": "fake", "meta": {}} for k, i in enumerate(ids)]

    def stage(name, rows_by_file, counts, notes=(), **extra):
        st = open_stage(run, name, stage_params(tree, name))
        for fname, rows in rows_by_file.items():
            atomic_write_jsonl(st.file(fname), rows)
        st.counts.update(counts)
        st.agents.update({"critic": {"calls": 10, "cache_hits": 2, "prompt_tokens": 900, "completion_tokens": 30}})
        for n in notes:
            st.note(n)
        return st.finish(**extra)

    if "01_critique" in stages:
        crits = []
        for i, lvl in zip(ids, levels):
            other = "hard" if lvl != "hard" else "easy"
            votes = ([lvl, lvl] if rng.random() < 0.6 else [lvl, other, lvl]) if lvl else ["easy", "hard", "medium"]
            crits.append({"id": i, "votes": votes, "raw": votes, "level": lvl, "reasks": int(lvl is None),
                          "reason": None if lvl else "no_majority"})
        unlabeled = levels.count(None)
        stage("01_critique", {"input.jsonl": inputs, "critiques.jsonl": crits},
              {"records": len(ids), **{lvl: levels.count(lvl) for lvl in ("easy", "medium", "hard")}},
              notes=[f"{unlabeled} of {len(ids)} CoTs got no Critic label (no majority)."] if unlabeled else [])

    # The rethink stage's rows: every attempt in rewrites.jsonl (kind medium / expand / simplify / corrupt),
    # the incorrect CoT found per example in incorrect.jsonl, D_SFT* in sft.jsonl.
    rewrites, incorrect, sft, discards = [], [], [], {}
    for (i, lvl), row in zip(zip(ids, levels), inputs):
        if lvl is None:
            discards["critic_no_majority"] = discards.get("critic_no_majority", 0) + 1
        elif lvl == "medium":
            rewrites.append({"id": i, "kind": "medium", "attempt": 0, "outcome": "kept",
                             "verification": {"verdict": "YES", "mode": "judge", "raw": ["YES"]}})
            sft.append({"id": i, "problem": row["problem"], "answer": row["answer"], "reasoning": row["reasoning"],
                        "response": row["reasoning"], "origin": "medium", "attempt": 0, "level": lvl})
        else:
            attempts = rng.randint(1, 3)
            for a in range(1, attempts + 1):
                words = row["reasoning"].split()
                words.insert(rng.randrange(len(words)), "carefully")
                if lvl == "hard":
                    del words[rng.randrange(len(words))]
                passed = a == attempts and rng.random() < 0.7
                text = " ".join(words)
                rewrites.append({"id": i, "kind": "expand" if lvl == "easy" else "simplify", "attempt": a,
                                 "raw": text, "rewrite": text, "reached_answer": row["answer"],
                                 "verification": {"verdict": "YES" if passed else "NO", "mode": "judge"},
                                 **({"rerating": {"level": "medium", "votes": ["medium", "medium"]}} if passed else {}),
                                 "outcome": "kept" if passed else "verifier_no"})
                if passed:
                    sft.append({"id": i, "problem": row["problem"], "answer": row["answer"], "reasoning": text,
                                "response": text, "origin": lvl + "*", "attempt": a, "level": lvl})
            if not any(r["id"] == i and r["outcome"] == "kept" for r in rewrites):
                discards["max_attempts"] = discards.get("max_attempts", 0) + 1
        wrong = str(int(row["answer"]) + 1)
        gold_again = row["reasoning"]
        rewrites.append({"id": i, "kind": "corrupt", "attempt": 1, "rewrite": gold_again,
                         "reached_answer": row["answer"], "outcome": "reaches_gold"})
        text = row["reasoning"].replace(row["answer"], wrong)
        rewrites.append({"id": i, "kind": "corrupt", "attempt": 2, "rewrite": text, "reached_answer": wrong,
                         "outcome": "kept"})
        incorrect.append({"id": i, "problem": row["problem"], "answer": row["answer"], "reasoning": text,
                          "reached_answer": wrong, "response": text, "attempt": 2, "level": lvl})
    funnel = {"examples": len(ids), "levels": {k: levels.count(k) for k in ("easy", "medium", "hard")} | {
              "none": levels.count(None)},
              "sft": {"total": len(sft), **{k: sum(1 for r in sft if r["origin"] == k) for k in ("medium", "easy*", "hard*")}},
              "discards": discards, "incorrect": {"found": len(incorrect)}}
    if "02_rethink" in stages:
        stage("02_rethink", {"rewrites.jsonl": rewrites, "incorrect.jsonl": incorrect, "sft.jsonl": sft},
              {"records": len(ids), "sft": len(sft), "incorrect": len(incorrect)}, funnel=funnel)

    pairs = []
    by_id = {r["id"]: r for r in inputs}
    for k, s in enumerate(sft):
        orig = by_id[s["id"]]
        wrong = next(r for r in incorrect if r["id"] == s["id"])
        prompt = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": orig["problem"]}]
        if s["origin"] == "medium":
            pairs.append((prompt, s["response"], wrong["reasoning"], "large", 0.5, "medium", "incorrect", s["id"]))
        else:
            pairs.append((prompt, s["response"], orig["reasoning"], "small", 0.1, s["origin"], "original", s["id"]))
            pairs.append((prompt, orig["reasoning"], wrong["reasoning"], "medium", 0.2, "original", "incorrect", s["id"]))
            pairs.append((prompt, s["response"], wrong["reasoning"], "large", 0.5, s["origin"], "incorrect", s["id"]))
    pair_rows = [{"id": f"p{k:03d}", "prompt": p, "chosen": c, "rejected": r,
                  "gap": g, "beta": b, "chosen_kind": ck, "rejected_kind": rk, "source_id": sid}
                 for k, (p, c, r, g, b, ck, rk, sid) in enumerate(pairs)]
    if "03_pairs" in stages:
        gaps = {g: sum(1 for p in pair_rows if p["gap"] == g) for g in ("small", "medium", "large")}
        stage("03_pairs", {"pairs.jsonl": pair_rows}, {"pairs": len(pair_rows), **gaps})

    if "04_sft" in stages:
        st = open_stage(run, "04_sft", stage_params(tree, "04_sft"))
        for variant in ("crv_sft", "sft"):
            atomic_write_jsonl(st.path / variant / "metrics.jsonl",
                               [{"step": s, "loss": 2.0 / s + rng.random() * 0.1, "epoch": s / 4} for s in range(1, 9)]
                               + [{"step": 8, "train_loss": 1.1, "train_runtime": 12.0}])
        st.counts.update({"crv_sft": len(sft), "sft": len(ids)})
        st.finish()

    methods = ["cogpo", "dpo", "beta_dpo", "simpo"] + [f"cogpo_x{f:g}" for f in sweep]
    if "05_preference" in stages:
        st = open_stage(run, "05_preference", stage_params(tree, "05_preference"))
        for m in methods:
            rows = []
            for s in range(1, 7):
                row = {"step": s, "loss": 0.69 - 0.03 * s + rng.random() * 0.01, "rewards/margins": 0.02 * s}
                if m.startswith("cogpo"):
                    row.update({f"{g}_gap/rewards/margins": 0.01 * s * (k + 1) for k, g in enumerate(("small", "medium", "large"))})
                rows.append(row)
            atomic_write_jsonl(st.path / m / "metrics.jsonl", rows)
        st.note("no medium CoTs with a verified rewrite: few large-gap pairs")
        st.finish()

    models = ["zero_shot", "sft", "crv_sft", "cogpo", "dpo", "beta_dpo", "simpo"] + [f"cogpo_x{f:g}" for f in sweep]
    if "06_evaluate" in stages:
        st = open_stage(run, "06_evaluate", stage_params(tree, "06_evaluate"))
        comparison = []
        for m in models:
            results = {"model": m, "benchmarks": {}}
            for bench in ("gsm8k", "math500"):
                samples = []
                for q in range(4):
                    gold = str(q + 1)
                    ok = rng.random() < 0.5
                    out = f"Thinking <i>hard</i>... The answer is \\boxed{{{gold if ok else q + 7}}}"
                    samples.append({"id": f"{bench}-{q}", "prompt": f"Compute {q} + 1 & report.", "output": out,
                                    "extracted": gold if ok else str(q + 7), "gold": gold, "correct": ok})
                atomic_write_jsonl(st.path / m / f"samples_{bench}.jsonl", samples)
                acc = 100.0 * sum(s["correct"] for s in samples) / len(samples)
                metrics = {"score": acc, "ci_low": max(0.0, acc - 25), "ci_high": min(100.0, acc + 25), "n": len(samples)}
                results["benchmarks"][bench] = metrics
                scale = {"beta_scale": float(m[len("cogpo_x"):])} if m.startswith("cogpo_x") else {}
                comparison.append({"model": m, "benchmark": bench, **metrics, **scale})
            atomic_write_json(st.path / m / "results.json", results)
        atomic_write_json(st.path / "comparison.json", {"rows": comparison, "paired": []})
        st.counts.update({"models": len(models)})
        st.finish()
    return yaml_path
