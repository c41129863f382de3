"""``cogpo-kit data check``: output, exit codes, and row counts of every shipped file against SOURCE.md."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest

from cogpo_kit.cli import main as cli_main
from cogpo_kit.data import loaders
from cogpo_kit.data.check import main as check_main
from cogpo_kit.data.readers import data_root
from cogpo_kit.io import read_jsonl

DATA = data_root()
TABLE_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([\d-]+)\s*\|\s*(\d+)\s*\|")


def run_check(*args, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    code = check_main(*args, out=out, **kwargs)
    return code, out.getvalue()


def rows_read(text: str) -> int:
    m = re.search(r"^rows read:\s+(\d+)$", text, re.M)
    assert m, text
    return int(m.group(1))


def source_tables() -> list[tuple[Path, int | None, int]]:
    """``(file, rows or None, bytes)`` for every file listed in a SOURCE.md table under data/."""
    out = []
    for source in sorted(DATA.glob("*/SOURCE.md")):
        for line in source.read_text(encoding="utf-8").splitlines():
            m = TABLE_ROW.match(line)
            if m:
                out.append((source.parent / m.group(1), None if m.group(2) == "-" else int(m.group(2)),
                            int(m.group(3))))
    return out


SHIPPED = source_tables()


def test_every_shipped_file_is_listed_in_its_source_md():
    listed = {p for p, _, _ in SHIPPED}
    present = {p for p in DATA.glob("*/*") if p.name != "SOURCE.md"}
    assert present == listed
    assert len([p for p, n, _ in SHIPPED if n is not None]) == 14


@pytest.mark.parametrize("path, rows, size", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p, _, _ in SHIPPED])
def test_data_check_on_each_shipped_file_matches_source_md(path, rows, size):
    assert path.stat().st_size == size
    code, text = run_check(str(path))
    assert code == 0, text
    assert "problems found: none" in text
    if rows is None:  # the password-protected GPQA zip: listed, never extracted
        assert "members:" in text and "gpqa_diamond.csv" in text and "encrypted" in text
    else:
        assert rows_read(text) == rows


@pytest.mark.parametrize("name, rows, fmt_words", [("gsm8k_train", 7473, None), ("limo", 291, None)])
def test_data_check_on_loader_names(name, rows, fmt_words):
    code, text = run_check(name)
    assert code == 0 and rows_read(text) == rows and f"valid:          {rows}" in text
    assert re.search(r"^  reasoning\s+[\d,]+ / [\d,.]+ / [\d,.]+ / [\d,]+\s+\d", text, re.M), text


def test_cot_files_are_recognised_and_validated():
    code, text = run_check(str(DATA / "limo_r1_distill_cot" / "official-solution.jsonl"))
    assert code == 0 and "format: LIMO traces" in text and "valid:          497" in text
    code, text = run_check(str(DATA / "gsm8k" / "test.jsonl"))
    assert code == 0 and "format: GSM8K" in text and "valid:          1319" in text
    code, text = run_check(str(DATA / "math500" / "test.jsonl"))
    assert "generic check" in text and "fields seen:    problem (500), solution (500), answer (500)" in text


def _broken(tmp_path) -> Path:
    lines = [json.dumps({"id": "a", "problem": "1+1?", "answer": "2", "reasoning": "one plus one"}),
             json.dumps({"id": "b", "problem": "2+2?", "answer": ["4"], "reasoning": "two plus two"}),
             json.dumps({"id": "a", "problem": "3+3?", "answer": 6, "reasoning": "three plus three"}),
             '{"id": "d", "problem": "4+4?"']
    p = tmp_path / "broken.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_broken_file_exit_code_counts_and_problems(tmp_path):
    p = _broken(tmp_path)
    code, text = run_check(str(p), rejects=str(tmp_path / "rej.jsonl"))
    assert code == 1
    assert rows_read(text) == 4 and "valid:          1" in text and "rejected:       3" in text
    assert re.search(r"^  wrong_type\s+1$", text, re.M) and re.search(r"^  duplicate_id\s+1$", text, re.M)
    assert f"{p}: line 2, field 'answer': value is list" in text
    assert f"{p}: line 3, field 'id': id 'a' already used at line 1" in text
    assert f"{p}: line 4: invalid JSON" in text
    assert [r["line"] for r in read_jsonl(tmp_path / "rej.jsonl")] == [2, 3, 4]


def test_problem_list_is_capped(tmp_path):
    p = tmp_path / "many.jsonl"
    p.write_text("".join(json.dumps({"problem": "p", "answer": "", "reasoning": "r"}) + "\n" for _ in range(25)))
    code, text = run_check(str(p))
    assert code == 1 and text.count("value is empty") == 10 and "... and 15 more" in text


def test_generic_file_with_decode_errors(tmp_path):
    p = tmp_path / "bench.jsonl"
    p.write_bytes(b'{"question": "q", "choices": [1, 2]}\n{"question": \n\xff\n')
    code, text = run_check(str(p))
    assert code == 1 and "generic check" in text and rows_read(text) == 3 and "decode errors:  2" in text
    assert f"{p}: line 2: invalid JSON" in text and f"{p}: line 3: line is not valid UTF-8" in text


def test_cli_data_check_clean_and_broken(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"problem": "p", "answer": 3, "reasoning": "r r"}) + "\n")
    assert cli_main(["data", "check", str(good)]) == 0
    assert "problems found: none" in capsys.readouterr().out

    broken = _broken(tmp_path)
    assert cli_main(["data", "check", str(broken), "--rejects", str(tmp_path / "r.jsonl")]) == 1
    assert "line 2, field 'answer'" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 3

    assert cli_main(["data", "check", str(broken), "--on-invalid", "error"]) == 1
    out = capsys.readouterr().out
    assert f"{broken}, line 2, field 'answer': value is list" in out and "line 3" not in out


def test_cli_loader_name_with_local_path(tmp_path, capsys):
    conv = {"conversations": [{"from": "user", "value": "q?"},
                              {"from": "assistant", "value": "<|begin_of_thought|>t<|end_of_thought|>"
                                                             "<|begin_of_solution|>\\boxed{7}<|end_of_solution|>"}]}
    f = tmp_path / "export.jsonl"
    f.write_text(json.dumps(conv) + "\n")
    assert cli_main(["data", "check", "bespoke_stratos", "--path", str(f)]) == 0
    out = capsys.readouterr().out
    assert rows_read(out) == 1 and "valid:          1" in out


def test_unusable_sources_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=3.0: False)
    assert cli_main(["data", "check", "openthoughts"]) == 2
    assert "open-thoughts/OpenThoughts-114k" in capsys.readouterr().err
    assert cli_main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2
    assert "neither a data source" in capsys.readouterr().err
    assert cli_main(["data", "check", "file"]) == 2


def test_zip_that_is_not_a_zip(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"not a zip")
    code, text = run_check(str(p))
    assert code == 1 and "not a readable zip archive" in text
    good = tmp_path / "y.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("a/b.csv", "1,2\n")
    code, text = run_check(str(good))
    assert code == 0 and "a/b.csv (4 bytes)" in text


def test_check_counts_the_answer_format_instructions_removed(tmp_path):
    reply = ("<|begin_of_thought|>\n\nt\n\n<|end_of_thought|>\n\n"
             "<|begin_of_solution|>\n\n\\boxed{7}\n\n<|end_of_solution|>")
    rows = [{"system": "s", "conversations": [{"from": "user", "value": user}, {"from": "assistant", "value": reply}]}
            for user in ("Return your final response within \\boxed{}. What is 3+4?", "What is 5+2?")]
    f = tmp_path / "export.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, text = run_check(str(f))
    assert code == 0 and "valid:          2" in text
    assert re.search(r"^format instruction removed from problems: 1$", text, re.M), text
    assert re.search(r"^  boxed\s+1$", text, re.M), text
