"""Loaders for the shipped benchmark files (``data/<name>/``, see each folder's SOURCE.md).

Each loader returns dicts with the fields of :class:`~cogpo_kit.evaluation.benchmarks.Problem`
(except ``kind``). A row missing a required field raises :class:`~cogpo_kit.io.DataError` naming
the file, line and field. GPQA is read from its password-protected zip in memory only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

from cogpo_kit.evaluation.answer_extraction import boxed_answer
from cogpo_kit.evaluation.code_tests import (CodeTest, decode_tests, func_name_of, parse_atcoder_samples,
                                             parse_leetcode_examples)
from cogpo_kit.io import DataError, iter_jsonl

AIME25_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def _rows(path: Path):
    if not path.exists():
        raise DataError("benchmark file not found (see data/*/SOURCE.md)", path=path)
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", path=path, line=lineno)
        yield lineno, obj


def _req(obj: dict, key: str, path: Path, line: int) -> Any:
    val = obj.get(key)
    if val is None or (isinstance(val, str) and not val.strip()):
        raise DataError("missing or empty", path=path, line=line, field=key)
    return val


def _num_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    s = str(v).strip()
    return s[:-2] if re.fullmatch(r"-?\d+\.0", s) else s


def load_aime24(d: Path, opt) -> list[dict]:
    p = d / "aime24" / "test.jsonl"
    return [{"id": f"aime24-{_req(o, 'id', p, n)}", "question": _req(o, "problem", p, n),
             "gold": _num_text(_req(o, "answer", p, n)), "meta": {"url": o.get("url", "")}} for n, o in _rows(p)]


def load_aime25(d: Path, opt) -> list[dict]:
    p = d / "aime25" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        q = _req(o, "prompt", p, n)
        q = q[: -len(AIME25_SUFFIX)] if q.endswith(AIME25_SUFFIX) else q
        out.append({"id": f"aime25-{n - 1}", "question": q.strip(), "gold": _num_text(_req(o, "answer", p, n)),
                    "meta": {"part": "I" if n <= 15 else "II"}})
    return out


def load_amc23(d: Path, opt) -> list[dict]:
    p = d / "amc23" / "test.jsonl"
    return [{"id": f"amc23-{_req(o, 'id', p, n)}", "question": _req(o, "problem", p, n),
             "gold": _num_text(_req(o, "answer", p, n)), "meta": {"url": o.get("url", "")}} for n, o in _rows(p)]


def load_math500(d: Path, opt) -> list[dict]:
    p = d / "math500" / "test.jsonl"
    return [{"id": _req(o, "unique_id", p, n), "question": _req(o, "problem", p, n),
             "gold": str(_req(o, "answer", p, n)),
             "meta": {"subject": _req(o, "subject", p, n), "level": int(_req(o, "level", p, n))}} for n, o in _rows(p)]


def load_gsm8k(d: Path, opt) -> list[dict]:
    p = d / "gsm8k" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        ans = _req(o, "answer", p, n)
        if "####" not in ans:
            raise DataError("answer has no '#### <number>' line", path=p, line=n, field="answer")
        gold = ans.rsplit("####", 1)[1].strip().replace(",", "")
        out.append({"id": f"gsm8k-{n - 1}", "question": _req(o, "question", p, n), "gold": gold, "meta": {}})
    return out


def load_olympiadbench(d: Path, opt) -> list[dict]:
    p = d / "olympiadbench" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        finals = _req(o, "final_answer", p, n)
        if not isinstance(finals, list) or not finals:
            raise DataError("expected a non-empty list", path=p, line=n, field="final_answer")
        gold = ", ".join(str(a).strip().strip("$").strip() for a in finals)
        question = _req(o, "question", p, n)
        ctx = o.get("context")
        if ctx and str(ctx).strip() not in ("", "None"):
            question = f"{ctx}\n\n{question}"
        unit = o.get("unit")
        meta = {"subfield": o.get("subfield") or "unknown", "answer_type": o.get("answer_type"),
                "is_multiple_answer": bool(o.get("is_multiple_answer")),
                "unit": None if unit in (None, "None") else unit}
        out.append({"id": f"olympiadbench-{_req(o, 'id', p, n)}", "question": question, "gold": gold, "meta": meta})
    return out


def load_minerva(d: Path, opt) -> list[dict]:
    p = d / "minerva_math" / "test.jsonl"
    out = []
    for n, o in _rows(p):
        gold = boxed_answer(_req(o, "solution", p, n))
        if gold is None:
            raise DataError("solution has no \\boxed{} answer", path=p, line=n, field="solution")
        out.append({"id": f"minerva-{o.get('idx', n - 1)}", "question": _req(o, "problem", p, n), "gold": gold,
                    "meta": {"type": o.get("type") or "unknown"}})
    return out


def load_mmlu(d: Path, opt) -> list[dict]:
    split = opt.mmlu_split
    p = d / "mmlu" / f"{split}.jsonl"
    wanted = set(opt.mmlu_subjects)
    out, seen = [], set()
    for n, o in _rows(p):
        subject = _req(o, "subject", p, n)
        seen.add(subject)
        if wanted and subject not in wanted:
            continue
        gold = str(_req(o, "answer", p, n)).strip().upper()
        if gold not in ("A", "B", "C", "D"):
            raise DataError(f"answer must be A-D, got {gold!r}", path=p, line=n, field="answer")
        choices = tuple(str(o.get(k, "")) for k in "ABCD")
        out.append({"id": f"mmlu-{split}-{n - 1}", "question": _req(o, "question", p, n), "gold": gold,
                    "choices": choices, "meta": {"subject": subject}})
    unknown = wanted - seen
    if unknown:
        raise DataError(f"unknown MMLU subject(s) {sorted(unknown)}; known: {', '.join(sorted(seen))}", path=p)
    return out


def _gpqa_password(folder: Path) -> bytes:
    env = os.environ.get("GPQA_ZIP_PASSWORD")
    if env:
        return env.encode()
    src = folder / "SOURCE.md"
    m = re.search(r"password:\s*`([^`]+)`", src.read_text(encoding="utf-8"), re.IGNORECASE) if src.exists() else None
    if not m:
        raise DataError("GPQA zip password not found (set GPQA_ZIP_PASSWORD or keep data/gpqa_diamond/SOURCE.md)",
                        path=src)
    return m.group(1).encode()


def load_gpqa_diamond(d: Path, opt) -> list[dict]:
    folder = d / "gpqa_diamond"
    zpath = folder / "dataset.zip"
    if not zpath.exists():
        raise DataError("GPQA zip not found", path=zpath)
    try:
        with zipfile.ZipFile(zpath) as zf:  # read in memory only: never extracted to disk
            raw = zf.read("dataset/gpqa_diamond.csv", pwd=_gpqa_password(folder))
    except RuntimeError as exc:
        raise DataError(f"cannot read dataset/gpqa_diamond.csv ({exc})", path=zpath) from None
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    out = []
    for n, row in enumerate(reader, start=2):
        rid = (row.get("Record ID") or "").strip()
        where = f"{zpath}!dataset/gpqa_diamond.csv"
        for key in ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"):
            if not (row.get(key) or "").strip():
                raise DataError("missing or empty", path=where, line=n, field=key)
        options = [row["Correct Answer"].strip()] + [row[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
        order = list(range(4))
        random.Random(f"{opt.seed}:{rid or n}").shuffle(order)
        choices = tuple(options[i] for i in order)
        gold = "ABCD"[order.index(0)]
        out.append({"id": f"gpqa-{rid or n}", "question": row["Question"].strip(), "gold": gold, "choices": choices,
                    "meta": {"domain": row.get("High-level domain") or "unknown", "subdomain": row.get("Subdomain")}})
    return out


def _lcb_prompt(question: str, starter: str) -> str:
    head = ("You will be given a question (problem specification) and will generate a correct Python program that "
            "matches the specification and passes all tests.\n\n")
    if starter.strip():
        tail = ("You will use the following starter code to write the solution to the problem and enclose your code "
                f"within delimiters.\n```python\n{starter}\n```\n\n")
    else:
        tail = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on "
                "the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
                "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
                "```python\n# YOUR CODE HERE\n```\n\n")
    return f"{head}Question: {question}\n\n{tail}"


def _load_lcb_file(path: Path) -> list[dict]:
    out = []
    for n, o in _rows(path):
        qid = str(_req(o, "question_id", path, n))
        starter = o.get("starter_code") or ""
        meta_raw = o.get("metadata") or "{}"
        meta = json.loads(meta_raw) if isinstance(meta_raw, str) else dict(meta_raw)
        try:
            tests = decode_tests(o.get("public_test_cases")) + decode_tests(o.get("private_test_cases"))
        except Exception as exc:
            raise DataError(f"cannot decode test cases ({exc})", path=path, line=n, field="private_test_cases") from None
        if not tests:
            raise DataError("no test cases", path=path, line=n, field="public_test_cases")
        code_tests = tuple(CodeTest(t["input"], t["output"], t.get("testtype", "stdin")) for t in tests)
        func = meta.get("func_name") or func_name_of(starter)
        question = _req(o, "question_content", path, n)
        out.append({"id": f"lcb-{qid}", "question": question, "gold": None, "prompt": _lcb_prompt(question, starter),
                    "tests": code_tests, "func_name": func,
                    "meta": {"platform": o.get("platform") or "unknown", "difficulty": o.get("difficulty"),
                             "contest_date": o.get("contest_date"), "tests_source": "dataset",
                             "n_tests": len(code_tests)}})
    return out


LCB_HUB_REPO = "livecodebench/code_generation_lite"


def _hub_file(name: str) -> Path:
    """``hub:test5.jsonl`` -> that file of the LiveCodeBench dataset repo, downloaded (and cached) from the hub."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(LCB_HUB_REPO, name, repo_type="dataset"))
    except Exception as exc:  # offline, unknown file, no huggingface_hub
        raise DataError(f"cannot fetch {name} from the hub dataset {LCB_HUB_REPO} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); download it where the hub is reachable and set "
                        "eval.livecodebench_path to the local file", field="eval.livecodebench_path") from None


def load_livecodebench(d: Path, opt) -> list[dict]:
    if opt.livecodebench_path:
        path = opt.livecodebench_path
        return _load_lcb_file(_hub_file(path[4:]) if path.startswith("hub:") else Path(path))
    p = d / "livecodebench_v5_qwq" / "livecodebench_v5.jsonl"
    out = []
    for n, o in _rows(p):
        qid = str(_req(o, "question_id", p, n))
        prompt = _req(o, "prompt", p, n).replace("\r\n", "\n")
        atcoder = qid.startswith(("abc", "arc", "agc"))
        if atcoder:
            tests, func = parse_atcoder_samples(prompt), None
        else:
            m = re.search(r"```python\n(.*?)```", prompt, re.DOTALL)
            func = func_name_of(m.group(1) if m else "")
            tests = parse_leetcode_examples(prompt)
        if not tests:
            raise DataError("no sample tests could be parsed from the statement", path=p, line=n, field="prompt")
        q = prompt.split("Question:", 1)[-1]
        out.append({"id": f"lcb-{qid}", "question": q.strip(), "gold": None, "prompt": prompt, "tests": tuple(tests),
                    "func_name": func,
                    "meta": {"platform": "atcoder" if atcoder else "leetcode", "contest_date": o.get("contest_date"),
                             "tests_source": "parsed_from_statement", "n_tests": len(tests)}})
    return out
