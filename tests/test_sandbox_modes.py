"""The code sandbox as the user it will meet on a cluster: which mode the probe picks, and the hostile
programs of the sandbox's containment table measured in each mode.

Each mode is measured by ``tests/sandbox_hostile.py`` run as a separate process, as the user that mode
is for (this machine may run the tests as root):

- ``userns``: as uid 65534 (``setpriv``), the interpreter a virtual environment under ``/tmp`` (the
  sandbox's private ``/tmp`` must not hide it); and a copied interpreter under ``/tmp``;
- ``rlimits``: as uid 65534 inside a user namespace whose ``user.max_user_namespaces`` is 0 (user
  namespaces switched off, as some clusters do): the probe must fall back to ``rlimits`` and say why,
  and running generated code must be refused until the user opts in;
- ``root``: as root.

Every row of :data:`~cogpo_kit.evaluation.sandbox.CONTAINMENT` (the table in the sandbox's docstring)
must come out as the table says, both ways: what a mode claims to stop it stops, and what it claims to
let through does get through (so the table never promises more than the mode does). A mode this
machine cannot provide is skipped with the reason.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cogpo_kit.evaluation import sandbox
from cogpo_kit.evaluation.sandbox import CONTAINMENT, OPT_IN, IsolationError, isolation_mode, require_isolation

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "sandbox_hostile.py"
NOBODY = 65534
SECRET_NAME = "COGPO_TEST_SECRET_TOKEN"
SETPRIV = shutil.which("setpriv")
UNSHARE = shutil.which("unshare")
IS_ROOT = os.geteuid() == 0

# Run as root: a child in a new user namespace (uid 0 and `uid` mapped to themselves) switches user
# namespaces off inside it (user.max_user_namespaces = 0), becomes `uid` and runs the command.
_WITHOUT_USER_NAMESPACES = r'''
import ctypes, os, sys
uid, cmd = int(sys.argv[1]), sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
go_r, go_w = os.pipe()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(go_w); os.close(ready_r)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(90)
    os.write(ready_w, b"u"); os.close(ready_w)
    os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as fh:
        fh.write("0")
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
    os.execv(cmd[0], cmd)
os.close(go_r); os.close(ready_w)
if os.read(ready_r, 1) != b"u":
    sys.exit("cannot create a user namespace")
for kind in ("uid_map", "gid_map"):
    with open("/proc/%d/%s" % (pid, kind), "w") as fh:
        fh.write("0 0 1\n%d %d 1\n" % (uid, uid))
os.write(go_w, b"g")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
'''


def _column(mode: str) -> dict[str, bool]:
    return {row: modes[mode] for row, modes in CONTAINMENT.items()}


def _world_readable(path: Path) -> bool:
    """Whether any user can read ``path`` (every folder above it searchable)."""
    p = path.resolve()
    return bool(os.stat(p).st_mode & stat.S_IROTH) and all(os.stat(d).st_mode & stat.S_IXOTH for d in p.parents)


def _world_python() -> str | None:
    """An interpreter the driver's user can run: this one when that user is us; else one every user can run
    (this one where possible)."""
    if not IS_ROOT:
        return sys.executable
    for cand in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if cand and os.path.exists(cand) and sandbox._others_can_exec(cand) and _world_readable(Path(cand)):
            return cand
    return None


def _as(uid: int) -> list[str]:
    """The command prefix that runs a program as ``uid`` (nothing when this process already is it)."""
    if os.geteuid() == uid:
        return []
    return [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _userns_works(prefix: list[str]) -> bool:
    """Whether ``prefix`` (a user) can make the namespaces of ``userns`` mode."""
    if not UNSHARE:
        return False
    cmd = [*prefix, UNSHARE, "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--mount-proc",
           "true"]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def arena():
    """``make(uid) -> (home, outside, env)``: a home folder holding ``secret.txt`` and a folder the user may
    write, both owned by ``uid`` and outside ``/tmp``, and the environment (with a secret) to run the
    driver in; removed afterwards."""
    made = []

    def make(uid: int):
        root = Path(tempfile.mkdtemp(prefix=".sandbox-arena-", dir=HERE))
        made.append(root)
        home, outside = root / "home", root / "outside"
        home.mkdir()
        outside.mkdir()
        (home / "secret.txt").write_text("home-secret-" + secrets.token_hex(8))
        if IS_ROOT:
            for p in (root, home, outside, home / "secret.txt"):
                os.chown(p, uid, uid)
        root.chmod(0o755)
        home.chmod(0o700)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
               SECRET_NAME: "env-secret-" + secrets.token_hex(8)}
        return home, outside, env

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def _drive(cmd: list[str], config: dict, env: dict) -> dict:
    p = subprocess.run([*cmd, str(DRIVER), json.dumps(config)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, f"driver failed ({p.returncode}): {p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _check_rows(res: dict, mode: str) -> None:
    measured = {k: v for k, v in res["contained"].items() if v is not None}
    assert "network: loopback" in measured
    assert measured == {k: v for k, v in _column(mode).items() if k in measured}, json.dumps(res["details"], indent=1)


def _needs_another_user():
    if IS_ROOT and not SETPRIV:
        pytest.skip("setpriv (util-linux) is missing: cannot drop to an unprivileged uid")
    if IS_ROOT and not (_world_readable(DRIVER) and _world_readable(HERE.parent / "cogpo_kit" / "evaluation" /
                                                                     "sandbox.py")):
        pytest.skip(f"the project folder {HERE.parent} is not readable by other users (uid {NOBODY})")
    if _world_python() is None:
        pytest.skip(f"no Python interpreter that uid {NOBODY} may run")


def _venv(python: str, where: Path, uid: int, *extra: str) -> str:
    """A virtual environment under ``where`` made by ``uid``, with a module in its site-packages; its python."""
    subprocess.run([*_as(uid), python, "-m", "venv", "--without-pip", *extra, str(where)], check=True,
                   capture_output=True, timeout=120)
    site = glob.glob(str(where / "lib" / "python3*" / "site-packages"))[0]
    Path(site, "cogpo_venv_probe.py").write_text("VALUE = 'venv-ok'\n")
    if IS_ROOT:
        os.chown(Path(site, "cogpo_venv_probe.py"), uid, uid)
    return str(where / "bin" / "python")


def test_userns_mode_as_an_ordinary_user(arena):
    """The probe picks ``userns`` for an ordinary user; it contains every hostile program, and an interpreter
    in a virtual environment under ``/tmp`` (symlinked, or a copy of the binary) imports from its
    site-packages and restarts itself inside the private ``/tmp``."""
    _needs_another_user()
    uid = NOBODY if IS_ROOT else os.geteuid()
    if not _userns_works(_as(uid)):
        pytest.skip(f"user namespaces are off for uid {uid} here (needs user, net, mount and pid namespaces "
                    "and a fresh /proc)")
    home, outside, env = arena(uid)
    base = Path(tempfile.mkdtemp(prefix="cogpo-venvs-", dir="/tmp"))
    try:
        if IS_ROOT:
            os.chown(base, uid, uid)
        linked = _venv(_world_python(), base / "linked", uid)
        copied = _venv(_world_python(), base / "copied", uid, "--copies")
        res = _drive([*_as(uid), linked], {"mode": None, "outside": str(outside), "venv": True}, env)
        assert (res["selected"], res["why_unisolated"], res["refusal"]) == ("userns", "", None)
        _check_rows(res, "userns")
        interp = res["interpreter"]
        assert interp["executable"] == linked and interp["prefix"] == str(base / "linked")
        assert (interp["verdict"], interp["stdout"]) == ("ok", "venv-ok\n42\n"), interp
        res = _drive([*_as(uid), copied], {"mode": "userns", "only_venv": True}, env)
        interp = res["interpreter"]
        assert interp["real_executable"].startswith(str(base / "copied"))
        assert (interp["verdict"], interp["returncode"], interp["stdout"]) == ("ok", 0, "venv-ok\n42\n"), interp
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_rlimits_mode_where_user_namespaces_are_off(arena):
    """With user namespaces off the probe falls back to ``rlimits`` and says why; generated code is
    refused unless the user opts in; and the mode stops only what the table says."""
    _needs_another_user()
    python = _world_python()
    if IS_ROOT:
        uid = NOBODY
        prefix = [sys.executable, "-I", "-c", _WITHOUT_USER_NAMESPACES, str(uid), python]
    else:
        uid = os.geteuid()
        if _userns_works([]):
            pytest.skip("user namespaces are on here, and switching them off for one process tree needs root")
        prefix = [python]
    home, outside, env = arena(uid)
    res = _drive(prefix, {"mode": None, "outside": str(outside)}, env)
    assert res["selected"] == "rlimits" and res["uid"] == uid
    if IS_ROOT:
        assert "user.max_user_namespaces = 0" in res["why_unisolated"]
    assert res["refusal"] and OPT_IN in res["refusal"] and res["why_unisolated"] in res["refusal"]
    assert res["opted_in"] == "rlimits"
    _check_rows(res, "rlimits")


def test_root_mode_as_root(arena):
    if not IS_ROOT:
        pytest.skip("root mode needs root")
    if not (UNSHARE and SETPRIV):
        pytest.skip("root mode needs unshare and setpriv (util-linux)")
    home, outside, env = arena(0)
    res = _drive([sys.executable], {"mode": None, "outside": str(outside)}, env)
    assert res["selected"] == "root"
    _check_rows(res, "root")


def test_docstring_table_is_the_containment_table():
    doc = sandbox.__doc__
    rows = {}
    for line in doc.splitlines():
        m = re.fullmatch(r"(\S.*?)\s{2,}(yes|no)\s+(yes|no)\s+(yes|no)\s*", line)
        if m:
            rows[m.group(1)] = dict(zip(("root", "userns", "rlimits"), (v == "yes" for v in m.groups()[1:])))
    assert rows == CONTAINMENT


def test_forced_mode_and_the_refusal(monkeypatch):
    monkeypatch.setenv(sandbox.MODE_ENV, "chroot")
    with pytest.raises(ValueError, match="COGPO_SANDBOX_MODE"):
        isolation_mode()
    monkeypatch.setenv(sandbox.MODE_ENV, "rlimits")
    assert isolation_mode() == "rlimits" and "COGPO_SANDBOX_MODE=rlimits" in sandbox.unisolated_reason()
    with pytest.raises(IsolationError, match=re.escape(f"Set {OPT_IN}=true")):
        require_isolation()
    assert require_isolation(True) == "rlimits"
    assert sandbox.run_program("print(6 * 7)").stdout == "42\n"
