"""What the evaluate stage (06) will generate: problems x models x samples, and the token budget they may use.

Problems per benchmark: ``eval.limits`` / ``eval.limit`` where set, else the benchmark's size (the paper's Table 7
size where it has one, else counted from its local file). Models: ``eval.models`` plus the ``cogpo_x<f>`` beta-sweep
models with ``include_beta_sweep`` when ``cogpo`` is evaluated. Samples per problem: the decoding protocol's
(``greedy`` 1, ``r1`` 16, or ``n_samples``). Generated tokens are at most samples x ``max_tokens`` (a greedy reasoner
that never stops uses it all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class EvalOutlook:
    """The evaluate stage's generation work."""

    problems: dict[str, Optional[int]]
    """Problems per benchmark (``None``: unknown here)."""
    models: list[str]
    """Models evaluated."""
    samples_per_problem: int
    """Samples per problem and model."""
    max_tokens: int
    """Generation budget of one sample."""
    notes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(n or 0 for n in self.problems.values()) * len(self.models) * self.samples_per_problem

    @property
    def token_budget(self) -> int:
        return self.samples * self.max_tokens

    def to_dict(self) -> dict:
        return {"problems": self.problems, "models": self.models, "samples_per_problem": self.samples_per_problem,
                "max_tokens": self.max_tokens, "samples": self.samples, "generated_tokens_max": self.token_budget,
                "notes": self.notes}


def _full_size(name: str, ev) -> Optional[int]:
    from cogpo_kit.evaluation.benchmarks import LoadOptions, get_benchmark, load_problems

    bench = get_benchmark(name)
    if bench.paper_size is not None and not (name == "mmlu" and ev.mmlu_subjects):
        return bench.paper_size - len(ev.exclude.get(name, ()))
    opts = LoadOptions(seed=ev.seed, data_dir=ev.data_dir, mmlu_subjects=tuple(ev.mmlu_subjects),
                       mmlu_split=ev.mmlu_split, livecodebench_path=ev.livecodebench_path,
                       livecodebench_release=ev.livecodebench_release, olympiadbench_path=ev.olympiadbench_path)
    try:
        return len(load_problems(name, opts, None, exclude=ev.exclude.get(name, ())))
    except Exception:  # not on this machine (a hub-only file): unknown
        return None


def eval_outlook(params) -> EvalOutlook:
    """The evaluate stage's problems, models and token budget for a run's parameters."""
    from cogpo_kit.evaluation.protocol import resolve_decoding

    ev = params.eval
    notes: list[str] = []
    problems: dict[str, Optional[int]] = {}
    for name in ev.benchmarks:
        try:
            full = _full_size(name, ev)
        except KeyError as exc:
            notes.append(f"eval: {exc.args[0]}")
            full = None
        limit = ev.limits.get(name, ev.limit)
        problems[name] = limit if full is None and limit is not None else (
            min(full, limit) if full is not None and limit is not None else full)
        if problems[name] is None:
            notes.append(f"eval: the size of benchmark '{name}' is not known here (its file is not on this machine)")
    models = list(dict.fromkeys(ev.models))  # as cogpo_kit.evaluation.stage.eval_model_names lists them
    if ev.include_beta_sweep and "cogpo" in models:
        models += [f"cogpo_x{f:g}" for f in params.preference.beta_sweep if f"cogpo_x{f:g}" not in models]
    decoding = resolve_decoding(ev.protocol, ev.sampling, ev.n_samples)
    return EvalOutlook(problems=problems, models=models, samples_per_problem=decoding.n_samples,
                       max_tokens=ev.sampling.max_tokens, notes=notes)
