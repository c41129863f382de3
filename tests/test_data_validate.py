"""Validation of CoT rows: every bad case names file, line and field; rejects are written and counted."""

from __future__ import annotations

import json

import pytest

from cogpo_kit.data.config import DataParams
from cogpo_kit.data.loaders import load_cot
from cogpo_kit.io import DataError, read_jsonl

GOOD = {"id": "ok", "problem": "What is 1+1?", "answer": "2", "reasoning": "1+1 = 2."}


def _line(obj) -> bytes:
    return (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n"


def write_lines(path, lines):
    path.write_bytes(b"".join(_line(x) for x in lines))
    return path


def row(**changes):
    r = dict(GOOD, id=changes.pop("id", "bad"))
    for k, v in changes.items():
        if v is ...:
            r.pop(k)
        else:
            r[k] = v
    return r


# (bad line, reason, field named, words in the message)
BAD_CASES = [
    (row(problem=...), "missing_field", "problem", "missing"),
    (row(reasoning=None), "missing_field", "reasoning", "null"),
    (row(answer=""), "empty_field", "answer", "empty"),
    (row(problem="  \n "), "empty_field", "problem", "empty"),
    (row(answer=["2"]), "wrong_type", "answer", "list"),
    (row(answer={"v": 2}), "wrong_type", "answer", "dict"),
    (row(answer=True), "wrong_type", "answer", "bool"),
    (row(problem=5), "wrong_type", "problem", "int"),
    (row(id=["x"]), "wrong_type", "id", "list"),
    (row(id=""), "empty_field", "id", "empty"),
    (b'{"id": "bad", "problem": "p", "answer": "2", "reasoning": "r"', "bad_json", None, "invalid JSON"),
    (b'{"id": "bad", "problem": "caf\xe9", "answer": "2", "reasoning": "r"}', "bad_utf8", None, "UTF-8"),
    (["a", "list"], "not_object", None, "JSON object"),
    (row(id="ok"), "duplicate_id", "id", "already used at line 1"),
]


@pytest.mark.parametrize("bad, reason, field, words", BAD_CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(BAD_CASES)])
def test_error_mode_names_file_line_and_field(tmp_path, bad, reason, field, words):
    f = write_lines(tmp_path / "d.jsonl", [GOOD, row(id="fine"), bad, row(id="after")])
    with pytest.raises(DataError) as ei:
        load_cot(DataParams(source="file", path=str(f), on_invalid="error"))
    err = ei.value
    assert err.path == str(f) and err.line == 3 and err.field == field
    msg = str(err)
    assert str(f) in msg and "line 3" in msg and words in msg and reason in msg
    if field:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize("bad, reason, field, words", BAD_CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(BAD_CASES)])
def test_reject_mode_writes_the_row_with_its_reason(tmp_path, bad, reason, field, words):
    f = write_lines(tmp_path / "d.jsonl", [GOOD, row(id="fine"), bad, row(id="after")])
    out = tmp_path / "run" / "rejects.jsonl"
    recs, rep = load_cot(DataParams(source="file", path=str(f), on_invalid="reject", shuffle=False),
                         rejects_path=out)
    assert [r.id for r in recs] == ["ok", "fine", "after"]
    assert (rep.read, rep.valid, rep.rejected) == (4, 3, {reason: 1})
    rejects = read_jsonl(out)
    assert len(rejects) == 1
    r = rejects[0]
    assert (r["path"], r["line"], r["reason"], r["field"], r["source"]) == (str(f), 3, reason, field, "file")
    assert words in r["message"] and r["row"] is not None
    assert rep.rejects_path == str(out)


def test_numeric_answers_and_ids_become_strings(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [row(id=1, answer=42), row(id=2, answer=0.5), row(id=3, answer=-3)])
    recs, rep = load_cot(DataParams(source="file", path=str(f), shuffle=False))
    assert [(r.id, r.answer) for r in recs] == [("1", "42"), ("2", "0.5"), ("3", "-3")]


def test_nan_answer_is_wrong_type(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"problem": "p", "answer": NaN, "reasoning": "r"}\n')
    with pytest.raises(DataError, match=r"line 1, field 'answer'.*nan"):
        load_cot(DataParams(source="file", path=str(f)))


def test_many_problems_are_all_counted_and_nothing_is_dropped(tmp_path):
    lines = [GOOD, b"", row(id="a", answer=[1]), row(id="b", problem=""), row(id="c", reasoning=...),
             b"{oops", row(id="ok"), row(id="ok"), row(id="d"), b"\xff\xfe", b"   "]
    f = write_lines(tmp_path / "d.jsonl", lines)
    out = tmp_path / "rejects.jsonl"
    recs, rep = load_cot(DataParams(source="file", path=str(f), on_invalid="reject"), rejects_path=out)
    assert rep.read == 9  # the two blank lines hold no row
    assert rep.valid == 2 and rep.read == rep.valid + rep.n_rejected
    assert rep.rejected == {"wrong_type": 1, "empty_field": 1, "missing_field": 1, "bad_json": 1,
                            "duplicate_id": 2, "bad_utf8": 1}
    rejected = read_jsonl(out)
    assert [r["line"] for r in rejected] == [3, 4, 5, 6, 7, 8, 10]
    assert rejected[-1]["row"] == "\\xff\\xfe"  # undecodable bytes kept, escaped
    assert rejected[3]["row"] == "{oops"
    d = rep.to_dict()
    assert d["n_rejected"] == 7 and d["kept"] == 2 and "rejects" not in d


def test_rejects_file_is_written_atomically_and_even_when_empty(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [GOOD])
    out = tmp_path / "rejects.jsonl"
    out.write_text("stale\n")
    load_cot(DataParams(source="file", path=str(f), on_invalid="reject"), rejects_path=out)
    assert out.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "rejects.jsonl"]  # no temp file left


def test_error_mode_writes_no_rejects_file(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [GOOD])
    out = tmp_path / "rejects.jsonl"
    recs, rep = load_cot(DataParams(source="file", path=str(f), on_invalid="error"), rejects_path=out)
    assert len(recs) == 1 and not out.exists()


def test_duplicates_across_gsm8k_style_sources_name_the_first_line(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [row(id="x"), row(id="y"), row(id="x")])
    with pytest.raises(DataError, match=r"line 3, field 'id': id 'x' already used at line 1"):
        load_cot(DataParams(source="file", path=str(f)))


def test_source_field_names_are_reported_for_mapped_sources(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"question": "", "answer": "x\n#### 1"}) + "\n")
    with pytest.raises(DataError) as ei:
        load_cot(DataParams(source="gsm8k_train", path=str(f)))
    assert ei.value.field == "question" and "read as 'problem'" in str(ei.value)


def test_counts_and_rejects_reach_the_given_logger(tmp_path):
    import logging

    f = write_lines(tmp_path / "d.jsonl", [GOOD, row(answer=[1])])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    lg = logging.getLogger("test.data.stage")
    lg.setLevel(logging.INFO)
    lg.addHandler(Keep())
    load_cot(DataParams(source="file", path=str(f), on_invalid="reject"), logger=lg)
    text = "\n".join(r.getMessage() for r in records)
    assert "read 2 rows" in text and "1 valid" in text and "line 2, field 'answer'" in text
