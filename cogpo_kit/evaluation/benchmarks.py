"""The benchmark registry: each benchmark is one small :class:`Benchmark` entry.

An entry names its loader (``data/<name>/`` files -> :class:`Problem` list), its prompt template,
its grader kind (``math``, ``choice``, ``code``) and the field its scores are broken down by.
Adding a benchmark is adding one entry to :data:`REGISTRY` (and a loader in
:mod:`benchmark_loaders` if its files have a new shape).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from cogpo_kit.evaluation import benchmark_loaders as L

MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CHOICE_TEMPLATE = ("Answer the following multiple choice question. Think step by step, then give the letter of "
                   "your choice ({letters}) within \\boxed{{}} as your final answer, e.g. \\boxed{{A}}.\n\n"
                   "{question}\n\n{choices}")
"""Multiple choice asks for a boxed letter, as the kit's SFT data (a boxed final answer) and SkyThought's
GPQA prompt do; the ``strict`` extractor still reads "The answer is (X)" too."""
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
    livecodebench_release: Optional[str] = "release_v2"
    olympiadbench_path: Optional[str] = None


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
    Benchmark("olympiadbench", "OlympiadBench math, English, text-only, open-ended (675; the paper's HF split: 674)",
              L.load_olympiadbench, "math", MATH_TEMPLATE, "subfield", 674),
    Benchmark("minerva_math", "Minerva math (MIT OCW courses, 272)", L.load_minerva, "math", MATH_TEMPLATE, "type"),
    Benchmark("gpqa_diamond", "GPQA Diamond, 198 four-choice questions (choices shuffled with the seed)",
              L.load_gpqa_diamond, "choice", CHOICE_TEMPLATE, "domain", 198),
    Benchmark("mmlu", "MMLU, 57 subjects (eval.mmlu_subjects selects some)", L.load_mmlu, "choice",
              CHOICE_TEMPLATE, "subject", 14042),
    Benchmark("livecodebench", "LiveCodeBench code generation: a release's files with public and hidden tests "
              "(eval.livecodebench_path; the paper: release_v2, 511)", L.load_livecodebench, "code",
              CODE_TEMPLATE, "platform", 511),
    Benchmark("livecodebench_public", "LiveCodeBench v5 statements (279), graded only on the sample tests each "
              "statement shows: a public-tests proxy, not the paper's LiveCodeBench", L.load_livecodebench_public,
              "code", CODE_TEMPLATE, "platform"),
]}

KNOWN_SIZE_DEPARTURES: dict[str, tuple[int, str]] = {
    "olympiadbench": (675, "the shipped Qwen2.5-Math file has one problem more than the Hugging Face split "
                           "Hothan/OlympiadBench OE_TO_maths_en_COMP the paper counts (674); see "
                           "data/olympiadbench/SOURCE.md (eval.olympiadbench_path reads that split, eval.exclude drops "
                           "problems by id)"),
}
"""Sizes that differ from the paper's Table 7 for a documented reason: a note, not an error."""


def data_dir(options: Optional[LoadOptions] = None) -> Path:
    """``options.data_dir``, else the kit's data root (:func:`cogpo_kit.data.readers.data_root`)."""
    if options is not None and options.data_dir:
        return Path(options.data_dir)
    from cogpo_kit.data.readers import data_root

    return data_root()


def get_benchmark(name: str) -> Benchmark:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown benchmark '{name}' (registered: {', '.join(REGISTRY)})") from None


def list_benchmarks() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered benchmark."""
    return [(b.name, b.description) for b in REGISTRY.values()]


def load_problems(name: str, options: LoadOptions = LoadOptions(), limit: Optional[int] = None,
                  exclude: Sequence[str] = ()) -> list[Problem]:
    """A benchmark's problems, without the ids in ``exclude`` (each must exist); with ``limit``, the first
    ``limit`` after a shuffle with ``options.seed`` (the same subset for every model of a run)."""
    bench = get_benchmark(name)
    rows = bench.loader(data_dir(options), options)
    problems = [Problem(kind=bench.kind, **row) for row in rows]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"benchmark '{name}': duplicate problem id '{dup}'")
    unknown = sorted(set(exclude) - set(ids))
    if unknown:
        raise ValueError(f"benchmark '{name}': eval.exclude names unknown problem id(s) {unknown}")
    drop = set(exclude)
    problems = [p for p in problems if p.id not in drop]
    return select_subset(problems, name, options.seed, limit)


def select_subset(problems: list[Problem], name: str, seed: int, limit: Optional[int]) -> list[Problem]:
    """The first ``limit`` problems after a shuffle seeded by ``seed`` and the benchmark name, in file order."""
    if limit is not None and limit < len(problems):
        order = list(range(len(problems)))
        random.Random(f"{seed}:{name}").shuffle(order)
        problems = [problems[i] for i in sorted(order[:limit])]
    return problems


def check_paper_size(name: str, n: int) -> Optional[str]:
    """Compare a benchmark's full size with the paper's Table 7: ``None`` when equal, a note for a known,
    documented departure (or a benchmark the paper does not use); raises ``ValueError`` otherwise."""
    bench = get_benchmark(name)
    if bench.paper_size is None:
        return f"{name}: not in the paper's Table 7 ({n} problems)"
    if n == bench.paper_size:
        return None
    known = KNOWN_SIZE_DEPARTURES.get(name)
    if known and known[0] == n:
        return f"{name}: {n} problems, the paper's Table 7 has {bench.paper_size}: {known[1]}"
    raise ValueError(f"eval.expect_sizes=paper: benchmark '{name}' has {n} problems, the paper's Table 7 has "
                     f"{bench.paper_size} (a subset, another file or release?); set eval.expect_sizes: null to run "
                     "it anyway")


def format_choices(choices: tuple[str, ...]) -> str:
    return "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))


def build_prompt(problem: Problem, bench: Benchmark, template: Optional[str] = None) -> str:
    """The user message for a problem: the shipped prompt, or the (overridden) template filled in."""
    if problem.prompt and template is None:
        return problem.prompt
    tpl = template or bench.template
    return tpl.format(question=problem.question, choices=format_choices(problem.choices),
                      letters=letter_list(len(problem.choices) or 4))


def letter_list(n: int) -> str:
    """``A, B, C or D`` for four options."""
    letters = [chr(65 + i) for i in range(n)]
    return ", ".join(letters[:-1]) + f" or {letters[-1]}" if n > 1 else letters[0]


def build_messages(problem: Problem, bench: Benchmark, *, template: Optional[str] = None,
                   system_prompt: Optional[str] = None) -> tuple[dict, ...]:
    """Chat messages (the model's chat template is applied by the engine)."""
    msgs: list[dict] = []
    if system_prompt:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": build_prompt(problem, bench, template)})
    return tuple(msgs)
