"""CRV artifacts in the exact shape of ``01_critique`` / ``02_rethink``, for the pairs and training tests.

``write_crv_fixture(run_path)`` writes seven examples that exercise every pair rule:

- ``e1`` easy, rewrite kept, incorrect CoT ok               -> small, medium, large
- ``h1`` hard, every rewrite failed, incorrect CoT ok       -> medium
- ``m1`` medium, verified (in D_SFT*), incorrect CoT ok     -> large
- ``m2`` medium, failed verification (not in D_SFT*)        -> nothing
- ``e2`` easy, kept on attempt 2, incorrect CoT reaches gold (CRV said ok) -> small
- ``h2`` hard, rewrite kept, incorrect CoT without a boxed answer (reached 17) -> small, medium, large
- ``e3`` easy, rewrite kept, incorrect CoT not confirmed (ok=false) -> small
- ``x1`` no Critic label (level null)                       -> nothing

Rows come in both shapes the CRV stage may write: rewrites with ``text`` or with ``kind``/``rewrite``
(plus the ``medium`` and ``corrupt`` rows that share ``rewrites.jsonl`` and are not rewrites), incorrect
CoTs with ``text``/``ok`` or with ``reasoning``/``response`` and no ``ok``.
"""

from __future__ import annotations

import json
from pathlib import Path

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

REWRITES = [
    # id, level, attempt, text, outcome
    ("e1", "easy", 1, "Tom starts with 3 apples. He buys 4 more apples. Adding them: 3 + 4 = 7. So he has 7 apples.",
     "kept"),
    ("h1", "hard", 1, "Speed is distance over time.", "verify_failed"),
    ("h1", "hard", 2, "Speed = 120 / 2.", "rerated_easy"),
    ("h1", "hard", 3, "", "verify_failed"),
    ("e2", "easy", 1, "Ten minus four.", "verify_failed"),
    ("e2", "easy", 2, "We start at 10 and take away 4. Counting down: 9, 8, 7, 6. So 10 - 4 = 6.", "kept"),
    ("h2", "hard", 1, "Ben has 8 coins. Ann has twice as many: 2 * 8 = 16. Together: 16 + 8 = 24.", "kept"),
    ("e3", "easy", 1, "We add 9 and 9. 9 + 9 = 18. So the answer is 18.", "kept"),
]

INCORRECT = [
    # id, level, text, reached_answer, ok
    ("e1", "easy", "3 * 4 = 12.\nThe answer is \\boxed{12}.", "12", True),
    ("h1", "hard", "Speed = 120 * 2 = 240 km/h. \\boxed{240}", "240", True),
    ("m1", "medium", "15 + 4 = 19 pages in total. \\boxed{19}", "19", True),
    ("m2", "medium", "6 + 5 = 11 eggs. \\boxed{11}", "11", True),
    ("e2", "easy", "10 - 4 is 6 so the result is \\boxed{6}.", "6", True),
    ("h2", "hard", "Ann has 8 + 2 = 10 coins, and together with Ben that is 10 + 8 - 1 = 17", "17", True),
    ("e3", "easy", "9 + 9 = 18, written as 19.", "19", False),
]

EXPECTED_PER_GAP = {"small": 4, "medium": 3, "large": 3}
EXPECTED_IDS = {
    "e1|small|r_easy*>r_easy", "e1|medium|r_easy>r~_easy", "e1|large|r_easy*>r~_easy",
    "h1|medium|r_hard>r~_hard",
    "m1|large|r_med>r~_med",
    "e2|small|r_easy*>r_easy",
    "h2|small|r_hard*>r_hard", "h2|medium|r_hard>r~_hard", "h2|large|r_hard*>r~_hard",
    "e3|small|r_easy*>r_easy",
}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_crv_fixture(run_path: Path, *, copies: int = 1) -> Path:
    """Write the five CRV files under ``run_path``; ``copies`` > 1 repeats the examples with new ids."""
    inputs, crits, sft, rewrites, incorrect = [], [], [], [], []
    kept = {r[0]: r for r in REWRITES if r[4] == "kept"}
    for c in range(copies):
        sfx = "" if c == 0 else f"_{c}"
        for sid, level, problem, gold, reasoning in EXAMPLES:
            rid = sid + sfx
            inputs.append({"id": rid, "problem": problem, "answer": gold, "reasoning": reasoning,
                           "source": "fixture", "meta": {"copy": c}})
            crits.append({"id": rid, "level": level, "votes": [level, level], "raw": ["x", "y"], "extra": 1})
            if level == "medium" and sid == "m1":
                sft.append({"id": rid, "problem": problem, "answer": gold, "reasoning": reasoning,
                            "response": reasoning + f"\n\nThe final answer is $\\boxed{{{gold}}}$.",
                            "origin": "medium", "attempt": 0})
            if sid in kept:
                text = kept[sid][3]
                sft.append({"id": rid, "problem": problem, "answer": gold, "reasoning": text,
                            "response": text + f"\n\nThe final answer is $\\boxed{{{gold}}}$.",
                            "origin": f"{level}*", "attempt": kept[sid][2]})
        for sid, level, attempt, text, outcome in REWRITES:
            if sid in ("e1", "h2"):  # the CRV stage's own shape
                rewrites.append({"id": sid + sfx, "kind": "expand" if level == "easy" else "simplify",
                                 "attempt": attempt, "raw": text, "rewrite": text, "outcome": outcome,
                                 "rerating": {"level": "medium"}})
            else:
                rewrites.append({"id": sid + sfx, "level": level, "attempt": attempt, "text": text,
                                 "verdict": "YES", "rerating": "medium", "outcome": outcome})
        for sid in ("m1", "m2"):
            rewrites.append({"id": sid + sfx, "kind": "medium", "attempt": 0,
                             "outcome": "kept" if sid == "m1" else "verifier_no"})
        for sid, level, text, reached, ok in INCORRECT:
            rewrites.append({"id": sid + sfx, "kind": "corrupt", "attempt": 1, "raw": text, "rewrite": text,
                             "reached_answer": reached, "outcome": "kept"})
            if sid in ("m1", "h2"):  # the CRV stage's own shape
                incorrect.append({"id": sid + sfx, "problem": "p", "answer": "a", "reasoning": text,
                                  "reached_answer": reached, "response": text, "attempt": 1, "level": level})
            else:
                incorrect.append({"id": sid + sfx, "level": level, "text": text, "reached_answer": reached,
                                  "ok": ok})
    _write(run_path / "01_critique" / "input.jsonl", inputs)
    _write(run_path / "01_critique" / "critiques.jsonl", crits)
    _write(run_path / "02_rethink" / "sft.jsonl", sft)
    _write(run_path / "02_rethink" / "rewrites.jsonl", rewrites)
    _write(run_path / "02_rethink" / "incorrect.jsonl", incorrect)
    return run_path


def test_fixture_shape(tmp_path):
    from cogpo_kit.pairs.inputs import read_crv

    art = read_crv(write_crv_fixture(tmp_path, copies=2))
    assert len(art.records) == 16 and len(art.incorrect) == 14 and len(art.levels) == 14
    assert set(art.kept_rewrites) >= {"e1", "e2", "h2", "e3", "e1_1"} and "h1" not in art.kept_rewrites
    assert art.kept_rewrites["e2"]["attempt"] == 2
    assert {r["origin"] for r in art.sft.values()} == {"medium", "easy*", "hard*"}
