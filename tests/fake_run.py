"""A small, complete fake run folder (every stage's artifacts and manifest) for display tests.

Every artifact is written by the kit's own writers: the critique and rethink stages run on scripted
agents (:class:`~cogpo_kit.engines.scripted.ScriptedEngine`, as in ``test_pairs_fixtures``), the
pairs stage runs as it is, and the evaluation stage generates with a scripted engine and grades for
real. Training is the one stage that does not run (too slow for display tests): its stages are
opened for real and each model's ``metrics.jsonl`` is written through
:meth:`~cogpo_kit.pipeline.stage.Stage.write` with rows shaped as the trainer's log history, the
preference rows' reward keys made by :func:`cogpo_kit.training.metrics.record_pair_metrics`.

The default run: 13 CoTs rated easy (7), medium (2), hard (3) and one the Critic gives no label;
each easy or hard CoT is rewritten until the Verifier says YES at a planned attempt (or never, up to
``crv.max_attempts``); every example's first incorrect CoT still reaches the gold answer and its
second one is kept.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import yaml

from cogpo_kit.crv.agents import ROLES
from cogpo_kit.crv.stage import run_critique, run_rethink
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.engines.base import Request
from cogpo_kit.engines.scripted import ScriptedEngine
from cogpo_kit.params import load_params, params_dict
from cogpo_kit.pipeline.freshness import stage_params
from cogpo_kit.pipeline.stage import open_stage, run_dir
from cogpo_kit.pipeline.stages import stage_spec
from test_pairs_fixtures import _PROBLEM, _REASONING

BEFORE_REPORT = stage_spec("report").upstream
"""Every stage the report reads: the stages a fake run has by default."""

WORDS = ("first we add the two numbers then multiply by three so the total is clearly the answer because "
         "each step follows from the previous one and we check it").split()
LEVELS = ["easy"] * 6 + ["medium"] * 2 + ["hard"] * 3 + ["easy", None]
VOTES = ("easy", "medium", "hard")


def _text(rng: random.Random, n: int, answer: str) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f". The answer is {answer}."


def write_params(root: Path, run_id: str = "fake", *, sweep: Sequence[float] = (0.5, 2.0)) -> Path:
    """A YAML parameter file for a fake run under ``root``."""
    data = {
        "run": {"run_id": run_id, "output_dir": str(root / "outputs"), "description": "fake run for tests"},
        "student": {"model": "tiny:llama"},
        "crv": {"max_attempts": 3, "incorrect_max_attempts": 2, "incorrect_check": "answer_differs"},
        "preference": {"beta_sweep": list(sweep)},
        "eval": {"benchmarks": ["gsm8k", "math500"], "limit": 4, "bootstrap": 200, "grader_workers": 1},
        "report": {"png": False},
    }
    path = root / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class _Script:
    """What each scripted agent answers, planned per example."""

    def __init__(self, records: list[CoTRecord], levels: Sequence[str | None], rng: random.Random, max_attempts: int):
        self.by_problem = {r.problem: (r, lvl) for r, lvl in zip(records, levels)}
        self.split_vote: set[str] = set()
        self.rewrites: dict[str, list[str]] = {}
        self.passing: set[str] = set()
        for k, (rec, lvl) in enumerate(zip(records, levels)):
            if lvl is not None and rng.random() < 0.4:
                self.split_vote.add(rec.id)  # the Critic's second vote disagrees: a third one decides
            if lvl not in ("easy", "hard"):
                continue
            texts = []
            for _ in range(max_attempts):
                words = rec.reasoning.split()
                words.insert(rng.randrange(len(words)), "carefully")
                if lvl == "hard":
                    del words[rng.randrange(len(words))]
                texts.append(" ".join(words))
            self.rewrites[rec.id] = texts
            passes_at = None if k == 8 else rng.choice([1, 2, 3, None])  # the first hard CoT never passes
            if passes_at is not None:
                self.passing.add(texts[passes_at - 1])

    def __call__(self, req: Request, i: int) -> str:
        content = req.messages[-1]["content"]
        rec, level = self.by_problem[_PROBLEM.search(content).group(1).strip()]
        reasoning = _REASONING.search(content).group(1).strip()
        if req.tag == "critic":
            if reasoning != rec.reasoning:
                return "medium"  # a re-rated rewrite
            if level is None:
                return VOTES[i % 3]  # three different votes: no majority
            return VOTES[(VOTES.index(level) + 1) % 3] if i == 1 and rec.id in self.split_vote else level
        if req.tag == "verifier":
            return "YES" if reasoning == rec.reasoning or reasoning in self.passing else "NO"
        if req.tag in ("expand", "simplify"):
            return self.rewrites[rec.id][i]
        if req.tag == "corrupt":  # the first one still reaches the gold answer, the second one does not
            return rec.reasoning if i == 0 else rec.reasoning.replace(rec.answer, str(int(rec.answer) + 1))
        raise AssertionError(f"unexpected tag {req.tag}")


def _crv(params, records: list[CoTRecord], levels, rng: random.Random, stages: set[str]) -> None:
    engine = ScriptedEngine(_Script(records, levels, rng, params.crv.max_attempts))
    engines = {role: engine for role in ROLES}
    if "critique" in stages:
        run_critique(params, records=records, engines=engines)
    if "rethink" in stages:
        run_rethink(params, engines=engines)


def _log_history(rng: random.Random, steps: int, margins: bool) -> list[dict]:
    """Rows shaped as the trainer's log history: one per step, then the run's summary."""
    import torch

    from cogpo_kit.training.metrics import gap_ids, record_pair_metrics

    rows = []
    for s in range(1, steps + 1):
        row = {"loss": round(2.0 / s + rng.random() * 0.1, 4), "grad_norm": 1.0, "learning_rate": 1e-4,
               "epoch": s / 4, "step": s}
        if margins:
            store: dict = defaultdict(list)
            gaps = ["small", "medium", "large"] * 2
            chosen = torch.tensor([0.01 * s * (1 + k % 3) for k in range(len(gaps))])
            record_pair_metrics(store, lambda t: t, chosen_rewards=chosen, rejected_rewards=torch.zeros(len(gaps)),
                                losses=torch.full((len(gaps),), 0.69 - 0.03 * s), gap=gap_ids(gaps))
            row.update({k: round(sum(v) / len(v), 6) for k, v in store.items()})
        rows.append(row)
    rows.append({"train_runtime": 12.0, "train_samples_per_second": 2.0, "train_loss": 1.1, "epoch": steps / 4,
                 "step": steps})
    return rows


def _training(params, tree: dict, rng: random.Random, stages: set[str], sweep: Sequence[float]) -> None:
    run = run_dir(params)
    if "sft" in stages:
        st = open_stage(run, "sft", stage_params(tree, "sft"))
        for variant in params.sft.variants:
            st.artifact("sft_model", variant=variant).mkdir(parents=True, exist_ok=True)
            st.write("sft_metrics", _log_history(rng, 8, margins=False), variant=variant)
        st.finish()
    if "preference" in stages:
        st = open_stage(run, "preference", stage_params(tree, "preference"))
        for method in [*params.preference.methods, *(f"cogpo_x{f:g}" for f in sweep)]:
            st.artifact("preference_model", method=method).mkdir(parents=True, exist_ok=True)
            st.write("preference_metrics", _log_history(rng, 6, margins=True), method=method)
        st.finish()


def _evaluate(params, seed: int) -> None:
    from cogpo_kit.evaluation.benchmarks import build_messages, get_benchmark
    from cogpo_kit.evaluation.stage import load_eval_problems, run_evaluate

    ev = params.eval
    gold = {build_messages(p, get_benchmark(name), template=ev.templates.get(name),
                           system_prompt=ev.system_prompt)[-1]["content"]: p.gold
            for name, probs in load_eval_problems(ev).items() for p in probs}

    def engine(spec: str) -> ScriptedEngine:
        # seeded by the model's name, not its path (a new tmp folder each run): the same answers every run
        rng = random.Random(f"{seed}:{Path(spec).parent.name or spec}")

        def answer(req: Request, i: int) -> str:
            right = gold[req.messages[-1]["content"]]
            got = right if rng.random() < 0.5 else str(int(rng.random() * 90) + 100)
            return f"Thinking <i>hard</i>... The answer is \\boxed{{{got}}}"
        return ScriptedEngine(answer, model_id=f"scripted:{Path(spec).name}")

    run_evaluate(params, engine_factory=engine, show_progress=False)


def make_fake_run(root: Path, run_id: str = "fake", *, levels: Sequence[str | None] | None = None,
                  stages: Sequence[str] = BEFORE_REPORT, sweep: Sequence[float] = (0.5, 2.0), seed: int = 0) -> Path:
    """Write ``<root>/outputs/<run_id>/`` with the artifacts of ``stages`` (names or folders); return the
    params file."""
    rng = random.Random(seed)
    yaml_path = write_params(root, run_id, sweep=sweep)
    params = load_params([yaml_path])
    tree = params_dict(params)
    stages = {stage_spec(s).name for s in stages}
    levels = list(levels if levels is not None else LEVELS)
    records = [CoTRecord(id=f"ex{k:03d}", problem=f"What is {k} plus {k + 10}? <b>bold</b>", answer=str(10 + k),
                         reasoning=_text(rng, 30, str(10 + k)), source="fake") for k in range(len(levels))]
    _crv(params, records, levels, rng, stages)
    if "pairs" in stages:
        from cogpo_kit.pairs.stage import run_pairs

        run_pairs(params)
    _training(params, tree, rng, stages, sweep)
    if "evaluate" in stages:
        _evaluate(params, seed)
    return yaml_path

