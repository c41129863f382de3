"""CoT loaders: GSM8K, LIMO, mapped files (JSONL / JSON array / parquet / folder), conversations formats."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cogpo_kit.data import loaders
from cogpo_kit.data.config import DataParams
from cogpo_kit.data.loaders import load_cot
from cogpo_kit.data.parsers import last_boxed
from cogpo_kit.io import DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def stratos_reply(thought: str, solution: str) -> str:
    return (f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>")


STRATOS_ROWS = [
    {"system": "Your role as an assistant involves thoroughly exploring questions...",
     "conversations": [{"from": "user", "value": "Return your final response within \\boxed{}. What is 1/2 + 0?"},
                       {"from": "assistant", "value": stratos_reply(
                           "Half plus nothing is half. Wait, check: 1/2 + 0 = 1/2.",
                           "The sum is \\(\\boxed{\\frac{1}{2}}\\).")}]},
    {"system": "sys",
     "conversations": [{"from": "user", "value": "Write a function that prints hi."},
                       {"from": "assistant", "value": stratos_reply("Just print it.", "def f():\n    print('hi')")}]},
    {"system": "sys",
     "conversations": [{"from": "user", "value": "First try \\boxed{1} then \\boxed{2}?"},
                       {"from": "assistant", "value": stratos_reply("Two boxes.", "\\boxed{1} or rather \\boxed{2}")}]},
]


# ---------------------------------------------------------------- GSM8K

def test_gsm8k_parsing_removes_annotations_and_splits_answer(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [
        {"question": "How many?", "answer": "She has 2*3 = <<2*3=6>>6 apples.\nThen 6*500 = <<6*500=3000>>3000.\n#### 3,000"},
        {"question": "And now?", "answer": "Add 1 + 1 = <<1+1=2>>2.\n####  2 "},
    ])
    recs, rep = load_cot(DataParams(source="gsm8k_train", path=str(f), shuffle=False))
    assert [r.id for r in recs] == ["gsm8k-train-0", "gsm8k-train-1"]
    assert recs[0].problem == "How many?"
    assert recs[0].answer == "3000"
    assert recs[0].reasoning == "She has 2*3 = 6 apples.\nThen 6*500 = 3000."
    assert recs[1].answer == "2"
    assert recs[0].meta == {"answer": "She has 2*3 = <<2*3=6>>6 apples.\nThen 6*500 = <<6*500=3000>>3000.\n#### 3,000"}
    assert recs[0].source == "gsm8k_train"
    assert (rep.read, rep.valid, rep.kept, rep.rejected) == (2, 2, 2, {})


def test_gsm8k_without_hash_line_is_bad_format(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [{"question": "Q", "answer": "no final line"}])
    with pytest.raises(DataError) as ei:
        load_cot(DataParams(source="gsm8k_train", path=str(f)))
    assert ei.value.line == 1 and ei.value.field == "answer" and "####" in str(ei.value)


def test_shipped_gsm8k_train():
    recs, rep = load_cot(DataParams(source="gsm8k_train", shuffle=False))
    assert rep.read == rep.valid == rep.kept == 7473 and rep.n_rejected == 0
    first = recs[0]
    assert first.id == "gsm8k-train-0" and first.answer == "72"
    assert first.reasoning == ("Natalia sold 48/2 = 24 clips in May.\n"
                               "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert not any("<<" in r.reasoning or "####" in r.reasoning or "," in r.answer for r in recs)
    assert len({r.id for r in recs}) == 7473


# ---------------------------------------------------------------- LIMO

def test_shipped_limo_traces():
    recs, rep = load_cot(DataParams(source="limo", shuffle=False))
    assert rep.read == rep.valid == 291
    assert all(re.fullmatch(r"limo-\d+", r.id) for r in recs)
    assert recs[0].id == "limo-3" and recs[0].answer == "841"
    assert recs[0].reasoning.startswith("Okay, so I have this problem")
    assert set(recs[0].meta) == {"id", "similarity_score"} and recs[0].meta["id"] == 3
    # SOURCE.md: the last \boxed{} of every trace equals gold_answer
    assert all(last_boxed(r.reasoning) == r.answer for r in recs)


# ---------------------------------------------------------------- mapped files

def test_file_with_field_mapping_and_generated_ids(tmp_path):
    f = write_jsonl(tmp_path / "mine.jsonl", [
        {"q": "What is 2+2?", "cot": "2+2 is 4.", "final": 4, "level": 1},
        {"q": "What is 0.5*3?", "cot": "Half of 3.", "final": 1.5, "level": 2},
    ])
    cfg = DataParams(source="file", path=str(f), fields={"problem": "q", "reasoning": "cot", "answer": "final"},
                     shuffle=False)
    recs, rep = load_cot(cfg)
    assert [r.id for r in recs] == ["mine-0", "mine-1"]
    assert [r.answer for r in recs] == ["4", "1.5"]
    assert recs[0].problem == "What is 2+2?" and recs[0].reasoning == "2+2 is 4."
    assert recs[0].meta == {"level": 1} and recs[0].source == "file"


def test_file_mapped_id_must_be_present(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"uid": 7, "problem": "p", "answer": "a", "reasoning": "r"},
                                           {"problem": "p2", "answer": "a", "reasoning": "r"}])
    with pytest.raises(DataError) as ei:
        load_cot(DataParams(source="file", path=str(f), fields={"id": "uid"}))
    assert (ei.value.line, ei.value.field) == (2, "uid")
    assert "read as 'id'" in str(ei.value)


def test_json_array_reports_element_start_lines(tmp_path):
    rows = [{"id": i, "problem": f"p{i}", "answer": str(i), "reasoning": f"r{i}"} for i in range(3)]
    rows[2]["answer"] = {"value": 2}
    f = tmp_path / "arr.json"
    f.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    recs, rep = load_cot(DataParams(source="file", path=str(f), shuffle=False, on_invalid="reject"))
    assert [r.id for r in recs] == ["0", "1"]
    text = f.read_text().splitlines()
    bad = rep.rejects[0]
    assert bad.field == "answer" and bad.reason == "wrong_type"
    assert text[bad.line - 1].strip() == "{" and '"id": 2' in text[bad.line]


def test_json_array_that_does_not_parse_names_the_line(tmp_path):
    f = tmp_path / "arr.json"
    f.write_text('[\n {"problem": "p", "answer": "a", "reasoning": "r"},\n {"problem": "q",,}\n]\n')
    with pytest.raises(DataError) as ei:
        load_cot(DataParams(source="file", path=str(f), on_invalid="reject"))
    assert ei.value.line == 3


def test_parquet_file(tmp_path):
    table = pa.table({"id": [10, 11], "problem": ["a?", "b?"], "answer": [1.0, 2.5], "reasoning": ["ra", "rb"],
                      "tags": [["x"], ["y", "z"]]})
    f = tmp_path / "d.parquet"
    pq.write_table(table, f)
    recs, rep = load_cot(DataParams(source="file", path=str(f), shuffle=False))
    assert [(r.id, r.answer) for r in recs] == [("10", "1.0"), ("11", "2.5")]
    assert recs[1].meta == {"tags": ["y", "z"]}


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_cot(DataParams(source="file", path=str(tmp_path / "x.csv")))
    with pytest.raises(DataError, match="file not found"):
        load_cot(DataParams(source="file", path=str(tmp_path / "nope.jsonl")))


# ---------------------------------------------------------------- conversations (Bespoke / OpenThoughts / Sky-T1)

def test_bespoke_stratos_local_export(tmp_path):
    f = write_jsonl(tmp_path / "stratos.jsonl", STRATOS_ROWS)
    recs, rep = load_cot(DataParams(source="bespoke_stratos", path=str(f), shuffle=False))
    assert rep.valid == 3 and rep.paths == [str(f)]
    r0, r1, r2 = recs
    assert r0.id == "bespoke_stratos-0" and r0.source == "bespoke_stratos"
    assert r0.problem == "What is 1/2 + 0?" and r0.answer == "\\frac{1}{2}"
    assert r0.reasoning == "Half plus nothing is half. Wait, check: 1/2 + 0 = 1/2."
    assert r0.meta["solution"] == "The sum is \\(\\boxed{\\frac{1}{2}}\\)."
    assert r0.meta["system"].startswith("Your role") and "conversations" not in r0.meta
    assert r1.answer == "def f():\n    print('hi')"  # no \boxed: the solution itself
    assert r2.answer == "2"  # the last box


# ---------------------------------------------------------------- the dataset's own answer-format instruction

# Rows as Bespoke-Stratos-17k / OpenThoughts-114k hold them (the generation code of both: a ShareGPT row with
# the Sky-T1 system prompt; math problems prefixed "Return your final response within \\boxed{}. ", code
# problems with the APPS/TACO instruction glued to the statement and any starter code after a newline;
# science and puzzle problems as they are).
SKY_T1_SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a systematic long "
                 "thinking process before providing the final precise and accurate solutions. ...")
CODE_STDIN = ("Generate an executable Python function generated from the given prompt. The function should take "
              "stdin as input and print the output. Simply call the function after the definition.")
CODE_FUNCTION = ("Generate an executable Python function generated from the given prompt. Return the function "
                 "body without invoking it at the final solution.")
STARTER = "class Solution:\n    def countPairs(self, nums: List[int]) -> int:\n        "
MATH_PROBLEM = ("The operation $\\otimes$ is defined for all nonzero numbers by $a\\otimes b =\\frac{a^{2}}{b}$. "
                "Determine $[(1\\otimes 2)\\otimes 3]-[1\\otimes (2\\otimes 3)]$.")
STDIN_PROBLEM = "Vasya has n coins.\n\n-----Input-----\n\nOne integer n.\n\n-----Output-----\n\nPrint n + 1."
FUNCTION_PROBLEM = "Given an array nums, return the number of pairs i < j with nums[i] == nums[j]."
SCIENCE_PROBLEM = "Which gas do plants take in for photosynthesis?"
QUOTING_PROBLEM = ("A grader asks models to Return your final response within \\boxed{}. How many words does "
                   "that sentence have?")


def bespoke_row(user: str, thought: str, solution: str) -> dict:
    return {"system": SKY_T1_SYSTEM,
            "conversations": [{"from": "user", "value": user},
                              {"from": "assistant", "value": stratos_reply(thought, solution)}]}


BESPOKE_ROWS = [
    bespoke_row("Return your final response within \\boxed{}. " + MATH_PROBLEM, "Compute both sides.",
                "The difference is \\boxed{A}."),
    bespoke_row(CODE_STDIN + STDIN_PROBLEM, "Read n, print n + 1.",
                "```python\ndef main():\n    print(int(input()) + 1)\nmain()\n```"),
    bespoke_row(CODE_FUNCTION + FUNCTION_PROBLEM + "\n" + STARTER, "Count equal values.",
                "```python\nclass Solution:\n    def countPairs(self, nums):\n        return 0\n```"),
    bespoke_row(SCIENCE_PROBLEM, "Carbon dioxide.", "\\boxed{CO_2}"),
    bespoke_row(QUOTING_PROBLEM, "Count them.", "\\boxed{7}"),
]
"""Three problems with the dataset's instruction (math, code stdin, code call-based), two without."""


def test_bespoke_answer_format_instruction_is_stripped_and_counted(tmp_path):
    f = write_jsonl(tmp_path / "bespoke.jsonl", BESPOKE_ROWS)
    recs, rep = load_cot(DataParams(source="bespoke_stratos", path=str(f), shuffle=False))
    math, stdin, function, science, quoting = recs
    assert math.problem == MATH_PROBLEM and math.answer == "A"
    # a code row's instruction says what program to write (stdin or a function body): it stays
    assert stdin.problem == CODE_STDIN + STDIN_PROBLEM
    assert function.problem == CODE_FUNCTION + FUNCTION_PROBLEM + "\n" + STARTER
    assert science.problem == SCIENCE_PROBLEM and quoting.problem == QUOTING_PROBLEM  # nothing to strip
    assert math.meta["format_instructions"] == ["Return your final response within \\boxed{}."]
    assert all("format_instructions" not in r.meta for r in (stdin, function, science, quoting))
    assert not any("Return your final response" in r.problem for r in (math, stdin, function))
    assert rep.stripped == 1
    assert rep.stripped_by_instruction == {"boxed": 1}
    d = rep.to_dict()
    assert d["format_instructions_stripped"] == 1 and d["format_instructions"] == rep.stripped_by_instruction
    assert (rep.read, rep.valid, rep.n_rejected) == (5, 5, 0)


def test_stripping_can_be_turned_off(tmp_path):
    f = write_jsonl(tmp_path / "bespoke.jsonl", BESPOKE_ROWS)
    recs, rep = load_cot(DataParams(source="bespoke_stratos", path=str(f), shuffle=False,
                                    strip_format_instructions=False))
    assert [r.problem for r in recs] == [r["conversations"][0]["value"] for r in BESPOKE_ROWS]
    assert rep.stripped == 0 and rep.stripped_by_instruction == {}
    assert not any("format_instructions" in r.meta for r in recs)


def test_openthoughts_parquet_counts_the_valid_rows_before_the_limit(tmp_path):
    # OpenThoughts-114k's default config: the same system + conversations rows, parquet shards
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(BESPOKE_ROWS), tmp_path / "data" / "train-00000-of-00001.parquet")
    recs, rep = load_cot(DataParams(source="openthoughts", path=str(tmp_path), limit=2, seed=3))
    assert rep.stripped == 1 and rep.kept == 2  # counted over the valid rows, before the limit
    assert all(not r.problem.startswith("Return your final") for r in recs)


def test_sky_t1_variants_and_trailing_instructions(tmp_path):
    rows = [  # Sky-T1's generation code concatenated "\\boxed{{}}" unformatted; its 32B-Preview prompt puts it last
        bespoke_row("Return your final response within \\boxed{{}}. What is 2+3?", "5", "\\boxed{5}"),
        bespoke_row("What is 2+4?\nReturn your final response within \\boxed{}", "6", "\\boxed{6}"),
        bespoke_row("What is 2+5? Please reason step by step, and put your final answer within \\boxed{}.",
                    "7", "\\boxed{7}"),
        bespoke_row("Return your final response within \\boxed{} and only include the letter choice (A, B, C, or D) "
                    "as your final response. Which is prime?\nA) 4, B) 6, C) 7, D) 9", "7 is.", "\\boxed{C}"),
    ]
    f = write_jsonl(tmp_path / "sky.jsonl", rows)
    recs, rep = load_cot(DataParams(source="sky_t1", path=str(f), shuffle=False))
    assert [r.problem for r in recs] == ["What is 2+3?", "What is 2+4?", "What is 2+5?",
                                         "Which is prime?\nA) 4, B) 6, C) 7, D) 9"]
    assert rep.stripped_by_instruction == {"boxed": 1, "boxed_trailing": 1, "step_by_step_boxed": 1,
                                           "boxed_letter": 1}


def test_a_problem_that_is_only_the_instruction_is_rejected(tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [BESPOKE_ROWS[0],
                                           bespoke_row("Return your final response within \\boxed{}. ", "t", "s")])
    recs, rep = load_cot(DataParams(source="bespoke_stratos", path=str(f), on_invalid="reject"))
    assert len(recs) == 1 and rep.rejected == {"empty_field": 1} and rep.stripped == 1
    assert "only an answer-format instruction" in rep.rejects[0].message and rep.rejects[0].line == 2


def test_critique_stage_sees_one_instruction_and_reports_the_count(tmp_path):
    from cogpo_kit.crv.agents import ROLES
    from cogpo_kit.crv.stage import run_critique
    from cogpo_kit.engines.scripted import ScriptedEngine
    from cogpo_kit.params import load_params

    f = write_jsonl(tmp_path / "bespoke.jsonl", BESPOKE_ROWS)
    params = load_params([], [f"run.output_dir={tmp_path}", "run.run_id=t", "data.source=bespoke_stratos",
                              f"data.path={f}", "data.shuffle=false"])
    seen = []

    def critic(req, i):
        seen.append(req.messages[-1]["content"])
        return "medium"

    engine = ScriptedEngine(critic)
    manifest = run_critique(params, engines={r: engine for r in ROLES})
    assert manifest["funnel"]["input"]["format_instructions_stripped"] == 1
    assert manifest["funnel"]["input"]["format_instructions"] == {"boxed": 1}
    assert seen and not any("Return your final response within" in m and "A grader asks" not in m for m in seen)
    written = [json.loads(x) for x in (tmp_path / "t" / "01_critique" / "input.jsonl").read_text().splitlines()]
    assert written[0]["problem"] == MATH_PROBLEM


def test_openthoughts_parquet_folder(tmp_path):
    # the hub snapshot layout: data/train-0000K-of-0000N.parquet; ids run across the shards
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(STRATOS_ROWS[:2]), tmp_path / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(STRATOS_ROWS[2:]), tmp_path / "data" / "train-00001-of-00002.parquet")
    (tmp_path / "README.md").write_text("card")
    recs, rep = load_cot(DataParams(source="openthoughts", path=str(tmp_path), shuffle=False))
    assert [r.answer for r in recs] == ["\\frac{1}{2}", "def f():\n    print('hi')", "2"]
    assert [r.id for r in recs] == ["openthoughts-0", "openthoughts-1", "openthoughts-2"]
    assert (rep.read, rep.valid, rep.n_rejected) == (3, 3, 0)


def test_sky_t1_json_array_and_role_content_and_think_tags(tmp_path):
    rows = [
        {"system": "s", "conversations": [{"role": "user", "content": "2+3?"},
                                          {"role": "assistant", "content": stratos_reply("2+3=5", "**5**")}]},
        {"conversations": [{"from": "human", "value": "3+3?"},
                           {"from": "gpt", "value": "<think>\nthree and three\n</think>\n\nSo \\boxed{6}."}]},
    ]
    f = tmp_path / "Sky-T1_data_17k.json"
    f.write_text(json.dumps(rows), encoding="utf-8")
    recs, _ = load_cot(DataParams(source="sky_t1", path=str(f), shuffle=False))
    assert [(r.problem, r.answer, r.reasoning) for r in recs] == [("2+3?", "**5**", "2+3=5"),
                                                                 ("3+3?", "6", "three and three")]
    assert recs[1].meta["solution"] == "So \\boxed{6}."


@pytest.mark.parametrize("conv, reason, text", [
    ([{"from": "user", "value": "q"}, {"from": "assistant", "value": "just an answer"}], "bad_format", "markers"),
    ([{"from": "user", "value": "q"}], "bad_format", "no assistant turn"),
    ([{"from": "assistant", "value": stratos_reply("t", "s")}], "bad_format", "no user turn"),
    ("not a list", "wrong_type", "expected a list"),
    ([{"from": "user", "value": "q"}, {"from": "assistant", "value": stratos_reply("", "\\boxed{1}")}],
     "empty_field", "read as 'reasoning'"),
])
def test_conversation_format_problems(tmp_path, conv, reason, text):
    f = write_jsonl(tmp_path / "c.jsonl", [STRATOS_ROWS[0], {"conversations": conv}])
    recs, rep = load_cot(DataParams(source="bespoke_stratos", path=str(f), on_invalid="reject"))
    assert rep.valid == 1 and rep.rejected == {reason: 1}
    bad = rep.rejects[0]
    assert (bad.line, bad.field) == (2, "conversations") and text in bad.message


def test_hub_name_without_hub_is_a_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=3.0: False)
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(DataError) as ei:
        load_cot(DataParams(source="bespoke_stratos"))
    msg = str(ei.value)
    assert "bespokelabs/Bespoke-Stratos-17k" in msg and "data.path" in msg and "no hub is reachable" in msg
    assert datasets.config.HF_HUB_OFFLINE == before  # offline switch restored


# ---------------------------------------------------------------- shuffle / limit / config

def _numbers_file(tmp_path, n=50):
    return write_jsonl(tmp_path / "n.jsonl", [{"problem": f"p{i}", "answer": i, "reasoning": f"r{i}"} for i in range(n)])


def test_shuffle_with_seed_then_limit(tmp_path):
    f = str(_numbers_file(tmp_path))
    a, rep = load_cot(DataParams(source="file", path=f, seed=1, limit=10))
    b, _ = load_cot(DataParams(source="file", path=f, seed=1, limit=10))
    c, _ = load_cot(DataParams(source="file", path=f, seed=2, limit=10))
    ordered, _ = load_cot(DataParams(source="file", path=f, shuffle=False, limit=10))
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c]
    assert [r.id for r in ordered] == [f"n-{i}" for i in range(10)]
    assert (rep.read, rep.valid, rep.kept) == (50, 50, 10)
    every, _ = load_cot(DataParams(source="file", path=f, seed=1))
    assert [r.id for r in every][:10] == [r.id for r in a] and len(every) == 50


def test_limit_counts_valid_rows_only(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": "", "answer": 1, "reasoning": "r"}] * 5
                    + [{"problem": f"p{i}", "answer": i, "reasoning": "r"} for i in range(3)])
    recs, rep = load_cot(DataParams(source="file", path=str(f), limit=3, on_invalid="reject"))
    assert len(recs) == 3 and rep.rejected == {"empty_field": 5}


@pytest.mark.parametrize("cfg, text", [
    (DataParams(source="nope"), "unknown data source 'nope'"),
    (DataParams(source="file"), "needs data.path"),
    (DataParams(source="limo", fields={"problem": "q"}), "applies to source 'file' only"),
    (DataParams(source="file", path="x.jsonl", fields={"question": "q"}), "unknown field"),
    (DataParams(source="limo", limit=-1), "data.limit"),
])
def test_config_errors(cfg, text):
    with pytest.raises(DataError, match=re.escape(text)):
        load_cot(cfg)


# ---------------------------------------------------------------- names or files

def test_load_source_recognises_file_formats():
    from cogpo_kit.data.loaders import load_source
    from cogpo_kit.data.readers import data_root

    recs, rep = load_source(str(data_root() / "limo_r1_distill_cot" / "official-solution.jsonl"))
    assert rep.source == "limo" and len(recs) == 497 and recs[0].id == "limo-1"
    recs, rep = load_source(str(data_root() / "gsm8k" / "test.jsonl"))
    assert rep.source == "gsm8k" and recs[0].id == "gsm8k-test-0" and len(recs) == 1319
    recs, rep = load_source("gsm8k_train")
    assert len(recs) == 7473 and recs[0].id == "gsm8k-train-0"  # file order, no limit
    with pytest.raises(DataError, match="no CoT format recognised"):
        load_source(str(data_root() / "math500" / "test.jsonl"))
