"""The pair builder and the 03_pairs stage on the CRV fixture."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cogpo_kit.io import DataError, read_jsonl
from cogpo_kit.pairs.build import build_pairs
from cogpo_kit.pairs.config import PairsConfig
from cogpo_kit.pairs.format import extract_answer, format_response, last_boxed, same_answer
from cogpo_kit.pairs.inputs import read_crv
from cogpo_kit.pairs.schema import load_pairs
from cogpo_kit.params import load_params
from test_pairs_fixtures import EXAMPLES, EXPECTED_IDS, EXPECTED_PER_GAP, write_crv_fixture

GOLD = {e[0]: e[3] for e in EXAMPLES}



def _pairs(tmp_path, **cfg):
    art = read_crv(write_crv_fixture(tmp_path))
    return build_pairs(art, PairsConfig(**cfg))


def test_expected_pairs_per_gap(tmp_path):
    pairs, report = _pairs(tmp_path)
    assert Counter(p["gap"] for p in pairs) == EXPECTED_PER_GAP
    assert {p["id"] for p in pairs} == EXPECTED_IDS
    assert report["pairs_per_gap"] == EXPECTED_PER_GAP
    assert report["skipped"]["incorrect CoT reaches the gold answer"] == 1  # e2, although CRV said ok
    assert report["skipped"]["incorrect CoT not confirmed incorrect (ok=false)"] == 1  # e3
    assert report["skipped"]["medium CoT not in D_SFT* (not verified)"] == 1  # m2
    assert report["skipped"]["hard CoT has no kept rewrite"] == 1  # h1
    assert report["skipped"]["no Critic level"] == 1  # x1
    assert {p["gap"]: p["beta"] for p in pairs} == {"small": 0.1, "medium": 0.2, "large": 0.5}


def test_incorrect_cot_never_ends_with_gold(tmp_path):
    pairs, _ = _pairs(tmp_path)
    for p in pairs:
        gold = GOLD[p["source_id"]]
        assert p["prompt"][-1]["role"] == "user" and "\\boxed{}" in p["prompt"][-1]["content"]
        assert same_answer(extract_answer(p["chosen"]), gold), p["id"]
        if p["rejected_kind"].startswith("r~"):
            reached = extract_answer(p["rejected"])
            assert reached is not None and not same_answer(reached, gold), p["id"]
            assert f"\\boxed{{{gold}}}" not in p["rejected"]
            assert p["rejected_answer"] == reached
        else:
            assert same_answer(extract_answer(p["rejected"]), gold)
    h2 = next(p for p in pairs if p["id"] == "h2|medium|r_hard>r~_hard")
    assert last_boxed(h2["rejected"]) == "17" and h2["rejected"].startswith("Ann has 8 + 2 = 10 coins")
    e1 = next(p for p in pairs if p["id"] == "e1|small|r_easy*>r_easy")
    assert e1["chosen"].startswith("Tom starts with 3 apples") and e1["rejected"].startswith("3 + 4 = 7")
    assert e1["rejected"].count("\\boxed") == 1  # the original already boxes its answer: nothing appended


def test_gap_selection_and_betas(tmp_path):
    pairs, report = _pairs(tmp_path, gaps=("large",), beta_large=0.7)
    assert {p["gap"] for p in pairs} == {"large"} and len(pairs) == 3
    assert all(p["beta"] == 0.7 for p in pairs)


def test_format_response():
    assert format_response("2 + 2 = 4.", "4").endswith("$\\boxed{4}$.")
    assert format_response("so \\boxed{5}", "4") == "so \\boxed{5}"  # its own boxed answer wins
    assert format_response("no answer reached", None) == "no answer reached"
    once = format_response("x = 3", "3")
    assert format_response(once, "3") == once
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"


def test_missing_field_names_file_line_field(tmp_path):
    run = write_crv_fixture(tmp_path)
    p = run / "01_critique" / "input.jsonl"
    rows = read_jsonl(p)
    del rows[2]["reasoning"]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as exc:
        read_crv(run)
    assert exc.value.line == 3 and exc.value.field == "reasoning" and "input.jsonl" in str(exc.value)


def test_bad_level_and_unknown_id(tmp_path):
    run = write_crv_fixture(tmp_path)
    p = run / "01_critique" / "critiques.jsonl"
    p.write_text(p.read_text().replace('"level": "hard"', '"level": "HARDER"', 1))
    with pytest.raises(DataError, match="level must be one of") as exc:
        read_crv(run)
    assert exc.value.field == "level"
    run2 = write_crv_fixture(tmp_path / "b")
    with open(run2 / "02_rethink" / "incorrect.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "zz", "text": "t", "reached_answer": "1", "ok": True}) + "\n")
    with pytest.raises(DataError, match="not in input.jsonl"):
        read_crv(run2)


def _params(tmp_path, *more):
    return load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r", "sft.model=tiny:llama", *more])


def test_stage_writes_valid_pairs_and_stats(tmp_path):
    from cogpo_kit.pairs.stage import run_pairs

    params = _params(tmp_path)
    write_crv_fixture(tmp_path / "r")
    m = run_pairs(params)
    pairs = load_pairs(tmp_path / "r" / "03_pairs" / "pairs.jsonl")
    assert len(pairs) == 10 and m["counts"]["pairs"] == 10
    assert m["pairs"]["pairs_per_gap"] == EXPECTED_PER_GAP
    assert m["lengths"]["chosen_tokens"]["n"] == 10 and m["lengths"]["overlength_pairs"] == 0
    assert all(p["chosen_tokens"] > p["prompt_tokens"] > 0 for p in pairs)
    assert len(m["inputs"]) == 5


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_overlength_policy_is_reported(tmp_path, policy):
    from cogpo_kit.pairs.stage import run_pairs

    params = _params(tmp_path, "pairs.max_length=88", f"pairs.overlength={policy}")
    write_crv_fixture(tmp_path / "r")
    m = run_pairs(params)
    pairs = load_pairs(tmp_path / "r" / "03_pairs" / "pairs.jsonl")
    over = m["lengths"]["overlength_pairs"]
    assert over > 0 and any("longer than 88 tokens" in n for n in m["notes"])
    assert all(p["chosen_tokens"] <= 88 and p["rejected_tokens"] <= 88 for p in pairs)
    if policy == "drop":
        assert m["lengths"]["dropped"] == over and len(pairs) == 10 - over
    else:
        assert m["lengths"]["truncated"] + m["lengths"]["dropped"] == over and m["lengths"]["truncated"] > 0
        cut = [p for p in pairs if p.get("truncated")]
        assert len(cut) == m["lengths"]["truncated"] and all(p["original_chosen_tokens"] for p in cut)


def test_empty_inputs_give_zero_pairs_with_a_note(tmp_path):
    from cogpo_kit.pairs.stage import run_pairs

    run = tmp_path / "r"
    for f in ("01_critique/input.jsonl", "01_critique/critiques.jsonl", "02_rethink/sft.jsonl",
              "02_rethink/rewrites.jsonl", "02_rethink/incorrect.jsonl"):
        (run / f).parent.mkdir(parents=True, exist_ok=True)
        (run / f).write_text("")
    m = run_pairs(_params(tmp_path))
    assert m["counts"]["pairs"] == 0 and any("zero pairs" in n for n in m["notes"])
    assert (run / "03_pairs" / "pairs.jsonl").read_text() == ""


def test_missing_stage_file_is_an_error(tmp_path):
    from cogpo_kit.pairs.stage import run_pairs

    run = write_crv_fixture(tmp_path / "r")
    (run / "02_rethink" / "incorrect.jsonl").unlink()
    with pytest.raises(DataError, match="file not found"):
        run_pairs(_params(tmp_path))
