"""The code sandbox against hostile programs, and per-test verdicts of code problems.

Every hostile program must be contained with the right verdict, and this test process must come
out unharmed: alive, its files untouched, its secrets unread. These run in the mode the sandbox picks
for the user running the tests; ``test_sandbox_modes.py`` measures every mode as the user it is for.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cogpo_kit.evaluation.code_tests import CodeTest, extract_code, run_tests
from cogpo_kit.evaluation import sandbox
from cogpo_kit.evaluation.sandbox import (CONTAINMENT, Limits, SandboxError, isolation_mode, isolation_report,
                                          run_program)

FAST = Limits(cpu_s=1, wall_s=3, memory_mb=256, output_bytes=64 << 10, nproc=16)
ROOMY = Limits(cpu_s=10, wall_s=30, memory_mb=256, output_bytes=64 << 10, nproc=16)
"""For programs that must hit another limit than time, even on a loaded machine."""


def test_isolation_report_says_what_is_in_force():
    rep = isolation_report()
    assert rep["mode"] == isolation_mode() in ("root", "userns", "rlimits")
    assert rep["probe_verdict"] == "ok"
    assert rep["clean_env"] is True
    assert rep["rlimits"]["RLIMIT_AS"] > 0 and rep["rlimits"]["RLIMIT_FSIZE"] > 0
    assert rep["contains"] == {row: modes[rep["mode"]] for row, modes in CONTAINMENT.items()}
    if rep["mode"] in ("root", "userns"):
        assert rep["network_blocked"] and rep["private_tmp"] and rep["capabilities"] == "0000000000000000"
        assert not rep["can_signal_parent"] and not rep["parent_environ_readable"]
        assert rep["can_write_outside"] in (False, None)  # None: the current folder is not writable to test
    if rep["mode"] == "root":
        assert rep["separate_uid"]
    if rep["mode"] == "rlimits":
        assert rep["why_unisolated"]


def test_plain_program_runs_with_stdin():
    r = run_program("a, b = map(int, input().split())\nprint(a + b)", "2 40\n")
    assert (r.verdict, r.stdout) == ("ok", "42\n")


def test_infinite_loop_is_time_limit():
    r = run_program("while True:\n    pass", limits=FAST)
    assert r.verdict == "time_limit"
    assert r.wall_s < FAST.wall_s + 2


def test_sleeping_program_is_killed_at_the_wall_clock():
    start = time.monotonic()
    r = run_program("import time\ntime.sleep(60)", limits=FAST)
    assert r.verdict == "time_limit" and "wall clock" in r.reason
    assert time.monotonic() - start < FAST.wall_s + 2


def test_memory_bomb_is_memory_limit():
    r = run_program("x = bytearray(2 * 1024 ** 3)\nprint(len(x))", limits=ROOMY)
    assert r.verdict == "memory_limit"
    r = run_program("a = []\nwhile True:\n    a.append('x' * 10 ** 6)", limits=ROOMY)
    assert r.verdict == "memory_limit"


def test_huge_output_is_capped():
    r = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=FAST)
    assert r.verdict == "runtime_error" and "output limit" in r.reason
    assert len(r.stdout) <= FAST.output_bytes


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    src = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    r = run_program(src, limits=FAST)
    assert r.verdict in ("time_limit", "runtime_error")
    assert time.monotonic() - start < FAST.wall_s + 5
    # this process can still start processes, and no sandbox process survived
    assert run_program("print('alive')").stdout == "alive\n"
    if isolation_mode() == "root":
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if 200_000 <= os.stat(f"/proc/{pid}").st_uid <= 260_000:
                    state = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0]
                    if state not in (b"Z", b"X"):  # zombies are dead; reaping them is init's job
                        left.append(pid)
            except OSError:
                pass
        assert not left


def test_writing_outside_its_directory_fails_or_stays_private(tmp_path):
    target = tmp_path / "escaped.txt"  # under /tmp: hidden by the private /tmp, or writable only by this uid
    run_program(f"open({str(target)!r}, 'w').write('pwned')", limits=FAST)
    assert not target.exists()
    outside = Path(__file__).resolve().parent / f"escaped-{os.getpid()}.txt"  # the project folder
    try:
        r = run_program(f"open({str(outside)!r}, 'w').write('pwned')\nprint('wrote')", limits=FAST)
        if isolation_mode() in ("root", "userns"):
            assert not outside.exists()
            # read-only (project outside the hidden folders), or unreachable behind a private tmpfs
            assert r.verdict == "runtime_error" and ("Read-only" in r.reason or "FileNotFound" in r.reason)
    finally:
        outside.unlink(missing_ok=True)
    shared = f"/tmp/cogpo-escape-{os.getpid()}.txt"
    run_program(f"open({shared!r}, 'w').write('pwned')", limits=FAST)
    if isolation_mode() in ("root", "userns"):
        assert not os.path.exists(shared)  # went to the sandbox's private /tmp
    # its own directory is writable
    r = run_program("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())", limits=FAST)
    assert r.stdout == "ok\n"


def test_network_connection_is_refused():
    if isolation_mode() == "rlimits":
        pytest.skip("no network namespace on this system (isolation_report says so)")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    got = []

    def accept():
        try:
            got.append(srv.accept())
        except OSError:
            pass

    th = threading.Thread(target=accept)
    th.start()
    r = run_program(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')",
                    limits=FAST)
    th.join(5)
    srv.close()
    assert r.verdict == "runtime_error" and "connected" not in r.stdout
    assert not got


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("COGPO_TEST_SECRET_TOKEN", "s3cr3t-value")
    src = ("import os, glob\nprint(os.environ.get('COGPO_TEST_SECRET_TOKEN'))\n"
           f"try:\n    print(open('/proc/{os.getpid()}/environ', 'rb').read().count(b's3cr3t'))\n"
           "except OSError as e:\n    print('denied')")
    r = run_program(src, limits=FAST)
    lines = r.stdout.split()
    assert lines[0] == "None"
    if isolation_mode() in ("root", "userns"):
        assert lines[1] == "denied"  # another uid, or another PID namespace
    assert "s3cr3t" not in r.stdout


def test_signalling_the_parent_fails():
    if isolation_mode() == "rlimits":
        pytest.skip("a separate uid or PID namespace is needed to protect the parent (isolation_report says so)")
    me = os.getpid()
    r = run_program(f"import os, signal\nos.kill({me}, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)",
                    limits=FAST)
    # root: another uid may not signal it; userns: no such process in the program's PID namespace
    assert r.verdict == "runtime_error" and any(s in r.reason for s in ("Operation not permitted", "No such process"))
    assert os.getpid() == me  # still here


def test_a_sandbox_that_cannot_start_raises_and_a_program_cannot_fake_it(monkeypatch):
    # a program exiting as a failed start-up would, after printing its word for "started", is just a program
    r = run_program("import sys\nprint('ready')\nsys.stderr.write('sandbox setup failed')\nsys.exit(125)", limits=FAST)
    assert (r.verdict, r.returncode) == ("runtime_error", 125)
    if isolation_mode() == "rlimits":
        pytest.skip("no namespace program to fail in rlimits mode")
    monkeypatch.setattr(sandbox, "_UNSHARE", "/bin/false")  # the namespaces are refused
    with pytest.raises(SandboxError, match=f"{isolation_mode()} mode.*could not start"):
        run_program("print(1)", limits=FAST)


def test_runtime_error_reason():
    r = run_program("raise ValueError('boom')", limits=FAST)
    assert r.verdict == "runtime_error" and "ValueError: boom" in r.reason


# ---- code problems ------------------------------------------------------------------------------
def test_stdin_tests_verdicts():
    tests = [CodeTest("3\n1 2 3\n", "6\n"), CodeTest("2\n5 5\n", "10\n"), CodeTest("1\n7\n", "7\n")]
    good = "n = int(input())\nprint(sum(map(int, input().split())))"
    assert [v.verdict for v in run_tests(good, tests)] == ["pass"] * 3
    bad = "n = int(input())\nprint(max(map(int, input().split())))"
    assert [v.verdict for v in run_tests(bad, tests, stop_on_fail=False)] == ["wrong_answer", "wrong_answer", "pass"]
    assert [v.verdict for v in run_tests(bad, tests)] == ["wrong_answer", "skipped", "skipped"]
    assert run_tests("while True: pass", tests[:1], limits=FAST)[0].verdict == "time_limit"
    assert run_tests("x = bytearray(2 * 1024 ** 3)", tests[:1], limits=FAST)[0].verdict == "memory_limit"
    assert run_tests("print(1/0)", tests[:1], limits=FAST)[0].verdict == "runtime_error"
    # numbers compare as decimals, trailing spaces ignored
    assert run_tests("print('1.50 ')", [CodeTest("", "1.5\n")])[0].verdict == "pass"


def test_functional_tests_call_the_solution_method():
    code = ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
            "        seen = {}\n        for i, x in enumerate(nums):\n"
            "            if target - x in seen:\n                return [seen[target - x], i]\n"
            "            seen[x] = i\n")
    tests = [CodeTest(json.dumps([2, 7, 11, 15]) + "\n9", "[0, 1]", "functional"),
             CodeTest(json.dumps([3, 2, 4]) + "\n6", "[1, 2]", "functional")]
    assert [v.verdict for v in run_tests(code, tests, func_name="twoSum")] == ["pass", "pass"]
    wrong = code.replace("[seen[target - x], i]", "[i, seen[target - x]]")
    assert run_tests(wrong, tests, func_name="twoSum")[0].verdict == "wrong_answer"


def test_extract_code_takes_the_last_python_block():
    text = "Idea:\n```\npseudo\n```\nCode:\n```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("no code here") is None
