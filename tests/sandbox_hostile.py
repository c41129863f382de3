"""Hostile programs against the code sandbox, measured in one mode: one row of the sandbox's
containment table each (:data:`cogpo_kit.evaluation.sandbox.CONTAINMENT`).

``tests/test_sandbox_modes.py`` runs this file as a separate process under the user it wants (an
unprivileged uid, a user without user namespaces, root), with the interpreter it wants::

    python tests/sandbox_hostile.py '{"mode": null, "outside": "/path/writable/by/me"}'

``mode``: the mode to force (``null``: the one the sandbox selects); ``outside``: a folder this user may
write, outside ``/tmp`` and the home folder; ``only_venv``: run the interpreter check only. The
environment holds ``COGPO_TEST_SECRET_TOKEN`` and ``HOME`` with a ``secret.txt``: the programs must not
get at either. Prints one JSON object: the mode selected, why there is no isolation (if so), the
refusal of :func:`~cogpo_kit.evaluation.sandbox.require_isolation`, and per row whether the mode
contained the program (``null``: this machine cannot set the row up, with the reason in ``details``).
Everything a program leaves behind (files, processes) is removed before it exits. Standard library
and the sandbox module only, so that any interpreter can run it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cogpo_kit.evaluation.sandbox import (IsolationError, Limits, isolation_mode, require_isolation,  # noqa: E402
                                          run_program, unisolated_reason)

SECRET_NAME = "COGPO_TEST_SECRET_TOKEN"
FAST = Limits(cpu_s=1, wall_s=3, memory_mb=256, output_bytes=64 << 10, nproc=16)
"""For the rows about time: the program must be stopped by these."""
ROOMY = Limits(cpu_s=10, wall_s=30, memory_mb=256, output_bytes=64 << 10, nproc=16)
"""For the other rows: time enough to finish on a loaded machine, so that the outcome is the sandbox's."""


def _ran(r) -> None:
    """A program that must run to its end (its outcome otherwise says nothing about the sandbox)."""
    if r.verdict == "time_limit":
        raise Inconclusive(f"the program did not finish: {r.reason}")


class Inconclusive(Exception):
    """The measurement says nothing (reported as such, and the test fails)."""


def _named(comm: str) -> list[int]:
    """Live processes whose name (``/proc/<pid>/comm``) is ``comm``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() != comm:
                    continue
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                    out.append(int(pid))
        except (OSError, IndexError):
            continue
    return out


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _outward_ip() -> str | None:
    """A non-loopback address of this machine (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def fork_bomb(mode: str) -> tuple[bool, str]:
    name = "cgb" + secrets.token_hex(5)
    src = (f"open('/proc/self/comm', 'w').write({name!r})\nprint('forking', flush=True)\nimport os\nwhile True:\n"
           "    try:\n        os.fork()\n    except OSError:\n        pass\n")
    start = time.monotonic()
    r = run_program(src, limits=FAST, mode=mode)
    took = time.monotonic() - start
    time.sleep(0.3)
    left = _named(name)
    _kill(left)
    if "forking" not in r.stdout:
        raise Inconclusive(f"the fork bomb did not start: {r.verdict} {r.reason}")
    ok = r.verdict == "time_limit" and took < FAST.wall_s + 5 and not left
    return ok, f"{r.verdict} after {took:.1f} s, {len(left)} left"


def memory_hog(mode: str) -> tuple[bool, str]:
    a = run_program("x = bytearray(2 * 1024 ** 3)\nprint(len(x))", limits=ROOMY, mode=mode)
    b = run_program("a = []\nwhile True:\n    a.append('x' * 10 ** 6)", limits=ROOMY, mode=mode)
    return (a.verdict, b.verdict) == ("memory_limit", "memory_limit"), f"{a.verdict}, {b.verdict}"


def infinite_loop(mode: str) -> tuple[bool, str]:
    r = run_program("while True:\n    pass", limits=FAST, mode=mode)
    return r.verdict == "time_limit" and r.wall_s < FAST.wall_s + 2, f"{r.verdict} ({r.reason}) {r.wall_s:.1f} s"


def huge_output(mode: str) -> tuple[bool, str]:
    r = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=ROOMY, mode=mode)
    ok = r.verdict == "runtime_error" and "output limit" in r.reason and len(r.stdout) <= FAST.output_bytes
    return ok, f"{r.verdict} ({r.reason}), {len(r.stdout)} characters kept"


def writing_outside(mode: str, outside: str) -> tuple[bool, str]:
    name = "cogpo-escape-" + secrets.token_hex(4)
    targets = [os.path.join(outside, name), f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}",
               os.path.join(os.path.expanduser("~"), name)]
    src = (f"for path in {targets!r}:\n    try:\n        open(path, 'w').write('pwned')\n        print('wrote', path)\n"
           "    except OSError as e:\n        print('refused', path, e)\n")
    r = run_program(src, limits=ROOMY, mode=mode)
    escaped = [t for t in targets if os.path.exists(t)]
    for t in escaped:
        os.unlink(t)
    _ran(r)
    mine = run_program("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())", limits=ROOMY, mode=mode)
    return not escaped and mine.stdout == "ok\n", f"escaped: {escaped}; {r.stdout.strip()!r}"


def reading_environment(mode: str) -> tuple[bool, str]:
    secret = os.environ[SECRET_NAME]
    src = ("import glob, os\nprint('env', os.environ.get('%s'))\n"
           "for path in glob.glob('/proc/[0-9]*/environ'):\n    try:\n        data = open(path, 'rb').read()\n"
           "    except OSError:\n        continue\n"
           "    for item in data.split(b'\\0'):\n        if item.startswith(b'%s='):\n"
           "            print(path, item.decode())\n") % (SECRET_NAME, SECRET_NAME)
    r = run_program(src, limits=ROOMY, mode=mode)
    _ran(r)
    read = secret in r.stdout
    return not read and r.verdict == "ok", f"{r.verdict}; secret {'read' if read else 'not read'}"


def reading_home(mode: str) -> tuple[bool, str]:
    path = os.path.join(os.path.expanduser("~"), "secret.txt")
    secret = Path(path).read_text().strip()
    r = run_program(f"try:\n    print(open({path!r}).read())\nexcept OSError as e:\n    print('refused', e)",
                    limits=ROOMY, mode=mode)
    _ran(r)
    return secret not in r.stdout, r.stdout.strip()[:200]


def _connect(mode: str, host: str) -> tuple[bool, str]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(1)
    srv.settimeout(4)
    port = srv.getsockname()[1]
    got = []

    def accept():
        try:
            got.append(srv.accept()[0])
        except OSError:
            pass

    th = threading.Thread(target=accept)
    th.start()
    r = run_program(f"import socket\ns = socket.create_connection(({host!r}, {port}), timeout=5)\nprint('connected')",
                    limits=ROOMY, mode=mode)
    if "connected" not in r.stdout:
        try:  # wake the accepting thread
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            pass
    th.join(6)
    srv.close()
    _ran(r)
    connected = "connected" in r.stdout
    return not connected, (r.reason or r.stdout.strip())[:200]


def killing_parent(mode: str) -> tuple[bool, str]:
    """A sacrificial evaluator runs the program, which sends SIGKILL to it by pid and to its own parent."""
    src = ("import os, signal, sys\nfor pid in (int(sys.argv[1]), os.getppid()):\n    try:\n"
           "        os.kill(pid, signal.SIGKILL)\n        print('sent', pid)\n    except OSError as e:\n"
           "        print('refused', pid, e)\n")
    evaluator = (f"import os, sys\nsys.path[:0] = {sys.path!r}\n"
                 "from cogpo_kit.evaluation.sandbox import Limits, run_program\n"
                 f"r = run_program({src!r}, argv=[str(os.getpid())], limits=Limits(cpu_s=10, wall_s=30),"
                 f" mode={mode!r})\n"
                 "print(r.verdict, r.stdout.strip().replace(chr(10), '; '))\n")
    scratch = tempfile.mkdtemp(prefix="cogpo-evaluator-")  # a killed evaluator cannot remove its run's folder
    os.chmod(scratch, 0o755)
    try:
        p = subprocess.run([sys.executable, "-I", "-c", evaluator], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TMPDIR": scratch})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if p.returncode == 0 and not p.stdout.startswith("ok "):
        raise Inconclusive(f"the program did not run to its end: {p.stdout.strip()[-200:]}")
    return p.returncode == 0, f"evaluator exit {p.returncode}: {(p.stdout + p.stderr).strip()[-200:]}"


def leaving_processes(mode: str) -> tuple[bool, str]:
    name = "cgl" + secrets.token_hex(5)
    src = ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           f"        open('/proc/self/comm', 'w').write({name!r})\n        os.write(w, b'1')\n        time.sleep(30)\n"
           "    os._exit(0)\nos.read(r, 1)  # the daemon is up\nprint('parent done')\n")
    r = run_program(src, limits=ROOMY, mode=mode)
    time.sleep(0.5)
    left = _named(name)
    _kill(left)
    if r.stdout != "parent done\n":
        raise Inconclusive(f"the program did not run to its end: {r.verdict} {r.reason}")
    return not left, f"{r.verdict}; {len(left)} left"


def interpreter_check(mode: str) -> dict:
    """This interpreter (a venv under /tmp, say) runs a program that imports from its site-packages and
    starts the interpreter again."""
    src = ("import subprocess, sys\nimport cogpo_venv_probe\nprint(cogpo_venv_probe.VALUE)\n"
           "again = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True)\n"
           "print(again.stdout.strip())\n")
    r = run_program(src, limits=Limits(cpu_s=5, wall_s=20), mode=mode)
    return {"verdict": r.verdict, "returncode": r.returncode, "stdout": r.stdout, "reason": r.reason,
            "executable": sys.executable, "prefix": sys.prefix, "real_executable": os.path.realpath(sys.executable)}


def main(config: dict) -> dict:
    mode = config.get("mode") or isolation_mode()
    out = {"selected": isolation_mode(), "mode": mode, "why_unisolated": unisolated_reason(), "uid": os.getuid()}
    try:
        require_isolation(False)
        out["refusal"] = None
    except IsolationError as exc:
        out["refusal"] = str(exc)
    out["opted_in"] = require_isolation(True)
    if config.get("only_venv"):
        out["interpreter"] = interpreter_check(mode)
        return out
    if config.get("venv"):
        out["interpreter"] = interpreter_check(mode)
    outward = _outward_ip()
    rows = {
        "fork bomb": lambda: fork_bomb(mode),
        "memory hog": lambda: memory_hog(mode),
        "infinite loop": lambda: infinite_loop(mode),
        "huge output": lambda: huge_output(mode),
        "writing outside its folder": lambda: writing_outside(mode, config["outside"]),
        "reading the parent's environment": lambda: reading_environment(mode),
        "reading the user's home folder": lambda: reading_home(mode),
        "network: loopback": lambda: _connect(mode, "127.0.0.1"),
        "network: outside": (lambda: _connect(mode, outward)) if outward else None,
        "killing its parent": lambda: killing_parent(mode),
        "leaving processes behind": lambda: leaving_processes(mode),
    }
    out["contained"], out["details"], out["seconds"] = {}, {}, {}
    for row, measure in rows.items():
        if measure is None:
            out["contained"][row], out["details"][row] = None, "this machine has no non-loopback address"
            continue
        start = time.monotonic()
        try:
            out["contained"][row], out["details"][row] = measure()
        except Inconclusive as exc:
            out["contained"][row], out["details"][row] = "inconclusive", str(exc)
        out["seconds"][row] = round(time.monotonic() - start, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
