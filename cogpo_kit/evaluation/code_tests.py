"""Code problems: test cases (from LiveCodeBench files or parsed from a statement), the program in
a completion, and per-test verdicts from the sandbox.

Two kinds of test, as in LiveCodeBench: ``stdin`` (AtCoder: the program reads standard input and
prints; lines compared after stripping, numbers compared as decimals) and ``functional``
(LeetCode: ``Solution().<func_name>(*args)`` with one JSON argument per input line; the JSON result
compared, lists and tuples alike, floats to 1e-6).

Per-test verdicts: ``pass``, ``wrong_answer``, ``time_limit``, ``runtime_error``,
``memory_limit``, and ``skipped`` (after the first failure when ``stop_on_fail``).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Optional, Sequence

from cogpo_kit.evaluation.sandbox import Limits, run_program

VERDICTS = ("pass", "wrong_answer", "time_limit", "runtime_error", "memory_limit", "skipped")


@dataclass(frozen=True)
class CodeTest:
    """One test case."""

    input: str
    output: str
    testtype: str = "stdin"
    """``stdin`` or ``functional``."""


@dataclass(frozen=True)
class TestVerdict:
    verdict: str
    reason: str = ""
    seconds: float = 0.0


# ---- test cases --------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """LiveCodeBench compresses private tests as a pickled string: allow plain data only."""

    def find_class(self, module, name):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} in test data")


def decode_tests(value: Any) -> list[dict]:
    """Test cases from a ``code_generation_lite`` field: a JSON string, a list, or the compressed
    form (base64 of zlib of a pickled JSON string) used for ``private_test_cases``."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        out = json.loads(value)
        return out if isinstance(out, list) else []
    except json.JSONDecodeError:
        pass
    raw = zlib.decompress(base64.b64decode(value.encode("ascii")))
    text = _SafeUnpickler(io.BytesIO(raw)).load()
    out = json.loads(text)
    if not isinstance(out, list):
        raise ValueError("decoded test cases are not a list")
    return out


def func_name_of(starter_code: str) -> Optional[str]:
    """The method LeetCode calls (``def name(self, ...)`` in the starter code)."""
    m = re.search(r"def\s+(\w+)\s*\(\s*self", starter_code or "")
    return m.group(1) if m else None


def parse_atcoder_samples(statement: str) -> list[CodeTest]:
    """``Sample Input N`` / ``Sample Output N`` blocks of an AtCoder statement."""
    tests = []
    for m in re.finditer(r"Sample Input (\d+)\s*\n(.*?)\nSample Output \1[ \t]*\n", statement, re.DOTALL):
        rest = statement[m.end():]
        rest = rest.lstrip("\n")
        out_lines = []
        for line in rest.split("\n"):
            if not line.strip() or line.startswith("Sample Input") or line.startswith("Read the inputs"):
                break
            out_lines.append(line)
        inp = m.group(2).strip("\n")
        tests.append(CodeTest(inp + "\n", "\n".join(out_lines) + "\n", "stdin"))
    return tests


def _split_args(text: str) -> list[str]:
    """``n = 5, queries = [[2,4],[0,2]]`` -> the value texts, in order."""
    parts, depth, cur, in_str = [], 0, [], False
    for i, c in enumerate(text):
        if c == '"' and (i == 0 or text[i - 1] != "\\"):
            in_str = not in_str
        if not in_str:
            if c in "[{(":
                depth += 1
            elif c in "]})":
                depth -= 1
            elif c == "," and depth == 0 and re.match(r"\s*[A-Za-z_]\w*\s*=", text[i + 1:]):
                parts.append("".join(cur))
                cur = []
                continue
        cur.append(c)
    parts.append("".join(cur))
    values = []
    for p in parts:
        m = re.match(r"\s*[A-Za-z_]\w*\s*=\s*(.*)$", p, re.DOTALL)
        values.append((m.group(1) if m else p).strip())
    return values


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        import ast

        py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", text)))
        return ast.literal_eval(py)


def parse_leetcode_examples(statement: str) -> list[CodeTest]:
    """``Example N: Input: a = ..., b = ... Output: ...`` blocks of a LeetCode statement."""
    tests = []
    for m in re.finditer(r"Example \d+:\s*\n\s*Input:\s*(.*?)\n\s*Output:\s*(.*?)\s*(?:\n|$)", statement, re.DOTALL):
        args = [_json_value(v) for v in _split_args(m.group(1).strip())]
        expected = _json_value(m.group(2).strip())
        tests.append(CodeTest("\n".join(json.dumps(a) for a in args), json.dumps(expected), "functional"))
    return tests


# ---- the program -------------------------------------------------------------------------------
def extract_code(completion: Optional[str]) -> Optional[str]:
    """The last fenced code block (```python preferred) of a completion; ``None`` when there is none."""
    if not completion:
        return None
    text = completion
    idx = text.rfind("</think>")
    if idx >= 0 and text[idx + 8:].strip():
        text = text[idx + 8:]
    blocks = re.findall(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", text, re.DOTALL)
    if not blocks:
        return None
    py = [b for lang, b in blocks if lang.lower() in ("python", "python3", "py")]
    code = (py or [b for _, b in blocks])[-1]
    return code if code.strip() else None


_PRELUDE = """import sys, json, math, collections, heapq, bisect, itertools, functools, string, re, random, operator
from typing import *
from collections import *
from heapq import *
from bisect import *
from itertools import *
from functools import *
from math import *
sys.setrecursionlimit(10 ** 6)
"""

_FUNCTIONAL_MAIN = """
def __cogpo_main():
    import json as _j, sys as _s
    _args = [_j.loads(_l) for _l in _s.stdin.read().split("\\n") if _l.strip()]
    _res = Solution().{func}(*_args)
    _s.stdout.write("\\n__COGPO_RESULT__" + _j.dumps(_res) + "\\n")
__cogpo_main()
"""


def _stdin_outputs_match(expected: str, got: str) -> bool:
    exp = [ln.strip() for ln in expected.strip().split("\n")]
    out = [ln.strip() for ln in got.strip().split("\n")]
    if exp == out:
        return True
    if len(exp) != len(out):
        return False
    for e, o in zip(exp, out):
        if e == o:
            continue
        et, ot = e.split(), o.split()
        if len(et) != len(ot):
            return False
        try:
            if any(Decimal(a) != Decimal(b) for a, b in zip(et, ot)):
                return False
        except InvalidOperation:
            return False
    return True


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    return a == b


def run_tests(code: str, tests: Sequence[CodeTest], *, func_name: Optional[str] = None,
              limits: Limits = Limits(), stop_on_fail: bool = True) -> list[TestVerdict]:
    """Run a program on each test in the sandbox; one verdict per test."""
    out: list[TestVerdict] = []
    failed = False
    for t in tests:
        if failed and stop_on_fail:
            out.append(TestVerdict("skipped"))
            continue
        if t.testtype == "functional":
            if not func_name:
                out.append(TestVerdict("runtime_error", "functional test without a function name"))
                failed = True
                continue
            source = _PRELUDE + code + "\n" + _FUNCTIONAL_MAIN.format(func=func_name)
        else:
            source = _PRELUDE + code
        res = run_program(source, t.input, limits=limits)
        if res.verdict != "ok":
            out.append(TestVerdict(res.verdict, res.reason, res.wall_s))
            failed = True
            continue
        if t.testtype == "functional":
            marker = res.stdout.rfind("__COGPO_RESULT__")
            if marker < 0:
                ok, why = False, "no result printed"
            else:
                try:
                    got = json.loads(res.stdout[marker + len("__COGPO_RESULT__"):].strip())
                    ok, why = _values_equal(got, json.loads(t.output)), ""
                except (json.JSONDecodeError, TypeError) as exc:
                    ok, why = False, f"result not JSON ({exc})"
        else:
            ok, why = _stdin_outputs_match(t.output, res.stdout), ""
        if ok:
            out.append(TestVerdict("pass", "", res.wall_s))
        else:
            exp = t.output.strip()[:80]
            out.append(TestVerdict("wrong_answer", why or f"expected {exp!r}, got {res.stdout.strip()[:80]!r}", res.wall_s))
            failed = True
    return out
