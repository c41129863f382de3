"""Bad pairs files fail before training with the row and field named."""

from __future__ import annotations

import json

import pytest

from cogpo_kit.io import DataError
from cogpo_kit.pairs.schema import load_pairs

GOOD = {"id": "a", "prompt": [{"role": "user", "content": "1+1?"}], "chosen": "2. \\boxed{2}",
        "rejected": "3. \\boxed{3}", "gap": "large", "beta": 0.5, "extra": "kept"}


def _write(tmp_path, rows):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_good_file_loads(tmp_path):
    rows = load_pairs(_write(tmp_path, [GOOD, dict(GOOD, id="b", gap="small", beta=1)]))
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
def test_bad_row_names_line_and_field(tmp_path, change, field, match):
    bad = dict(GOOD, id="b", **change)
    with pytest.raises(DataError, match=match) as exc:
        load_pairs(_write(tmp_path, [GOOD, bad]))
    assert exc.value.line == 2 and exc.value.field == field


def test_missing_field_and_duplicate(tmp_path):
    row = dict(GOOD)
    del row["rejected"]
    with pytest.raises(DataError) as exc:
        load_pairs(_write(tmp_path, [row]))
    assert exc.value.line == 1 and exc.value.field == "rejected"
    with pytest.raises(DataError, match="duplicate"):
        load_pairs(_write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "none.jsonl")
