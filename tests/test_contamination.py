"""Contamination check: planted overlaps are found and named, clean rows are not."""

from __future__ import annotations

import json

import pytest

from cogpo_kit.evaluation.benchmarks import load_problems
from cogpo_kit.evaluation.contamination import find_overlaps, main, tokens


def test_tokens_normalise_latex_and_case():
    assert tokens("Find $\\dfrac{1}{2}$ of X!") == tokens("find \\frac{1}{2} of x")


def test_planted_overlaps_are_found(tmp_path, capsys):
    m500 = load_problems("math500")
    gsm = load_problems("gsm8k")
    planted = {
        "copy": m500[10].question,                                                   # verbatim
        "edited": m500[20].question.replace("Find", "Determine").upper() + " Show your work.",  # light edits
        "embedded": " ".join(f"warmup{i}" for i in range(150)) + " " + gsm[5].question + " Then rest.",  # quoted
        "short_in_long": " ".join(f"filler{i}" for i in range(60)) + " " + m500[20].question,  # short one, long text
        "clean1": "A farmer has 17 cows and buys 4 more goats; how many legs are on the farm in total now?",
        "clean2": "Prove that the sum of two odd integers is even, using only the definition of parity.",
    }
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"id": k, "problem": q, "answer": "1", "reasoning": "because"}) + "\n"
                         for k, q in planted.items()), encoding="utf-8")
    out = tmp_path / "overlaps.jsonl"
    rc = main([str(f)], bench=["math500", "gsm8k"], out=str(out))
    assert rc == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    found = {(r["train_id"], r["benchmark"], r["bench_id"]) for r in rows}
    assert found == {("copy", "math500", m500[10].id), ("edited", "math500", m500[20].id),
                     ("embedded", "gsm8k", gsm[5].id)}
    emb = next(r for r in rows if r["train_id"] == "embedded")
    assert emb["bench_share"] == 1.0 and emb["train_share"] < 0.5
    assert len(m500[20].question.split()) < 13  # a short problem: found when edited, not inside a long text
    text = capsys.readouterr().out
    assert "math500" in text and "copy" in text


def test_clean_training_set_exits_zero(tmp_path):
    f = tmp_path / "clean.jsonl"
    f.write_text(json.dumps({"id": "a", "problem": "What is the capital of a country that does not exist, Zorblatt?",
                             "answer": "none", "reasoning": "r"}) + "\n")
    assert main([str(f)], bench=["aime24"]) == 0


def test_thresholds_and_bad_input(tmp_path):
    rows = [("t", "1", "one two three four five six seven eight nine ten")]
    bench = [("b", "x", "one two three four five six seven eight nine ten eleven twelve")]
    assert find_overlaps(rows, bench, ngram=5, threshold=0.9)
    assert not find_overlaps([("t", "1", "eleven twelve thirteen fourteen fifteen")], bench, ngram=5)
    with pytest.raises(ValueError):
        find_overlaps(rows, bench, threshold=0)
    assert main(["limo"], bench=["not_a_benchmark"]) == 2
