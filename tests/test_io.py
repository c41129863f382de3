"""Atomic writes and JSONL reading."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cogpo_kit.io import (DataError, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl,
                          stable_hash)


def test_atomic_write_replaces_whole(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]  # no temp files left


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "rows.jsonl"
    atomic_write_jsonl(p, [{"i": 1}])

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_jsonl(p, [{"i": 2}, {"bad": Boom()}])
    assert read_jsonl(p) == [{"i": 1}]
    assert len(list(tmp_path.iterdir())) == 1


def test_killed_writer_never_leaves_partial_file(tmp_path):
    """SIGKILL a process in the middle of writing big files: the target is old or new, never partial."""
    target = tmp_path / "big.jsonl"
    atomic_write_text(target, "old\n")
    code = (
        "import sys; from cogpo_kit.io import atomic_write_jsonl\n"
        "rows=[{'i': i, 'pad': 'x'*2000} for i in range(20000)]\n"
        "while True: atomic_write_jsonl(sys.argv[1], rows)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
    time.sleep(2.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = target.read_text()
    assert text == "old\n" or len(text.splitlines()) == 20000
    for line in text.splitlines():
        json.loads(line) if text != "old\n" else None


def test_read_jsonl_errors_name_line(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert "line 2" in str(e.value) and str(p) in str(e.value)
    p.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(DataError, match="UTF-8"):
        read_jsonl(p)
    p.write_text('[1, 2]\n')
    with pytest.raises(DataError, match="JSON object"):
        read_jsonl(p)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
