"""The benchmark registry: each benchmark is one small :class:`Benchmark` entry.

An entry names its loader (``data/<name>/`` files -> :class:`Problem` list), its prompt template,
its grader kind (``math``, ``choice``, ``code``) and the field its scores are broken down by.
Adding a benchmark is adding one entry to :data:`REGISTRY` (and a loader in
:mod:`benchmark_loaders` if its files have a new shape).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from cogpo_kit.evaluation import benchmark_loaders as L

MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CHOICE_TEMPLATE = ("Answer the following multiple choice question. Think step by step, then finish with a line "
                   "of the form 'The answer is (X)' where X is the letter of your choice.\n\n{question}\n\n{choices}")
CODE_TEMPLATE = "{question}"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem."""

    id: str
    question: str
    gold: Optional[str]
    """Reference answer (a letter for ``choice``; ``None`` for ``code``, which has ``tests``)."""
    kind: str
    choices: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    """Breakdown fields (subject, level, platform, ...) and provenance."""
    prompt: Optional[str] = None
    """A complete prompt shipped with the data (used instead of the template)."""
    tests: tuple = ()
    """Code problems: :class:`~cogpo_kit.evaluation.code_tests.CodeTest` tuple."""
    func_name: Optional[str] = None
    """Code problems with function-call tests: the method to call."""


@dataclass(frozen=True)
class LoadOptions:
    """Options a loader may use."""

    seed: int = 0
    data_dir: Optional[str] = None
    mmlu_subjects: tuple[str, ...] = ()
    mmlu_split: str = "test"
    livecodebench_path: Optional[str] = None


@dataclass(frozen=True)
class Benchmark:
    """A registry entry."""

    name: str
    description: str
    loader: Callable[[Path, LoadOptions], list[dict]]
    kind: str
    template: str
    breakdown: Optional[str] = None
    """``meta`` field the scores are broken down by (``None``: no breakdown)."""
    paper_size: Optional[int] = None
    """Size in the paper's Table 7 (``None``: not in the paper)."""


REGISTRY: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("aime24", "AIME 2024 I+II, 30 integer answers", L.load_aime24, "math", MATH_TEMPLATE, None, 30),
    Benchmark("aime25", "AIME 2025 I+II, 30 integer answers", L.load_aime25, "math", MATH_TEMPLATE),
    Benchmark("amc23", "AMC 12 2023, 40 numeric answers", L.load_amc23, "math", MATH_TEMPLATE),
    Benchmark("math500", "MATH-500 (PRM800K test split), by subject and level", L.load_math500, "math",
              MATH_TEMPLATE, "subject", 500),
    Benchmark("gsm8k", "GSM8K test, 1319 grade-school word problems", L.load_gsm8k, "math", MATH_TEMPLATE, None, 1319),
    Benchmark("olympiadbench", "OlympiadBench math, English, text-only, open-ended (675)", L.load_olympiadbench,
              "math", MATH_TEMPLATE, "subfield", 674),
    Benchmark("minerva_math", "Minerva math (MIT OCW courses, 272)", L.load_minerva, "math", MATH_TEMPLATE, "type"),
    Benchmark("gpqa_diamond", "GPQA Diamond, 198 four-choice questions (choices shuffled with the seed)",
              L.load_gpqa_diamond, "choice", CHOICE_TEMPLATE, "domain", 198),
    Benchmark("mmlu", "MMLU, 57 subjects (eval.mmlu_subjects selects some)", L.load_mmlu, "choice",
              CHOICE_TEMPLATE, "subject", 14042),
    Benchmark("livecodebench", "LiveCodeBench code generation (file in code_generation_lite format, else the "
              "shipped v5 prompts with sample tests parsed from the statements)", L.load_livecodebench, "code",
              CODE_TEMPLATE, "platform"),
]}


def data_dir(options: Optional[LoadOptions] = None) -> Path:
    """``COGPO_DATA_DIR``, ``options.data_dir`` or the project's ``data/`` folder."""
    if options is not None and options.data_dir:
        return Path(options.data_dir)
    env = os.environ.get("COGPO_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def get_benchmark(name: str) -> Benchmark:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown benchmark '{name}' (registered: {', '.join(REGISTRY)})") from None


def list_benchmarks() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered benchmark."""
    return [(b.name, b.description) for b in REGISTRY.values()]


def load_problems(name: str, options: LoadOptions = LoadOptions(), limit: Optional[int] = None) -> list[Problem]:
    """A benchmark's problems; with ``limit``, the first ``limit`` after a shuffle with ``options.seed``
    (the same subset for every model of a run)."""
    bench = get_benchmark(name)
    rows = bench.loader(data_dir(options), options)
    problems = [Problem(kind=bench.kind, **row) for row in rows]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"benchmark '{name}': duplicate problem id '{dup}'")
    if limit is not None and limit < len(problems):
        order = list(range(len(problems)))
        random.Random(f"{options.seed}:{name}").shuffle(order)
        problems = [problems[i] for i in sorted(order[:limit])]
    return problems


def format_choices(choices: tuple[str, ...]) -> str:
    return "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))


def build_prompt(problem: Problem, bench: Benchmark, template: Optional[str] = None) -> str:
    """The user message for a problem: the shipped prompt, or the (overridden) template filled in."""
    if problem.prompt and template is None:
        return problem.prompt
    tpl = template or bench.template
    return tpl.format(question=problem.question, choices=format_choices(problem.choices))


def build_messages(problem: Problem, bench: Benchmark, *, template: Optional[str] = None,
                   system_prompt: Optional[str] = None) -> tuple[dict, ...]:
    """Chat messages (the model's chat template is applied by the engine)."""
    msgs: list[dict] = []
    if system_prompt:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": build_prompt(problem, bench, template)})
    return tuple(msgs)
