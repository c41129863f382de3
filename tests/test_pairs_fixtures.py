"""CRV artifacts written by the real stages (``run_critique``, ``run_rethink``) on scripted agents.

``write_crv_fixture(run_path)`` runs both stages on eight examples whose agents are scripted so that
every pair rule is exercised; the files under ``run_path`` are the stages' own output, so the pairs
and training tests read exactly what a run writes:

- ``e1`` easy, rewrite kept on attempt 1, incorrect CoT found            -> small, medium, large
- ``h1`` hard, attempts: Verifier NO, re-rated easy, empty               -> medium
- ``m1`` medium, verified (in D_SFT*), incorrect CoT without a box        -> large
- ``m2`` medium, Verifier NO (not in D_SFT*)                             -> nothing
- ``e2`` easy, kept on attempt 2; its "incorrect" CoT reaches the gold answer: kept as the paper does
  (``incorrect_check: none``) -> small, medium, large; not found with ``answer_differs`` -> small
- ``h2`` hard, rewrite kept, incorrect CoT without a boxed answer (reaches 17) -> small, medium, large
- ``e3`` easy, rewrite kept, every incorrect CoT cut at max_tokens (never data) -> small
- ``x1`` the Critic never gives a valid label                            -> nothing
"""

from __future__ import annotations

import re
from pathlib import Path

from cogpo_kit.crv.agents import ROLES
from cogpo_kit.crv.stage import run_critique, run_rethink
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.engines.base import Completion, Request
from cogpo_kit.engines.scripted import ScriptedEngine
from cogpo_kit.params import load_params

EXAMPLES = [
    # id, level, problem, gold, original reasoning
    ("e1", "easy", "Tom has 3 apples and buys 4 more. How many apples does he have?", "7",
     "3 + 4 = 7.\nThe answer is \\boxed{7}."),
    ("h1", "hard", "A train travels 120 km in 2 hours. What is its speed in km/h?", "60",
     "Let v be the speed. Then distance = v * t, so 120 = 2v and by dividing both sides by two, which is valid "
     "because 2 is nonzero, v = 60. Therefore the speed is 60 km/h."),
    ("m1", "medium", "Sara reads 15 pages a day for 4 days. How many pages does she read?", "60",
     "She reads 15 pages each day. Over 4 days that is 15 * 4 = 60 pages."),
    ("m2", "medium", "A box holds 6 eggs. How many eggs are in 5 boxes?", "30",
     "Each box has 6 eggs, 5 boxes have 6 * 5 = 30 eggs."),
    ("e2", "easy", "What is 10 minus 4?", "6", "10 - 4 = 6."),
    ("h2", "hard", "Ann has twice as many coins as Ben, who has 8. How many coins do they have together?", "24",
     "Let b = 8 and a = 2b. Substituting, a = 16, then a + b = 16 + 8 = 24, as the sum of the two quantities."),
    ("e3", "easy", "What is 9 plus 9?", "18", "9 + 9 = 18."),
    ("x1", None, "What is 2 times 3?", "6", "2 * 3 = 6."),
]

REWRITES = {
    # id -> the Rethinker's output per attempt (sample index 0, 1, 2)
    "e1": ["Tom starts with 3 apples. He buys 4 more apples. Adding them: 3 + 4 = 7. So he has 7 apples."],
    "h1": ["Speed is distance over time: 120 / 2 = 60.", "Speed = 120 / 2 = 60.", ""],
    "e2": ["Ten minus four is six.", "We start at 10 and take away 4. Counting down: 9, 8, 7, 6. So 10 - 4 = 6."],
    "h2": ["Ben has 8 coins. Ann has twice as many: 2 * 8 = 16. Together: 16 + 8 = 24."],
    "e3": ["We add 9 and 9. 9 + 9 = 18. So the answer is 18."],
}
VERIFIER_NO = {"Speed is distance over time: 120 / 2 = 60.", "Ten minus four is six.",
               "Each box has 6 eggs, 5 boxes have 6 * 5 = 30 eggs."}
RERATED_EASY = {"Speed = 120 / 2 = 60."}

INCORRECT = {
    # id -> the corrupting Rethinker's output (None: every attempt is cut at max_tokens)
    "e1": "3 * 4 = 12.\nThe answer is \\boxed{12}.",
    "h1": "Speed = 120 * 2 = 240 km/h. \\boxed{240}",
    "m1": "15 + 4 = 19 pages in total.",
    "m2": "6 + 5 = 11 eggs. \\boxed{11}",
    "e2": "10 - 4 is 6 so the result is \\boxed{6}.",
    "h2": "Ann has 8 + 2 = 10 coins, and together with Ben that is 10 + 8 - 1 = 17",
    "e3": None,
    "x1": "2 * 3 = 5.",
}

EXPECTED_PER_GAP = {"small": 4, "medium": 4, "large": 4}
EXPECTED_IDS = {
    "e1|small|r_easy*>r_easy", "e1|medium|r_easy>r~_easy", "e1|large|r_easy*>r~_easy",
    "h1|medium|r_hard>r~_hard",
    "m1|large|r_med>r~_med",
    "e2|small|r_easy*>r_easy", "e2|medium|r_easy>r~_easy", "e2|large|r_easy*>r~_easy",
    "h2|small|r_hard*>r_hard", "h2|medium|r_hard>r~_hard", "h2|large|r_hard*>r~_hard",
    "e3|small|r_easy*>r_easy",
}
EXPECTED_PER_GAP_CHECKED = {"small": 4, "medium": 3, "large": 3}
"""With ``crv.incorrect_check=answer_differs``: e2's incorrect CoT reaches the gold answer and is not used."""

_PROBLEM = re.compile(r"Problem:\n(.*?)\n\n", re.S)
_REASONING = re.compile(r"(?:Correct reasoning process|Reasoning process):\n(.*)$", re.S)


def _example_of(req: Request, problems: dict[str, tuple]) -> tuple:
    m = _PROBLEM.search(req.messages[-1]["content"])
    assert m, f"no problem in the {req.tag} prompt"
    return problems[m.group(1).strip()]


def _responder(problems: dict[str, tuple]):
    def respond(req: Request, i: int):
        sid, level, _problem, _gold, original = _example_of(req, problems)
        base = sid.split("_")[0]
        reasoning = _REASONING.search(req.messages[-1]["content"]).group(1).strip()
        if req.tag == "critic":
            if level is None:
                return "no idea"
            if reasoning == original.strip():
                return level
            return "easy" if reasoning in RERATED_EASY else "medium"
        if req.tag == "verifier":
            return "NO" if reasoning in VERIFIER_NO else "YES"
        if req.tag in ("expand", "simplify"):
            outs = REWRITES[base]
            return outs[min(i, len(outs) - 1)]
        if req.tag == "corrupt":
            text = INCORRECT[base]
            if text is None:
                return Completion(text="Let us go wrong on purpose and", finish_reason="length",
                                  completion_tokens=7)
            return text
        raise AssertionError(f"unexpected tag {req.tag}")
    return respond


def fixture_records(copies: int = 1) -> list[CoTRecord]:
    """The fixture's CoT records; ``copies`` > 1 repeats the examples with new ids and problems."""
    out = []
    for c in range(copies):
        sfx = "" if c == 0 else f"_{c}"
        for sid, _level, problem, gold, reasoning in EXAMPLES:
            text = problem if c == 0 else f"{problem} (copy {c})"
            out.append(CoTRecord(id=sid + sfx, problem=text, answer=gold, reasoning=reasoning, source="fixture",
                                 meta={"copy": c}))
    return out


def write_crv_fixture(run_path: Path, *, copies: int = 1, overrides: tuple[str, ...] = ()) -> Path:
    """Run the critique and rethink stages on the scripted agents into ``run_path``; returns ``run_path``.

    ``copies`` > 1 repeats the examples with new ids; ``overrides`` are extra ``crv.*=...`` settings."""
    run_path = Path(run_path)
    records = fixture_records(copies)
    levels = {e[0]: e for e in EXAMPLES}
    problems = {r.problem: (r.id, *levels[r.id.split("_")[0]][1:]) for r in records}
    params = load_params([], [f"run.output_dir={run_path.parent}", f"run.run_id={run_path.name}",
                              "crv.max_attempts=3", "crv.incorrect_max_attempts=2", *overrides])
    engine = ScriptedEngine(_responder(problems))
    engines = {role: engine for role in ROLES}
    run_critique(params, records=records, engines=engines)
    run_rethink(params, engines=engines)
    return run_path


def test_fixture_shape(tmp_path):
    from cogpo_kit.pairs.inputs import read_crv

    art = read_crv(write_crv_fixture(tmp_path / "run", copies=2))
    assert len(art.records) == 16 and len(art.levels) == 14
    assert set(art.incorrect) == {f"{s}{x}" for s in ("e1", "h1", "m1", "m2", "e2", "h2", "x1") for x in ("", "_1")}
    assert set(art.kept_rewrites) == {f"{s}{x}" for s in ("e1", "e2", "h2", "e3") for x in ("", "_1")}
    assert art.kept_rewrites["e2"]["attempt"] == 2
    assert {r["origin"] for r in art.sft.values()} == {"medium", "easy*", "hard*"}
    assert set(art.sft) == {f"{s}{x}" for s in ("e1", "m1", "e2", "h2", "e3") for x in ("", "_1")}
