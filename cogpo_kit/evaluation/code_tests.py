"""Code problems: test cases (from LiveCodeBench files or parsed from a statement), the program in
a completion, and per-test verdicts from the sandbox — run as LiveCodeBench's own harness
(``lcb_runner/evaluation/testing_util.py``) runs them:

- every program gets LiveCodeBench's import prelude (:data:`LCB_PRELUDE`: ``from math import *``,
  ``from collections import *``, ... and ``sys.setrecursionlimit(50000)``);
- ``stdin`` tests (AtCoder): the code's statements are wrapped into one function called once
  (LiveCodeBench's ``make_function``; its imports stay at the top), which reads standard input
  and prints; output and expected
  output are compared line by line after stripping, a line that differs must hold the same
  decimals (``Decimal``) token by token;
- ``functional`` tests (LeetCode): ``Solution().<func_name>(*args)`` (or a module-level
  ``<func_name>`` when the code has no ``class Solution``), one JSON argument per input line; the
  result must *equal* the JSON expected output (``==``, a tuple result counted as a list, nothing
  else converted: no float tolerance);
- one time limit per test (``code_timeout_s``, LiveCodeBench's ``--timeout`` default of 6 s), the
  first failing test ends the run.

With ``allow_unisolated=False`` (the evaluation passes ``eval.code_allow_unisolated``) nothing runs where
the sandbox has no namespaces (``rlimits`` mode): :func:`run_tests` raises
:class:`~cogpo_kit.evaluation.sandbox.IsolationError` first.

Each test runs the program in its own sandboxed process (:mod:`sandbox`), where LiveCodeBench
runs all tests of a program in one process; its time limit covers the call only, so the kit adds
1 s of wall clock for the interpreter start.

Per-test verdicts: ``pass``, ``wrong_answer``, ``time_limit``, ``runtime_error``,
``memory_limit``, and ``skipped`` (after the first failure when ``stop_on_fail``).
"""

from __future__ import annotations

import ast
import base64
import io
import json
import pickle
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Optional, Sequence

from cogpo_kit.answers.extraction import final_segment
from cogpo_kit.evaluation.sandbox import Limits, require_isolation, run_program

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
    """The last fenced code block (```python preferred) of a completion's final part (after its
    thinking, see :func:`~cogpo_kit.answers.extraction.final_segment`); ``None`` when there is none."""
    if not completion:
        return None
    text = final_segment(completion)
    blocks = re.findall(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", text, re.DOTALL)
    if not blocks:
        return None
    py = [b for lang, b in blocks if lang.lower() in ("python", "python3", "py")]
    code = (py or [b for _, b in blocks])[-1]
    return code if code.strip() else None


LCB_PRELUDE = ("from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
               "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
               "from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n"
               "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\n"
               "from builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
               "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\n"
               "import statistics\nimport itertools\nimport functools\nimport operator\nimport io\nimport sys\n"
               "import json\nsys.setrecursionlimit(50000)\n")
"""LiveCodeBench's ``import_string``, put before every program (as its harness does)."""

_RESULT = "__COGPO_RESULT__"
_FUNCTIONAL_MAIN = """
def __cogpo_main():
    import json as _j, sys as _s
    if hasattr(_s, "set_int_max_str_digits"):
        _s.set_int_max_str_digits(0)
    _args = [_j.loads(_l) for _l in _s.stdin.read().split("\\n")]
    _res = {target}(*_args)
    def _py(v):
        if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0:
            return v.item()
        if type(v) is list:
            return [_py(x) for x in v]
        if type(v) is tuple:
            return tuple(_py(x) for x in v)
        if type(v) is dict:
            return {{_py(k): _py(x) for k, x in v.items()}}
        return v
    _s.stdout.write("\\n{marker}" + repr(_py(_res)) + "\\n")
__cogpo_main()
"""


def functional_source(code: str, func_name: str) -> str:
    """The program of a functional test: prelude, the code, then a call of ``Solution().<func_name>``
    (LiveCodeBench's rule: when the code contains ``class Solution``), else of ``<func_name>``,
    printing the result's ``repr`` after a marker."""
    target = f"Solution().{func_name}" if "class Solution" in code else func_name
    return LCB_PRELUDE + "\n" + code + "\n" + _FUNCTIONAL_MAIN.format(target=target, marker=_RESULT)


def _clean_if_name(code: str) -> str:
    """LiveCodeBench's ``clean_if_name``: a final ``if __name__ == '__main__':`` block is replaced by its body."""
    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            return ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:  # noqa: BLE001 - unparseable code runs as it is, as in LiveCodeBench
        pass
    return code


def _make_function(code: str) -> Optional[str]:
    """LiveCodeBench's ``make_function``: imports stay at the top, every other statement goes into
    ``wrapped_function()`` (so, as there, a module-level name is a local of that function)."""
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        others = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        fn = ast.FunctionDef(name="wrapped_function", args=ast.arguments(
            posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]),
            body=others or [ast.Pass()], decorator_list=[], returns=None, type_comment=None, lineno=1)
        if "type_params" in ast.FunctionDef._fields:
            fn.type_params = []
        return ast.unparse(ast.Module(body=imports, type_ignores=[])) + "\n" + ast.unparse(fn)
    except Exception:  # noqa: BLE001
        return None


_STDIN_MAIN = """
try:
    wrapped_function()
except SystemExit:
    pass
"""


def stdin_source(code: str) -> str:
    """The program of a stdin test, built as LiveCodeBench builds it: prelude, the code's imports,
    the rest of the code inside ``wrapped_function()``, called once (``SystemExit`` ignored); code
    that does not parse runs as it is after the prelude."""
    cleaned = _clean_if_name(code)
    wrapped = _make_function(cleaned)
    if wrapped is None:
        return LCB_PRELUDE + "\n" + code
    return LCB_PRELUDE + "\n" + wrapped + "\n" + _STDIN_MAIN


def _stdin_outputs_match(expected: str, got: str) -> bool:
    """LiveCodeBench's stdin comparison: stripped lines; equal, or equal as ``Decimal`` tokens."""
    exp = [ln.strip() for ln in expected.strip().split("\n")]
    out = [ln.strip() for ln in got.strip().split("\n")]
    if len(exp) != len(out):
        return False
    for e, o in zip(exp, out):
        if e == o:
            continue
        try:
            if [Decimal(a) for a in o.split()] != [Decimal(b) for b in e.split()]:
                return False
        except InvalidOperation:
            return False
    return True


def functional_result_matches(printed: str, expected_json: str) -> tuple[bool, str]:
    """LiveCodeBench's call-based comparison: ``prediction == expected`` after a tuple result is
    made a list (nothing else converted)."""
    try:
        got = ast.literal_eval(printed.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        return False, f"result is not a plain value ({type(exc).__name__})"
    try:
        expected = json.loads(expected_json)
    except (json.JSONDecodeError, ValueError) as exc:
        return False, f"expected output is not JSON ({exc})"
    if isinstance(got, tuple):
        got = list(got)
    try:
        return bool(got == expected), ""
    except Exception as exc:  # comparison of exotic values
        return False, f"comparison failed ({type(exc).__name__})"


def run_tests(code: str, tests: Sequence[CodeTest], *, func_name: Optional[str] = None,
              limits: Limits = Limits(), stop_on_fail: bool = True,
              allow_unisolated: bool = True) -> list[TestVerdict]:
    """Run a program on each test in the sandbox; one verdict per test. ``allow_unisolated=False``: raise
    :class:`~cogpo_kit.evaluation.sandbox.IsolationError` instead where the sandbox is in ``rlimits`` mode."""
    if not allow_unisolated:
        require_isolation(False)
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
            source = functional_source(code, func_name)
        else:
            source = stdin_source(code)
        res = run_program(source, t.input, limits=limits)
        if res.verdict != "ok":
            out.append(TestVerdict(res.verdict, res.reason, res.wall_s))
            failed = True
            continue
        if t.testtype == "functional":
            marker = res.stdout.rfind(_RESULT)
            if marker < 0:
                ok, why = False, "no result printed"
            else:
                ok, why = functional_result_matches(res.stdout[marker + len(_RESULT):], t.output)
        else:
            ok, why = _stdin_outputs_match(t.output, res.stdout), ""
        if ok:
            out.append(TestVerdict("pass", "", res.wall_s))
        else:
            exp = t.output.strip()[:80]
            out.append(TestVerdict("wrong_answer", why or f"expected {exp!r}, got {res.stdout.strip()[:80]!r}", res.wall_s))
            failed = True
    return out
