"""Benchmark registry and loaders: counts of the shipped files, GPQA read in memory with a seeded
shuffle, MMLU subsets, LiveCodeBench from a test file or parsed from the statements, bad rows."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from collections import Counter
from pathlib import Path

import pytest

from cogpo_kit.evaluation.benchmarks import (REGISTRY, LoadOptions, build_messages, get_benchmark, list_benchmarks,
                                             load_problems)
from cogpo_kit.evaluation.code_tests import decode_tests, parse_atcoder_samples, parse_leetcode_examples
from cogpo_kit.io import DataError

EXPECTED = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "gsm8k": 1319, "olympiadbench": 675,
            "minerva_math": 272, "gpqa_diamond": 198, "mmlu": 14042, "livecodebench_public": 279}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_benchmark_counts(name):
    probs = load_problems(name)
    assert len(probs) == EXPECTED[name]
    bench = get_benchmark(name)
    for p in probs[:50]:
        assert p.kind == bench.kind and p.question.strip()
        if bench.kind == "math":
            assert p.gold and p.gold.strip()
        if bench.kind == "choice":
            assert p.gold in "ABCD" and len(p.choices) == 4
        if bench.kind == "code":
            assert p.tests and p.meta["tests_source"] == "parsed_from_statement"
        if bench.breakdown:
            assert bench.breakdown in p.meta


def test_registry_lists_every_benchmark():
    names = [n for n, _ in list_benchmarks()]
    # livecodebench needs the release files (tests/test_eval_livecodebench.py)
    assert names == list(REGISTRY) and set(EXPECTED) | {"livecodebench"} == set(names)
    with pytest.raises(KeyError, match="registered"):
        get_benchmark("nope")


def test_golds_are_clean():
    gsm = load_problems("gsm8k")
    assert all("," not in p.gold and "####" not in p.gold for p in gsm)
    assert load_problems("amc23")[0].gold == "27"           # "27.0" in the file
    assert load_problems("aime25")[0].gold == "70"
    assert not load_problems("aime25")[0].question.endswith("\\boxed{}.")
    assert load_problems("minerva_math")[0].gold == "1.6"   # last \boxed of the solution


def test_gpqa_choices_shuffled_with_the_seed_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = load_problems("gpqa_diamond", LoadOptions(seed=0))
    b = load_problems("gpqa_diamond", LoadOptions(seed=0))
    c = load_problems("gpqa_diamond", LoadOptions(seed=1))
    assert [(p.choices, p.gold) for p in a] == [(p.choices, p.gold) for p in b]
    assert [p.gold for p in a] != [p.gold for p in c]
    counts = Counter(p.gold for p in a)
    assert set(counts) == set("ABCD") and max(counts.values()) < 80
    assert list(tmp_path.iterdir()) == []  # nothing extracted to disk
    assert not any(Path("data/gpqa_diamond").glob("*.csv"))


def test_mmlu_subset_and_unknown_subject():
    probs = load_problems("mmlu", LoadOptions(mmlu_subjects=("abstract_algebra", "anatomy")))
    assert Counter(p.meta["subject"] for p in probs) == {"abstract_algebra": 100, "anatomy": 135}
    assert len(load_problems("mmlu", LoadOptions(mmlu_split="dev"))) == 285
    with pytest.raises(DataError, match="unknown MMLU subject"):
        load_problems("mmlu", LoadOptions(mmlu_subjects=("astrology",)))


def test_limit_is_a_seeded_subset_shared_by_all_models():
    a = load_problems("math500", LoadOptions(seed=3), limit=20)
    b = load_problems("math500", LoadOptions(seed=3), limit=20)
    c = load_problems("math500", LoadOptions(seed=4), limit=20)
    assert [p.id for p in a] == [p.id for p in b] and len(a) == 20
    assert [p.id for p in a] != [p.id for p in c]


def test_prompts_use_templates_and_choices():
    bench = get_benchmark("gpqa_diamond")
    p = load_problems("gpqa_diamond")[0]
    msgs = build_messages(p, bench, system_prompt="Be brief.")
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert "(A) " in msgs[1]["content"] and "(A, B, C or D) within \\boxed{}" in msgs[1]["content"]
    m = load_problems("math500")[0]
    assert "\\boxed{}" in build_messages(m, get_benchmark("math500"))[0]["content"]
    assert build_messages(m, get_benchmark("math500"), template="Q: {question}")[0]["content"].startswith("Q: ")


def test_statement_parsing_atcoder_and_leetcode():
    at = ("Question: x\n\nSample Input 1\n\n3\n1 2 3\n\nSample Output 1\n\n6\n\nBecause 1+2+3.\n\n"
          "Sample Input 2\n\n1\n5\n\nSample Output 2\n\n5\nYes\n\nRead the inputs from stdin")
    assert [(t.input, t.output) for t in parse_atcoder_samples(at)] == [("3\n1 2 3\n", "6\n"), ("1\n5\n", "5\nYes\n")]
    lc = ('Example 1:\n\nInput: s = "ab,c", k = 2, grid = [[1,2],[3,4]], flag = true\nOutput: [1,null]\n'
          "Explanation: ...\n\nExample 2:\n\nInput: n = 5\nOutput: 7\n")
    tests = parse_leetcode_examples(lc)
    assert [json.loads(x) for x in tests[0].input.split("\n")] == ["ab,c", 2, [[1, 2], [3, 4]], True]
    assert json.loads(tests[0].output) == [1, None] and tests[1].input == "5"
    assert all(t.testtype == "functional" for t in tests)


def _lcb_row(qid, private_compressed=True):
    public = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])
    private = json.dumps([{"input": "5 6\n", "output": "11\n", "testtype": "stdin"}])
    if private_compressed:
        private = base64.b64encode(zlib.compress(pickle.dumps(private))).decode()
    return {"question_title": "add", "question_content": "Add two numbers.", "platform": "atcoder",
            "question_id": qid, "contest_id": "abc1", "contest_date": "2024-08-01T00:00:00", "starter_code": "",
            "difficulty": "easy", "public_test_cases": public, "private_test_cases": private,
            "metadata": json.dumps({})}


def test_livecodebench_file_format_with_compressed_private_tests(tmp_path):
    f = tmp_path / "lcb.jsonl"
    f.write_text("\n".join(json.dumps(_lcb_row(q, c)) for q, c in (("abc1_a", True), ("abc1_b", False))) + "\n")
    probs = load_problems("livecodebench", LoadOptions(livecodebench_path=str(f), livecodebench_release=None))
    assert [len(p.tests) for p in probs] == [2, 2]
    assert probs[0].meta["tests_source"] == "dataset" and probs[0].tests[1].output == "11\n"
    assert "Add two numbers." in probs[0].prompt


def test_unreachable_hub_file_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="eval.livecodebench_path"):
        load_problems("livecodebench", LoadOptions(livecodebench_path="hub:test5.jsonl"))


def test_unsafe_pickle_in_test_data_is_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError):
        decode_tests(blob)


def test_bad_rows_name_file_line_and_field(tmp_path):
    d = tmp_path / "data"
    (d / "gsm8k").mkdir(parents=True)
    (d / "gsm8k" / "test.jsonl").write_text('{"question": "q1", "answer": "x #### 1"}\n{"question": "q2", "answer": "no marker"}\n')
    with pytest.raises(DataError) as err:
        load_problems("gsm8k", LoadOptions(data_dir=str(d)))
    assert "line 2" in str(err.value) and "answer" in str(err.value)
    (d / "math500").mkdir()
    (d / "math500" / "test.jsonl").write_text('{"problem": "p", "answer": "", "subject": "A", "level": 1, "unique_id": "u"}\n')
    with pytest.raises(DataError, match="line 1.*answer"):
        load_problems("math500", LoadOptions(data_dir=str(d)))
    f = tmp_path / "lcb.jsonl"
    row = _lcb_row("abc1_a")
    row["public_test_cases"], row["private_test_cases"] = "[]", ""
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="no test cases"):
        load_problems("livecodebench", LoadOptions(livecodebench_path=str(f)))
