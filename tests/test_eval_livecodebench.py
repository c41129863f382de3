"""LiveCodeBench as its authors run it: release shards joined and size-checked, hidden tests decoded,
programs run through the sandbox with the benchmark's prelude and comparisons; and the
statements-only proxy under its own benchmark name."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogpo_kit.engines.base import Completion
from cogpo_kit.evaluation.benchmarks import LoadOptions, get_benchmark, load_problems
from cogpo_kit.evaluation.code_tests import CodeTest, run_tests
from cogpo_kit.evaluation.config import EvalParams
from cogpo_kit.evaluation.livecodebench import RELEASE_SIZES, release_shards
from cogpo_kit.evaluation.sandbox import Limits
from cogpo_kit.evaluation.scoring import grade_benchmark, summarize_benchmark
from cogpo_kit.io import DataError

FIXTURE = Path(__file__).parent / "data" / "livecodebench"
FAST = Limits(cpu_s=2, wall_s=4, memory_mb=512)


def _fixture(release=None):
    return load_problems("livecodebench", LoadOptions(livecodebench_path=str(FIXTURE), livecodebench_release=release))


def test_release_names_files_and_sizes():
    assert release_shards("release_v2") == (("test.jsonl", "test2.jsonl"), 511)
    assert RELEASE_SIZES == {"release_v1": 400, "release_v2": 511, "release_v3": 612, "release_v4": 713,
                             "release_v5": 880, "release_v6": 1055}
    assert release_shards("v2") == (("test2.jsonl",), 111)
    assert release_shards("v1_v3")[1] == 612
    assert release_shards("release_latest")[1] is None
    with pytest.raises(DataError, match="unknown LiveCodeBench release"):
        release_shards("release_v9")
    with pytest.raises(ValueError):
        EvalParams(livecodebench_release="v2.5")


def test_shards_are_joined_with_hidden_tests_decoded():
    probs = _fixture()
    assert [p.id for p in probs] == ["lcb-abc900_a", "lcb-3100", "lcb-abc950_b", "lcb-3200"]
    assert [(p.meta["n_public_tests"], p.meta["n_private_tests"]) for p in probs] == [(1, 2)] * 4
    assert [p.meta["file"] for p in probs] == ["test.jsonl", "test.jsonl", "test2.jsonl", "test2.jsonl"]
    add = probs[0]
    assert add.tests[1] == CodeTest("1000000000000000000 1000000000000000000\n", "2000000000000000000\n", "stdin")
    assert probs[1].func_name == "maxPairSum" and {t.testtype for t in probs[1].tests} == {"functional"}
    assert "class Solution" in probs[1].prompt and "Read the inputs from stdin" in add.prompt
    assert all(p.meta["tests_source"] == "dataset" and p.meta["release"] == "unchecked" for p in probs)
    # one shard of a folder: the release's own files only
    assert len(load_problems("livecodebench", LoadOptions(livecodebench_path=str(FIXTURE / "test2.jsonl"),
                                                          livecodebench_release=None))) == 2


def test_release_size_is_checked():
    with pytest.raises(DataError, match=r"release_v2 has 511 problems, the files give 4"):
        _fixture("release_v2")
    with pytest.raises(DataError, match="400"):
        _fixture("release_v1")  # test.jsonl only: 2 problems


def test_livecodebench_needs_the_release_files(monkeypatch):
    with pytest.raises(DataError, match="livecodebench_public"):
        load_problems("livecodebench")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="eval.livecodebench_path"):
        load_problems("livecodebench", LoadOptions(livecodebench_path="hub", livecodebench_release="release_v2"))


def test_statements_only_proxy_has_its_own_name():
    bench = get_benchmark("livecodebench_public")
    assert bench.paper_size is None and get_benchmark("livecodebench").paper_size == 511
    probs = load_problems("livecodebench_public", limit=3)
    assert all(p.id.startswith("lcb-") and p.meta["tests_source"] == "parsed_from_statement" for p in probs)


# ---- execution as LiveCodeBench runs it ---------------------------------------------------------------
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
MAX_PAIR = ("class Solution:\n    def maxPairSum(self, nums: List[int]) -> int:\n"
            "        s = sorted(nums)\n        return s[-1] + s[-2]\n")
AVERAGE = "n = int(input())\nxs = list(map(int, input().split()))\nprint(f'{sum(xs) / n:.2f}')\n"
PAIRS = ("class Solution:\n    def indexPairs(self, n: int) -> List[List[int]]:\n"
         "        return [[i, j] for i in range(n) for j in range(i + 1, n)]\n")


def _fence(code: str) -> str:
    return f"<think>let me write it</think>\n```python\n{code}```"


def test_release_problems_graded_end_to_end_through_the_sandbox():
    probs = _fixture()
    bench = get_benchmark("livecodebench")
    ev = EvalParams(benchmarks=("livecodebench",), code_timeout_s=2, bootstrap=0, livecodebench_release=None)
    good = [ADD, MAX_PAIR, AVERAGE, PAIRS]
    wrong = ["print(3)\n",                                                # right on the public test only
             MAX_PAIR.replace("s[-1] + s[-2]", "float(s[-1] + s[-2]) + 1e-9"),  # exact equality: no tolerance
             "print(sum(range(10**9)))\n",                                 # over the time limit
             PAIRS.replace("[[i, j]", "[(i, j)")]                         # nested tuples are not lists
    comps = [[Completion(text=_fence(g)), Completion(text=_fence(w), finish_reason="length")]
             for g, w in zip(good, wrong)]
    rows, verdicts = grade_benchmark(bench, probs, [p.prompt for p in probs], comps, ev, show_progress=False)
    assert verdicts == [[True, False]] * 4
    assert [r["tests"] for r in rows[0::2]] == [["pass"] * 3] * 4       # public and hidden tests all run
    assert rows[1]["tests"] == ["pass", "wrong_answer", "skipped"]       # the hidden tests catch it
    assert rows[3]["verdict"] == "wrong_answer" and rows[5]["verdict"] == "time_limit"
    assert rows[7]["verdict"] == "wrong_answer"
    s = summarize_benchmark(bench, probs, verdicts, rows, ev)
    assert s["score"] == 50.0 and s["tests_source"] == ["dataset"] and s["truncated"] == 4
    assert s["breakdown"]["platform"].keys() == {"atcoder", "leetcode"}


def test_lcb_semantics_prelude_tuples_module_functions_and_wrapping():
    stdin = [CodeTest("3\n", "6\n", "stdin")]
    # the prelude: names from math, collections, itertools, ... without imports
    assert run_tests("print(factorial(int(input())))", stdin, limits=FAST)[0].verdict == "pass"
    func = [CodeTest("[3, 1]", "[1, 3]", "functional")]
    assert run_tests("def srt(a):\n    return tuple(sorted(a))\n", func, func_name="srt",
                     limits=FAST)[0].verdict == "pass"  # module-level function; a tuple result counts as a list
    nested = [CodeTest("[3, 1]", "[[1, 3]]", "functional")]
    assert run_tests("def srt(a):\n    return [tuple(sorted(a))]\n", nested, func_name="srt",
                     limits=FAST)[0].verdict == "wrong_answer"
    # statements run inside one function, as LiveCodeBench's make_function does: `global` finds nothing
    code = "n = int(input())\ndef f():\n    global n\n    return n * 2\nprint(f())\n"
    assert run_tests(code, stdin, limits=FAST)[0].verdict == "runtime_error"
    assert run_tests("import sys\nprint(6)\nsys.exit(3)\n", stdin, limits=FAST)[0].verdict == "pass"
    main_guard = "def main():\n    print(int(input()) * 2)\nif __name__ == '__main__':\n    main()\n"
    assert run_tests(main_guard, stdin, limits=FAST)[0].verdict == "pass"


def _table_engine(names, limit: int = 2):
    """An engine answering every prompt of ``names`` (first ``limit`` problems) with a program that
    looks its test inputs up in a table, and the specs it was built for."""
    import json

    from cogpo_kit.evaluation.benchmarks import build_messages

    programs = {}
    for name in names:
        opts = LoadOptions(livecodebench_path=str(FIXTURE), livecodebench_release=None)
        for p in load_problems(name, opts, limit):
            table = {t.input.strip(): t.output for t in p.tests}
            if p.func_name:
                body = (f"class Solution:\n    def {p.func_name}(self, *args):\n"
                        "        return json.loads(TABLE['\\n'.join(json.dumps(a) for a in args)])\n")
            else:
                body = "print(TABLE[sys.stdin.read().strip()], end='')\n"
            programs[build_messages(p, get_benchmark(name))[-1]["content"]] = \
                f"```python\nimport json, sys\nTABLE = {json.dumps(table)}\n{body}```"

    class Engine:
        model_id = "fake"

        def generate(self, requests):
            return [[Completion(text=programs[r.messages[-1]["content"]])] for r in requests]

        def close(self):
            pass

    built = []

    def factory(spec):
        built.append(spec)
        return Engine()

    return factory, built


def _stage_params(tmp_path, benchmarks, *extra):
    from cogpo_kit.params import load_params

    root = Path(__file__).resolve().parents[1]
    return load_params([root / "params" / "smoke.yaml"], [
        f"run.output_dir={tmp_path}", "run.run_id=lcb", f"eval.benchmarks=[{', '.join(benchmarks)}]",
        "eval.limit=2", "eval.models=[zero_shot]", f"eval.livecodebench_path={FIXTURE}",
        "eval.livecodebench_release=null", "eval.code_timeout_s=3", "eval.grader_workers=1", *extra])


def test_stage_rows_keep_the_two_benchmarks_apart(tmp_path):
    """Stage 06 on the release fixture and on the statements-only proxy: two rows, two names; the
    proxy's row can never read as the paper's LiveCodeBench."""
    from cogpo_kit.evaluation.stage import run_evaluate
    from cogpo_kit.io import read_json
    from cogpo_kit.viz import tables
    from cogpo_kit.viz.artifacts import Run

    names = ["livecodebench", "livecodebench_public"]
    factory, _ = _table_engine(names)
    run_evaluate(_stage_params(tmp_path, names), engine_factory=factory, show_progress=False)
    comp = read_json(tmp_path / "lcb" / "06_evaluate" / "comparison.json")
    assert [r["benchmark"] for r in comp["rows"]] == ["livecodebench", "livecodebench_public"]
    res = read_json(tmp_path / "lcb" / "06_evaluate" / "zero_shot" / "results.json")["benchmarks"]
    assert res["livecodebench"]["tests_source"] == ["dataset"] and res["livecodebench"]["score"] == 100.0
    assert res["livecodebench_public"]["tests_source"] == ["parsed_from_statement"]
    table = tables.results(Run(tmp_path / "lcb"), with_ci=True)
    assert list(table.index) == ["LiveCodeBench", "LiveCodeBench (public tests only)"]


def test_unisolated_sandbox_is_refused_before_generating_unless_opted_in(tmp_path, monkeypatch):
    """Where the sandbox has no namespaces (forced here: ``COGPO_SANDBOX_MODE=rlimits``) the stage stops
    before any engine is built, saying what is missing and what to set; grading refuses too; with
    ``eval.code_allow_unisolated`` it runs, and the manifest records the mode and why."""
    from cogpo_kit.evaluation.sandbox import IsolationError
    from cogpo_kit.evaluation.stage import run_evaluate

    monkeypatch.setenv("COGPO_SANDBOX_MODE", "rlimits")
    factory, built = _table_engine(["livecodebench"], limit=1)
    with pytest.raises(IsolationError, match=r"COGPO_SANDBOX_MODE=rlimits.*eval\.code_allow_unisolated=true"):
        run_evaluate(_stage_params(tmp_path, ["livecodebench"], "eval.limit=1"), engine_factory=factory,
                     show_progress=False)
    assert built == []  # no model loaded, nothing generated
    probs = _fixture()[:1]
    refused = EvalParams(benchmarks=("livecodebench",), bootstrap=0, livecodebench_release=None)
    with pytest.raises(IsolationError):
        grade_benchmark(get_benchmark("livecodebench"), probs, [probs[0].prompt],
                        [[Completion(text=_fence(ADD))]], refused, show_progress=False)

    manifest = run_evaluate(_stage_params(tmp_path, ["livecodebench"], "eval.limit=1",
                                          "eval.code_allow_unisolated=true"), engine_factory=factory,
                            show_progress=False)
    assert built and manifest["counts"]["sandbox_mode"] == "rlimits"
    iso = manifest["agents"]["sandbox_isolation"]
    assert iso["why_unisolated"] == "COGPO_SANDBOX_MODE=rlimits forces it"
    assert iso["contains"]["network: loopback"] is False
    assert any("eval.code_allow_unisolated allowed it" in n for n in manifest["notes"])
    assert manifest["models"]["zero_shot"]["status"] == "evaluated"
    from cogpo_kit.io import read_json

    res = read_json(tmp_path / "lcb" / "06_evaluate" / "zero_shot" / "results.json")["benchmarks"]
    assert res["livecodebench"]["score"] == 100.0
