"""LiveCodeBench code generation: its release files, and the statements-only proxy.

Two benchmarks, never mixed up:

- ``livecodebench`` — the benchmark as its authors run it: the ``livecodebench/code_generation_lite``
  release files (``test.jsonl``, ``test2.jsonl``, ... one shard per release step) with their public
  *and hidden* tests. ``eval.livecodebench_release`` names the release (the paper's "LiveCodeBench
  V2" is ``release_v2``: ``test.jsonl`` + ``test2.jsonl``, 511 problems from May 2023 to May 2024);
  its shards are joined and the problem count is checked against the release's size.
  ``eval.livecodebench_path`` is a folder holding the shards, one JSONL file, or ``hub`` (download
  the release's shards where the hub is reachable; ``hub:<file>`` for one file).
- ``livecodebench_public`` — the shipped v5 prompts (``data/livecodebench_v5_qwq``: 279 problems,
  Aug 2024 – Jan 2025) graded only on the sample tests printed in each statement, which the model
  also sees. A weaker proxy with its own name, so it can never fill the paper's LiveCodeBench row.

Rows of a release file: ``question_title``, ``question_content``, ``platform``, ``question_id``,
``contest_id``, ``contest_date``, ``starter_code``, ``difficulty``, ``public_test_cases`` (JSON
string), ``private_test_cases`` (JSON string, or base64 of zlib of a pickled JSON string),
``metadata`` (JSON string with ``func_name`` for LeetCode problems).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from cogpo_kit.evaluation.code_tests import (CodeTest, decode_tests, func_name_of, parse_atcoder_samples,
                                             parse_leetcode_examples)
from cogpo_kit.io import DataError, iter_jsonl

HUB_REPO = "livecodebench/code_generation_lite"
SHARDS = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
SHARD_SIZES = (400, 111, 101, 101, 167, 175)
"""Problems added by each release step (v1: May 2023 – Mar 2024; v2: to May 2024; v3: to Jul 2024;
v4: to Sep 2024; v5: to Jan 2025; v6: to Apr 2025), from the benchmark's README."""
RELEASE_SIZES = {f"release_v{i}": sum(SHARD_SIZES[:i]) for i in range(1, len(SHARDS) + 1)}
"""``release_v1`` 400, ``release_v2`` 511, ``release_v3`` 612, ``release_v4`` 713, ``release_v5`` 880,
``release_v6`` 1055."""


def release_shards(release: str) -> tuple[tuple[str, ...], Optional[int]]:
    """``(shard files, expected problem count)`` of a release name as the dataset names them:
    ``release_vN`` (cumulative), ``release_latest`` (every shard; count not fixed), ``vN`` (one
    step), ``vA_vB`` (steps A to B)."""
    m = re.fullmatch(r"release_v(\d)", release)
    if m and 1 <= int(m.group(1)) <= len(SHARDS):
        n = int(m.group(1))
        return SHARDS[:n], RELEASE_SIZES[release]
    if release == "release_latest":
        return SHARDS, None
    m = re.fullmatch(r"v(\d)(?:_v(\d))?", release)
    if m:
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if 1 <= a <= b <= len(SHARDS):
            return SHARDS[a - 1:b], sum(SHARD_SIZES[a - 1:b])
    raise DataError(f"unknown LiveCodeBench release {release!r} (known: {', '.join(RELEASE_SIZES)}, "
                    "release_latest, v1..v6, vA_vB)", field="eval.livecodebench_release")


def lcb_prompt(question: str, starter: str) -> str:
    """The generation prompt (LiveCodeBench's formatting instructions, as QwQ's evaluation words it)."""
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


def _req(obj: dict, key: str, path: Path, line: int):
    val = obj.get(key)
    if val is None or (isinstance(val, str) and not val.strip()):
        raise DataError("missing or empty", path=path, line=line, field=key)
    return val


def _load_release_file(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError("LiveCodeBench release file not found", path=path, field="eval.livecodebench_path")
    out = []
    for n, o in iter_jsonl(path):
        if not isinstance(o, dict):
            raise DataError("expected a JSON object", path=path, line=n)
        qid = str(_req(o, "question_id", path, n))
        starter = o.get("starter_code") or ""
        meta_raw = o.get("metadata") or "{}"
        try:
            meta = json.loads(meta_raw) if isinstance(meta_raw, str) else dict(meta_raw)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise DataError("metadata is not a JSON object", path=path, line=n, field="metadata") from None
        try:
            public = decode_tests(o.get("public_test_cases"))
            private = decode_tests(o.get("private_test_cases"))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a data error
            raise DataError(f"cannot decode test cases ({type(exc).__name__}: {exc})", path=path, line=n,
                            field="private_test_cases") from None
        tests = public + private
        if not tests:
            raise DataError("no test cases", path=path, line=n, field="public_test_cases")
        code_tests = tuple(CodeTest(t["input"], t["output"], t.get("testtype", "stdin")) for t in tests)
        func = meta.get("func_name") or func_name_of(starter)
        if any(t.testtype == "functional" for t in code_tests) and not func:
            raise DataError("functional tests but no func_name in metadata or starter code", path=path, line=n,
                            field="metadata")
        question = _req(o, "question_content", path, n)
        out.append({"id": f"lcb-{qid}", "question": question, "gold": None, "prompt": lcb_prompt(question, starter),
                    "tests": code_tests, "func_name": func,
                    "meta": {"platform": o.get("platform") or "unknown", "difficulty": o.get("difficulty"),
                             "contest_date": o.get("contest_date"), "tests_source": "dataset",
                             "n_public_tests": len(public), "n_private_tests": len(private),
                             "n_tests": len(code_tests), "file": path.name}})
    return out


def _hub_file(name: str) -> Path:
    """A file of the LiveCodeBench dataset repo, downloaded (and cached) from the hub."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(HUB_REPO, name, repo_type="dataset"))
    except Exception as exc:  # noqa: BLE001 - offline, unknown file, no huggingface_hub
        raise DataError(f"cannot fetch {name} from the hub dataset {HUB_REPO} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); download the release files where the hub is reachable and set "
                        "eval.livecodebench_path to their folder", field="eval.livecodebench_path") from None


def release_files(path: str, release: Optional[str]) -> list[Path]:
    """The files to read for ``eval.livecodebench_path`` and ``eval.livecodebench_release``."""
    shards = release_shards(release)[0] if release else None
    if path == "hub":
        if not shards:
            raise DataError("livecodebench_path 'hub' needs eval.livecodebench_release",
                            field="eval.livecodebench_release")
        return [_hub_file(s) for s in shards]
    if path.startswith("hub:"):
        return [_hub_file(path[4:])]
    p = Path(path)
    if p.is_dir():
        names = shards or tuple(s for s in SHARDS if (p / s).exists())
        if not names:
            raise DataError(f"no LiveCodeBench shard ({', '.join(SHARDS)}) in this folder", path=p,
                            field="eval.livecodebench_path")
        missing = [s for s in names if not (p / s).exists()]
        if missing:
            raise DataError(f"{release} is {' + '.join(names)}; missing here: {', '.join(missing)}", path=p,
                            field="eval.livecodebench_path")
        return [p / s for s in names]
    return [p]


def load_livecodebench(d: Path, opt) -> list[dict]:
    """The release's problems with public and hidden tests, its shards joined, its size checked."""
    if not opt.livecodebench_path:
        raise DataError("benchmark 'livecodebench' needs the release files with their hidden tests: set "
                        "eval.livecodebench_path (a folder with test.jsonl, test2.jsonl, ... of "
                        f"{HUB_REPO}, or 'hub') and eval.livecodebench_release (the paper: release_v2). "
                        "For the public-tests-only proxy on the shipped v5 statements use benchmark "
                        "'livecodebench_public'", field="eval.livecodebench_path")
    release = opt.livecodebench_release
    expected = release_shards(release)[1] if release else None
    files = release_files(opt.livecodebench_path, release)
    rows = [r for f in files for r in _load_release_file(f)]
    if expected is not None and len(rows) != expected:
        raise DataError(f"{release} has {expected} problems, the files give {len(rows)} "
                        f"({', '.join(f.name for f in files)}); set eval.livecodebench_release to the release "
                        "these files hold (or null to skip the check)", path=files[0],
                        field="eval.livecodebench_release")
    for r in rows:
        r["meta"]["release"] = release or "unchecked"
    return rows


def load_livecodebench_public(d: Path, opt) -> list[dict]:
    """The shipped v5 prompts, graded on the sample tests parsed from each statement."""
    p = d / "livecodebench_v5_qwq" / "livecodebench_v5.jsonl"
    if not p.exists():
        raise DataError("benchmark file not found (see data/*/SOURCE.md)", path=p)
    out = []
    for n, o in iter_jsonl(p):
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
