"""The pair builder and the pairs stage on CRV artifacts written by the real stages."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from cogpo_kit.crv.rethink import IncorrectOutcome, incorrect_row
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.io import DataError, read_jsonl
from cogpo_kit.pairs.build import build_pairs
from cogpo_kit.pairs.config import PairsParams
from cogpo_kit.answers.extraction import boxed_answer, extract_answer
from cogpo_kit.answers.response import FINAL_LINE, ends_with_boxed, format_response, same_answer
from cogpo_kit.pairs.inputs import read_crv
from cogpo_kit.pairs.schema import load_pairs
from cogpo_kit.params import load_params
from cogpo_kit.pipeline.stages import artifact_path
from test_pairs_fixtures import (EXAMPLES, EXPECTED_IDS, EXPECTED_PER_GAP, EXPECTED_PER_GAP_CHECKED,
                                 write_crv_fixture)

GOLD = {e[0]: e[3] for e in EXAMPLES}



def _pairs(tmp_path, *overrides, **cfg):
    art = read_crv(write_crv_fixture(tmp_path / "run", overrides=overrides))
    return build_pairs(art, PairsParams(**cfg))


def test_expected_pairs_per_gap(tmp_path):
    pairs, report = _pairs(tmp_path)
    assert Counter(p["gap"] for p in pairs) == EXPECTED_PER_GAP
    assert {p["id"] for p in pairs} == EXPECTED_IDS
    assert report["pairs_per_gap"] == EXPECTED_PER_GAP
    assert report["skipped"]["no incorrect CoT"] == 1  # e3: every attempt cut at max_tokens
    assert report["skipped"]["medium CoT not in D_SFT* (not verified)"] == 1  # m2
    assert report["skipped"]["hard CoT has no kept rewrite"] == 1  # h1
    assert report["skipped"]["no Critic level"] == 1  # x1
    assert {p["gap"]: p["beta"] for p in pairs} == {"small": 0.1, "medium": 0.2, "large": 0.5}


def test_incorrect_cot_checked_as_params_say(tmp_path):
    pairs, report = _pairs(tmp_path, "crv.incorrect_check=answer_differs")
    assert Counter(p["gap"] for p in pairs) == EXPECTED_PER_GAP_CHECKED
    assert not any(p["source_id"] == "e2" and p["rejected_kind"].startswith("r~") for p in pairs)
    assert report["skipped"]["no incorrect CoT"] == 2  # e3 (truncated) and e2 (reaches the gold answer)


def test_incorrect_cot_ends_with_its_own_answer(tmp_path):
    pairs, _ = _pairs(tmp_path)
    for p in pairs:
        gold = GOLD[p["source_id"]]
        assert p["prompt"][-1]["role"] == "user" and "\\boxed{}" in p["prompt"][-1]["content"]
        assert same_answer(extract_answer(p["chosen"]), gold), p["id"]
        if p["rejected_kind"].startswith("r~"):
            reached = extract_answer(p["rejected"])
            assert p["rejected_answer"] == reached, p["id"]
            if p["source_id"] != "e2":  # e2's "incorrect" CoT reaches the gold answer (kept as the paper does)
                assert not same_answer(reached, gold) and f"\\boxed{{{gold}}}" not in p["rejected"], p["id"]
        else:
            assert same_answer(extract_answer(p["rejected"]), gold)
    h2 = next(p for p in pairs if p["id"] == "h2|medium|r_hard>r~_hard")
    assert boxed_answer(h2["rejected"]) == "17" and h2["rejected"].startswith("Ann has 8 + 2 = 10 coins")
    e1 = next(p for p in pairs if p["id"] == "e1|small|r_easy*>r_easy")
    assert e1["chosen"].startswith("Tom starts with 3 apples") and e1["rejected"].startswith("3 + 4 = 7")
    assert e1["rejected"].count("\\boxed") == 1  # the original already boxes its answer: nothing appended


def _final_line(text: str) -> str:
    """The final line's shape: the last line with its answer replaced."""
    last = text.strip().splitlines()[-1]
    return re.sub(r"\\boxed\{.*\}", r"\\boxed{_}", last)


def test_both_texts_compared_share_the_final_line_format(tmp_path):
    """For every pair kind and both SFT variants, the two texts compared end with the same final-line
    format when the reasoning has no boxed answer of its own."""
    from cogpo_kit.training.sft import sft_rows

    run = write_crv_fixture(tmp_path / "run")
    art = read_crv(run)
    pairs, _ = build_pairs(art, PairsParams())
    want = _final_line(FINAL_LINE.format(answer="x"))

    def check(text: str, where) -> bool:
        """True when ``text`` ends with the kit's final line; else its reasoning must box its own answer."""
        if _final_line(text) == want:
            return True
        assert ends_with_boxed(text), (where, text[-80:])
        return False

    kinds, both_appended = set(), 0
    for p in pairs:
        both_appended += check(p["chosen"], p["id"]) and check(p["rejected"], p["id"])
        kinds.add(f"{p['chosen_kind']}>{p['rejected_kind']}")
    assert kinds == {"r_easy*>r_easy", "r_hard*>r_hard", "r_easy>r~_easy", "r_hard>r~_hard", "r_med>r~_med",
                     "r_easy*>r~_easy", "r_hard*>r~_hard"}
    assert both_appended >= 5
    sft = {v: {r["id"]: r["completion"][0]["content"] for r in sft_rows(art, v)}
           for v in ("crv_sft", "sft", "sft_same_problems")}
    appended = [check(text, (variant, sid)) for variant, rows in sft.items() for sid, text in rows.items()]
    assert sum(appended) >= 10 and len(sft["sft"]) == len(art.records)
    # the D_SFT* row the rethink stage wrote has the very response the SFT rows train on
    from cogpo_kit.io import read_jsonl as _rows
    written = {r["id"]: r["response"] for r in _rows(artifact_path(run, "sft"))}
    assert written == sft["crv_sft"]


def test_gap_selection_and_betas(tmp_path):
    pairs, report = _pairs(tmp_path, gaps=("large",), beta_large=0.7)
    assert {p["gap"] for p in pairs} == {"large"} and len(pairs) == EXPECTED_PER_GAP["large"]
    assert all(p["beta"] == 0.7 for p in pairs)


def test_format_response():
    assert format_response("2 + 2 = 4.", "4") == "2 + 2 = 4.\n\n" + FINAL_LINE.format(answer="4")
    assert format_response("so \\boxed{5}", "4") == "so \\boxed{5}"  # its own boxed last line wins
    assert format_response("no answer reached", None) == "no answer reached"
    assert format_response("def f():\n    return 1", "def f(): ...", "code") == "def f():\n    return 1"
    once = format_response("x = 3", "3")
    assert format_response(once, "3") == once


def test_missing_field_names_file_line_field(tmp_path):
    run = write_crv_fixture(tmp_path / "r")
    p = artifact_path(run, "input")
    rows = read_jsonl(p)
    del rows[2]["reasoning"]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as exc:
        read_crv(run)
    assert exc.value.line == 3 and exc.value.field == "reasoning" and "input.jsonl" in str(exc.value)


def test_bad_level_and_unknown_id(tmp_path):
    run = write_crv_fixture(tmp_path / "r")
    p = artifact_path(run, "critiques")
    p.write_text(p.read_text().replace('"level": "hard"', '"level": "HARDER"', 1))
    with pytest.raises(DataError, match="level must be one of") as exc:
        read_crv(run)
    assert exc.value.field == "level"
    run2 = write_crv_fixture(tmp_path / "b")
    stranger = CoTRecord(id="zz", problem="What is 1 + 1?", answer="2", reasoning="1 + 1 = 3.")
    row = incorrect_row(stranger, IncorrectOutcome(id="zz", found=True, reasoning="1 + 1 = 3.", reached="3",
                                                   attempt=1), "easy")
    with open(artifact_path(run2, "incorrect"), "a") as fh:
        fh.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="not in input.jsonl"):
        read_crv(run2)


def _params(tmp_path, *more):
    return load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r", "student.model=tiny:llama", *more])


@pytest.mark.builds_model
def test_stage_writes_valid_pairs_and_stats(crv_run, params_factory):
    from cogpo_kit.pairs.stage import run_pairs

    m = run_pairs(params_factory("student.model=tiny:llama"))
    pairs = load_pairs(artifact_path(crv_run, "pairs"))
    n = sum(EXPECTED_PER_GAP.values())
    assert len(pairs) == n and m["counts"]["pairs"] == n
    assert m["pairs"]["pairs_per_gap"] == EXPECTED_PER_GAP
    assert m["lengths"]["chosen_tokens"]["n"] == n and m["lengths"]["overlength_pairs"] == 0
    assert all(p["chosen_tokens"] > p["prompt_tokens"] > 0 for p in pairs)
    assert len(m["inputs"]) == 5


@pytest.mark.parametrize("policy", ["truncate", "drop"])
@pytest.mark.builds_model
def test_overlength_policy_is_reported(crv_run, params_factory, policy):
    from cogpo_kit.pairs.stage import run_pairs

    m = run_pairs(params_factory("student.model=tiny:llama", "pairs.max_length=88", f"pairs.overlength={policy}"))
    pairs = load_pairs(artifact_path(crv_run, "pairs"))
    over = m["lengths"]["overlength_pairs"]
    assert over > 0 and any("longer than 88 tokens" in n for n in m["notes"])
    assert all(p["chosen_tokens"] <= 88 and p["rejected_tokens"] <= 88 for p in pairs)
    if policy == "drop":
        assert m["lengths"]["dropped"] == over and len(pairs) == sum(EXPECTED_PER_GAP.values()) - over
    else:
        assert m["lengths"]["truncated"] + m["lengths"]["dropped"] == over and m["lengths"]["truncated"] > 0
        cut = [p for p in pairs if p.get("truncated")]
        assert len(cut) == m["lengths"]["truncated"] and all(p["original_chosen_tokens"] for p in cut)


def test_empty_inputs_give_zero_pairs_with_a_note(tmp_path):
    from cogpo_kit.pairs.stage import run_pairs

    run = tmp_path / "r"
    for key in ("input", "critiques", "sft", "rewrites", "incorrect"):
        artifact_path(run, key).parent.mkdir(parents=True, exist_ok=True)
        artifact_path(run, key).write_text("")
    m = run_pairs(_params(tmp_path))
    assert m["counts"]["pairs"] == 0 and any("zero pairs" in n for n in m["notes"])
    assert artifact_path(run, "pairs").read_text() == ""


def test_missing_stage_file_is_an_error(tmp_path):
    from cogpo_kit.pairs.stage import run_pairs

    run = write_crv_fixture(tmp_path / "r")
    artifact_path(run, "incorrect").unlink()
    with pytest.raises(DataError, match="file not found"):
        run_pairs(_params(tmp_path))
