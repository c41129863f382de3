"""Bad pairs files fail before training with the row and field named.

The good pair is one the pair builder writes (on the CRV artifacts of ``test_pairs_fixtures``); the
bad ones are that pair with one field changed."""

from __future__ import annotations

import json

import pytest

from cogpo_kit.io import DataError
from cogpo_kit.pairs.build import build_pairs
from cogpo_kit.pairs.config import PairsParams
from cogpo_kit.pairs.inputs import read_crv
from cogpo_kit.pairs.schema import load_pairs
from cogpo_kit.pipeline.schemas import PAIRS
from test_pairs_fixtures import write_crv_fixture


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    pairs, _ = build_pairs(read_crv(write_crv_fixture(tmp_path_factory.mktemp("pairs") / "run")), PairsParams())
    large = next(p for p in pairs if p["gap"] == "large")
    assert set(PAIRS.names) - set(large) <= {"prompt_tokens", "chosen_tokens", "rejected_tokens",
                                               "original_chosen_tokens", "original_rejected_tokens", "truncated"}
    return dict(large, id="a", extra="kept")


def _write(tmp_path, rows):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_good_file_loads(tmp_path, good):
    rows = load_pairs(_write(tmp_path, [good, dict(good, id="b", gap="small", beta=1)]))
    assert [r["id"] for r in rows] == ["a", "b"] and rows[0]["extra"] == "kept"


@pytest.mark.parametrize("change, field, match", [
    ({"beta": None}, "beta", "missing"),
    ({"beta": 0}, "beta", "positive"),
    ({"beta": -0.1}, "beta", "positive"),
    ({"beta": "0.1"}, "beta", "positive"),
    ({"beta": float("nan")}, "beta", "positive"),
    ({"chosen": ""}, "chosen", "empty"),
    ({"rejected": "   "}, "rejected", "empty"),
    ({"gap": "huge"}, "gap", "gap must be one of"),
    ({"prompt": []}, "prompt", "non-empty list"),
    ({"prompt": [{"role": "assistant", "content": "x"}]}, "prompt", "user turn"),
    ({"prompt": "just text"}, "prompt", "non-empty list"),
])
def test_bad_row_names_line_and_field(tmp_path, good, change, field, match):
    bad = dict(good, id="b", **change)
    with pytest.raises(DataError, match=match) as exc:
        load_pairs(_write(tmp_path, [good, bad]))
    assert exc.value.line == 2 and exc.value.field == field


def test_missing_field_and_duplicate(tmp_path, good):
    row = dict(good)
    del row["rejected"]
    with pytest.raises(DataError) as exc:
        load_pairs(_write(tmp_path, [row]))
    assert exc.value.line == 1 and exc.value.field == "rejected"
    with pytest.raises(DataError, match="duplicate"):
        load_pairs(_write(tmp_path, [good, good]))
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "none.jsonl")
