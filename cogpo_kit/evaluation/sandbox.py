"""Running an untrusted program in its own process, contained.

``run_program(source, stdin)`` runs Python ``source`` as ``solution.py`` and says what it did; the
code tests (:mod:`code_tests`) call it once per test. Each run gets:

- a fresh temporary working directory (removed afterwards) and a clean environment (``PATH``,
  ``HOME`` = the working directory, ``LANG``; nothing inherited, so no secrets);
- resource limits: CPU seconds, address space, file size (which also caps the output: stdout and
  stderr go to files), number of processes, open files, no core dumps;
- its own session (process group) and a wall-clock limit after which the whole group is killed;
- the strongest isolation the system permits, one of three modes (chosen once by running a probe
  program in each, strongest first; :func:`isolation_report` says what was in force):

  ``root`` (the kit runs as real root): new network, mount and IPC namespaces; a fresh unprivileged
  uid for the program, so it cannot read other processes' environments or signal its parent; every
  process of that uid is killed afterwards;
  ``userns`` (an ordinary user, e.g. on a GPU cluster): the same namespaces plus a PID namespace
  inside an unprivileged user namespace; the program keeps the user's uid outside, runs with no
  capabilities (``no_new_privs``) and sees only its own processes and a fresh ``/proc``; when it
  ends, everything it started dies with its PID namespace;
  ``rlimits`` (user namespaces are off: ``kernel.unprivileged_userns_clone=0``,
  ``user.max_user_namespaces=0``, AppArmor's ``kernel.apparmor_restrict_unprivileged_userns=1``, or
  no ``unshare`` program): limits, session and clean environment only. Nothing isolates the network
  or the files, so the evaluation refuses to run generated code in this mode unless told to
  (:func:`require_isolation`; ``eval.code_allow_unisolated``).

  In the two namespace modes the file system is remounted read-only, private tmpfs folders cover
  ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run`` and the user's home folder, and two things are bound
  back at their own paths: the working directory (writable) and, read-only, the interpreter's folders
  that those tmpfs folders would hide (``sys.prefix``, ``sys.base_prefix``, the folders of the
  executable and of each symlink to it), so a virtual environment under ``/tmp`` or ``$HOME`` still
  runs, imports from its site-packages and can start itself again. The mounts, limits and the change
  of uid or capabilities are made by a small start-up script in the program's own interpreter
  (:data:`_INIT`), which then runs ``solution.py`` as ``__main__`` in the same process (one
  interpreter start per run); in ``userns`` mode it stays behind as the PID namespace's first process
  and reports the program's exit status.

What each mode stops (``yes``) and lets through (``no``), measured by ``tests/test_sandbox_modes.py``
as an unprivileged user (``root`` as root) and kept in :data:`CONTAINMENT`:

==================================  =====  ======  =======
hostile program                     root   userns  rlimits
==================================  =====  ======  =======
fork bomb                           yes    yes     yes
memory hog                          yes    yes     yes
infinite loop                       yes    yes     yes
huge output                         yes    yes     yes
writing outside its folder          yes    yes     no
reading the parent's environment    yes    yes     no
reading the user's home folder      yes    yes     no
network: loopback                   yes    yes     no
network: outside                    yes    yes     no
killing its parent                  yes    yes     no
leaving processes behind            yes    yes     no
==================================  =====  ======  =======

(``rlimits``: the environment it inherits is clean, but ``/proc/<pid>/environ`` of the user's other
processes is readable; a fork bomb is held by the process limit, counted with the user's own
processes, and killed with its process group; a process that starts its own session survives.)
Both namespace modes still let a program read what the user (``userns``) or everybody (``root``) may
read outside the hidden folders, and connect to a Unix socket outside them.

``COGPO_SANDBOX_MODE=root|userns|rlimits`` forces a mode (no probing): a forced mode the system
cannot provide fails on the first run with :class:`SandboxError`.

Verdicts: ``ok``, ``time_limit``, ``memory_limit``, ``runtime_error`` (``reason`` says which:
exit code, signal, "output limit exceeded"). A run the sandbox itself could not start raises
:class:`SandboxError` (never counted against the program).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

MODES = ("root", "userns", "rlimits")
"""Isolation modes, strongest first."""
MODE_ENV = "COGPO_SANDBOX_MODE"
"""Environment variable forcing a mode (no probing)."""
OPT_IN = "eval.code_allow_unisolated"
"""The parameter that lets generated code run in ``rlimits`` mode."""

CONTAINMENT: dict[str, dict[str, bool]] = {
    "fork bomb": {"root": True, "userns": True, "rlimits": True},
    "memory hog": {"root": True, "userns": True, "rlimits": True},
    "infinite loop": {"root": True, "userns": True, "rlimits": True},
    "huge output": {"root": True, "userns": True, "rlimits": True},
    "writing outside its folder": {"root": True, "userns": True, "rlimits": False},
    "reading the parent's environment": {"root": True, "userns": True, "rlimits": False},
    "reading the user's home folder": {"root": True, "userns": True, "rlimits": False},
    "network: loopback": {"root": True, "userns": True, "rlimits": False},
    "network: outside": {"root": True, "userns": True, "rlimits": False},
    "killing its parent": {"root": True, "userns": True, "rlimits": False},
    "leaving processes behind": {"root": True, "userns": True, "rlimits": False},
}
"""Which hostile programs each mode contains (the table of the module docstring)."""

_UNSHARE = shutil.which("unshare")
_SETPRIV = shutil.which("setpriv")
_MODE_LOCK = threading.Lock()
_MODE: Optional[str] = None
_PROBE_ERRORS: dict[str, str] = {}
_PYTHON: dict[str, str] = {}
_INTERPRETER_DIRS: dict[str, list[str]] = {}
_HIDDEN = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run")
"""Shared folders covered by a private tmpfs in the namespace modes (and the user's home folder)."""
_USERNS_SWITCHES = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone = 0"),
    ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces = 0"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "kernel.apparmor_restrict_unprivileged_userns = 1 (AppArmor confines unprivileged user namespaces)"),
)
"""Kernel settings that switch unprivileged user namespaces off: (file, value when off, what it says)."""


class SandboxError(RuntimeError):
    """The sandbox could not start a program (a setup failure, not the program's doing)."""


class IsolationError(RuntimeError):
    """Generated code would run without namespaces and nobody opted in."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program run."""

    cpu_s: float = 6.0
    """CPU seconds (RLIMIT_CPU); the program is killed when they are used up."""
    wall_s: float = 10.0
    """Wall-clock seconds; then the whole process group (and, in root mode, the uid) is killed."""
    memory_mb: int = 1024
    """Address space in MiB (RLIMIT_AS): a larger allocation fails with MemoryError."""
    output_bytes: int = 1 << 20
    """Cap on stdout, stderr and every file written (RLIMIT_FSIZE)."""
    nproc: int = 32
    """Processes/threads the program may add (RLIMIT_NPROC: of the fresh uid in ``root`` mode; on top of
    the user's own processes in the other modes, where the kernel counts them together)."""
    nofile: int = 128
    """Open file descriptors."""


@dataclass
class RunResult:
    """What one run did."""

    verdict: str
    """``ok``, ``time_limit``, ``memory_limit`` or ``runtime_error``."""
    returncode: Optional[int]
    stdout: str
    stderr: str
    wall_s: float
    reason: str = ""
    """Why it was not ``ok`` (exit code, signal name, output limit, ...)."""
    mode: str = ""
    """Isolation mode in force (``root``, ``userns``, ``rlimits``)."""
    extra: dict = field(default_factory=dict)


# ---- choosing the mode ------------------------------------------------------------------------------
def isolation_mode() -> str:
    """The strongest isolation this system permits: ``root``, ``userns`` or ``rlimits``, found once by
    running a probe program in each (``COGPO_SANDBOX_MODE`` forces one)."""
    global _MODE
    forced = os.environ.get(MODE_ENV, "").strip()
    if forced:
        if forced not in MODES:
            raise ValueError(f"{MODE_ENV}={forced!r}: expected one of {', '.join(MODES)}")
        return forced
    with _MODE_LOCK:
        if _MODE is None:
            _MODE = _select_mode()
        return _MODE


def _select_mode() -> str:
    candidates = []
    if os.geteuid() == 0 and _UNSHARE and _SETPRIV:
        candidates.append("root")  # real root; a root mapped in a user namespace fails the probe (no uid to drop to)
    if _UNSHARE:
        candidates.append("userns")
    for mode in candidates:
        error = _probe_mode(mode)
        if error is None:
            return mode
        _PROBE_ERRORS[mode] = error
    return "rlimits"


def _probe_mode(mode: str) -> Optional[str]:
    """``None`` when a trivial program runs in ``mode``, else what went wrong."""
    try:
        res = run_program("print('ok')", limits=Limits(cpu_s=10, wall_s=30), mode=mode)
    except (SandboxError, OSError) as exc:
        return str(exc)
    if res.verdict == "ok" and res.stdout == "ok\n":
        return None
    return f"probe program: {res.verdict} {res.reason} {res.stderr.strip()[-300:]}".strip()


def unisolated_reason() -> str:
    """Why the sandbox runs without namespaces here (``""`` when it has them): the kernel settings that
    switch user namespaces off, a missing ``unshare``, the probe's error."""
    if isolation_mode() != "rlimits":
        return ""
    if os.environ.get(MODE_ENV, "").strip() == "rlimits":
        return f"{MODE_ENV}=rlimits forces it"
    why = []
    if not _UNSHARE:
        why.append("no unshare program (util-linux) on PATH")
    for path, off, text in _USERNS_SWITCHES:
        try:
            if Path(path).read_text().strip() == off:
                why.append(text)
        except OSError:
            pass
    if "userns" in _PROBE_ERRORS:
        why.append(f"user-namespace probe: {_PROBE_ERRORS['userns'][:300]}")
    return "; ".join(why) or "user namespaces are not available"


def require_isolation(allow_unisolated: bool = False, opt_in: str = OPT_IN) -> str:
    """The mode in force; raises :class:`IsolationError` when it is ``rlimits`` (nothing isolates the
    network or the files) and ``allow_unisolated`` is false, saying what is missing and what to set."""
    mode = isolation_mode()
    if mode == "rlimits" and not allow_unisolated:
        raise IsolationError(
            f"refusing to run generated code without isolation: the code sandbox has no namespaces here "
            f"({unisolated_reason()}), so it could only apply resource limits and the programs would "
            f"run with your uid, your network and your files (they could read your other processes' "
            f"environments, write wherever you can, signal your processes). Set {opt_in}=true to run them "
            f"anyway, or run where unprivileged user namespaces are on (or as root).")
    return mode


# ---- the interpreter ----------------------------------------------------------------------------------
def _others_can_exec(path: str) -> bool:
    p = Path(path).resolve()
    if not os.stat(p).st_mode & stat.S_IXOTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in p.parents)


def sandbox_python(mode: Optional[str] = None) -> str:
    """A Python interpreter the sandboxed uid can execute (this one where possible)."""
    mode = mode or isolation_mode()
    if mode not in _PYTHON:
        choice = sys.executable
        if mode == "root" and not _others_can_exec(sys.executable):
            for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
                if cand and os.path.exists(cand) and _others_can_exec(cand):
                    choice = str(Path(cand).resolve())
                    break
        _PYTHON[mode] = choice
    return _PYTHON[mode]


def _interpreter_dirs(python: str) -> list[str]:
    """Real paths of the folders an interpreter needs: its prefixes, and the folder of its executable
    and of every symlink on the way to it."""
    if python not in _INTERPRETER_DIRS:
        if python == sys.executable:
            prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
        else:
            out = subprocess.run([python, "-I", "-S", "-c", "import sys, json; print(json.dumps([sys.prefix, "
                                  "sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]))"],
                                 capture_output=True, text=True, timeout=30)
            prefixes = json.loads(out.stdout) if out.returncode == 0 else []
        dirs, hop = [], os.path.abspath(python)
        for _ in range(40):
            dirs.append(os.path.dirname(hop))
            if not os.path.islink(hop):
                break
            hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
        dirs.append(os.path.dirname(os.path.realpath(python)))
        _INTERPRETER_DIRS[python] = list(dict.fromkeys(os.path.realpath(p) for p in prefixes + dirs if p))
    return _INTERPRETER_DIRS[python]


def _hidden_dirs() -> list[str]:
    """The folders covered by a private tmpfs (real paths, parents first)."""
    out: list[str] = []
    for cand in (*_HIDDEN, os.path.expanduser("~")):
        if cand and os.path.isabs(cand):
            real = os.path.realpath(cand)
            if real != "/" and os.path.isdir(real) and real not in out:
                out.append(real)
    return sorted(out, key=len)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _kept_dirs(python: str, hidden: Sequence[str]) -> list[str]:
    """The interpreter's folders that a hidden folder would cover (none inside another)."""
    inside = [d for d in _interpreter_dirs(python) if os.path.isdir(d) and any(_under(d, h) for h in hidden)]
    return [d for d in inside if not any(o != d and _under(d, o) for o in inside)]


# ---- running a program --------------------------------------------------------------------------------
def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}


def _user_process_count() -> int:
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                continue
    return n


def _command(mode: str, python: str, spec: dict) -> list[str]:
    start = [python, "-I", "-c", _INIT, json.dumps(spec)]
    if mode == "root":
        return [_UNSHARE or "unshare", "--net", "--mount", "--ipc", "--propagation", "private", "--", *start]
    if mode == "userns":
        return [_UNSHARE or "unshare", "--user", "--map-root-user", "--net", "--mount", "--ipc", "--pid", "--fork",
                "--kill-child", "--mount-proc", "--propagation", "private", "--", *start]
    return start


def run_program(source: str, stdin: str = "", *, limits: Limits = Limits(), files: Optional[dict[str, str]] = None,
                argv: Sequence[str] = (), mode: Optional[str] = None) -> RunResult:
    """Run Python ``source`` as ``solution.py`` in the sandbox with ``stdin``; never raises for
    anything the program does (:class:`SandboxError` when the sandbox itself cannot start it)."""
    mode = mode or isolation_mode()
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r} (expected one of {', '.join(MODES)})")
    python = sandbox_python(mode)
    base = tempfile.mkdtemp(prefix="cogpo-sandbox-")
    workdir = os.path.realpath(os.path.join(base, "work"))
    os.mkdir(workdir)
    uid = random.randint(200_000, 260_000) if mode == "root" else None
    try:
        Path(workdir, "solution.py").write_text(source, encoding="utf-8")
        for name, text in (files or {}).items():
            Path(workdir, name).write_text(text, encoding="utf-8")
        io_dir = Path(base, "io")
        io_dir.mkdir()
        Path(io_dir, "stdin").write_text(stdin, encoding="utf-8")
        if mode == "root":
            os.chmod(base, 0o711)
            for p in [workdir, *[os.path.join(workdir, n) for n in os.listdir(workdir)]]:
                os.chown(p, uid, uid)
        cpu = max(1, int(round(limits.cpu_s)))
        nproc = limits.nproc if mode == "root" else _user_process_count() + limits.nproc
        spec = {"mode": mode, "work": workdir, "argv": list(argv), "uid": uid,
                "rlimits": {"CPU": [cpu, cpu + 1], "AS": [limits.memory_mb << 20] * 2,
                            "FSIZE": [limits.output_bytes] * 2, "NOFILE": [limits.nofile] * 2,
                            "NPROC": [nproc] * 2, "CORE": [0, 0]}}
        if mode != "rlimits":
            spec["hide"] = _hidden_dirs()
            spec["keep"] = _kept_dirs(python, spec["hide"])
        start = time.monotonic()
        timed_out = False
        with open(io_dir / "stdin", "rb") as fin, open(io_dir / "stdout", "wb") as fout, \
                open(io_dir / "stderr", "wb") as ferr, open(io_dir / "status", "wb") as fstatus:
            spec["status_fd"] = fstatus.fileno()
            try:
                proc = subprocess.Popen(_command(mode, python, spec), stdin=fin, stdout=fout, stderr=ferr, cwd=workdir,
                                        env=_clean_env(workdir), start_new_session=True, close_fds=True,
                                        pass_fds=(fstatus.fileno(),))
            except OSError as exc:
                raise SandboxError(f"the sandbox ({mode} mode) could not start: {exc}") from None
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
        wall = time.monotonic() - start
        _kill_group(proc.pid)
        if mode == "root" and (timed_out or proc.returncode != 0 or _uid_has_processes(uid)):
            _kill_uid(uid)
        stdout, out_over = _read_capped(io_dir / "stdout", limits.output_bytes)
        stderr, _ = _read_capped(io_dir / "stderr", 64 << 10)
        status = (io_dir / "status").read_text(errors="replace").split("\n")
        if "ready" not in status and not timed_out:
            raise SandboxError(f"the sandbox ({mode} mode) could not start the program (exit status "
                               f"{proc.returncode}): {stderr.strip()[-600:] or 'no message'}")
        rc = proc.returncode
        reported = [line.split()[1] for line in status if line.startswith("status ")]
        if mode == "userns" and reported:  # the program's own wait status, from the namespace's first process
            rc = os.waitstatus_to_exitcode(int(reported[-1]))
        res = _classify(rc, timed_out, stdout, stderr, out_over, wall, mode, limits)
        if timed_out and "ready" not in status:
            res.reason += " (before the program started)"
        return res
    finally:
        shutil.rmtree(base, ignore_errors=True)


# The start-up script, run as ``python -I -c _INIT <spec json>`` inside the namespaces: mounts (namespace
# modes), limits, uid or capabilities, then ``solution.py`` as ``__main__`` in this same interpreter.
# It writes "ready" to the status descriptor just before the program starts (the parent raises
# SandboxError when a run ends without it), and in userns mode it stays as the PID namespace's first
# process, waits for the program and writes "status <wait status>".
_INIT = r'''
import json, os, resource, sys

spec = json.loads(sys.argv[1])
MODE, STATUS = spec["mode"], spec["status_fd"]
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
KEEP_FLAGS = {"nosuid": 2, "nodev": 4, "noexec": 8, "nosymfollow": 256}


def fail(what):
    os.write(2, ("sandbox setup failed (%s mode): %s\n" % (MODE, what)).encode())
    os._exit(125)


def libc():
    import ctypes
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    lib.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    return lib, ctypes


def check(ret, what):
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mounts():
    """(mount point, per-mount options) of each mount, in mountinfo order."""
    import re
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            f = line.split(" ")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f[4])
            out.append((point, f[5].split(",")))
    return out


def set_up_mounts(lib):
    def mount(src, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else os.fsencode(s)
        check(lib.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), "mount %s" % target)

    def remount(target, read_only, opts):
        flags = MS_REMOUNT | MS_BIND | (MS_RDONLY if read_only else 0)
        mount(None, target, None, flags | sum(v for k, v in KEEP_FLAGS.items() if k in opts))

    work, keep = spec["work"], spec["keep"]
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in [work, *keep]}
    os.umask(0o022)  # the folders made on the way to them must be searchable by the program's uid
    for point, opts in mounts():  # everything read-only (flags the kernel locks are kept)
        if "ro" in opts or point == "/proc" or point.startswith("/proc/"):
            continue
        try:
            remount(point, True, opts)
        except OSError as exc:
            if exc.errno not in (2, 13, 116):  # a mount this user cannot reach (nor can the program), stale NFS
                raise
    for d in spec["hide"]:
        if os.path.isdir(d):  # (gone when an earlier tmpfs covers it)
            mount("tmpfs", d, "tmpfs", 2 | 4, "size=64m,mode=1777")
    for p, read_only in [*[(k, True) for k in keep], (work, False)]:
        os.makedirs(p, exist_ok=True)
        mount("/proc/self/fd/%d" % fds[p], p, None, MS_BIND | MS_REC)
        remount(p, read_only, [o for t, o in mounts() if t == p][-1])
        os.close(fds[p])


def set_limits():
    for name, (soft, hard) in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))


def drop_capabilities(lib, ctypes):
    """Root inside the user namespace keeps its uid but loses every capability, for good."""
    check(lib.prctl(28, 0xE3, 0, 0, 0), "securebits")  # noroot, keep_caps off, no ambient raise: all locked
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        check(lib.prctl(24, cap, 0, 0, 0), "drop capability %d from the bounding set" % cap)
    check(lib.prctl(47, 4, 0, 0, 0), "clear ambient capabilities")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    data = (ctypes.c_uint32 * 6)()
    check(lib.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")


def no_new_privileges(lib):
    check(lib.prctl(38, 1, 0, 0, 0), "no_new_privs")
    status = open("/proc/self/status").read()
    caps = [line.split()[1] for line in status.splitlines() if line.startswith(("CapEff", "CapPrm"))]
    if any(int(c, 16) for c in caps):
        raise OSError(1, "capabilities left: %s" % caps)


def run_solution(argv):
    import __main__, builtins
    path = os.path.join(os.getcwd(), "solution.py")
    with open(path, "rb") as fh:
        code = compile(fh.read(), path, "exec")
    sys.argv[:] = ["solution.py", *argv]
    namespace = __main__.__dict__
    namespace.clear()
    namespace.update(__name__="__main__", __doc__=None, __package__=None, __loader__=None, __spec__=None,
                     __file__=path, __builtins__=builtins)
    exec(code, namespace)


def start():
    try:
        if MODE != "rlimits":
            lib, ctypes = libc()
            set_up_mounts(lib)
        os.chdir(spec["work"])
        if MODE == "userns":
            child = os.fork()
            if child:  # first process of the PID namespace: wait, report, and take everything else with it
                import signal
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _, st = os.waitpid(child, 0)
                os.write(STATUS, b"status %d\n" % st)
                os._exit(0)
            set_limits()
            drop_capabilities(lib, ctypes)
            no_new_privileges(lib)
        elif MODE == "root":
            set_limits()
            uid = spec["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            check(lib.prctl(4, 1, 0, 0, 0), "dumpable")  # as after an exec: its /proc/self is its own
            no_new_privileges(lib)
        else:
            set_limits()
        os.write(STATUS, b"ready\n")
        os.close(STATUS)
    except Exception as exc:
        fail("%s: %s" % (type(exc).__name__, exc))
    return spec["argv"]


run_solution(start())
'''


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _kill_uid(uid: int, patience_s: float = 5.0) -> None:
    """Kill every process of a sandbox uid (fork bombs that left the process group), repeating
    until none is alive (processes forked while ``kill -1`` runs are caught by the next round)."""
    if not _SETPRIV:
        return
    deadline = time.monotonic() + patience_s
    while True:
        subprocess.run([_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "/bin/sh", "-c",
                        "kill -9 -1 2>/dev/null; exit 0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, env={"PATH": "/usr/bin:/bin"})
        if not _uid_has_processes(uid) or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _uid_has_processes(uid: int) -> bool:
    """Whether a live (not zombie) process of ``uid`` exists."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
                if state not in (b"Z", b"X"):
                    return True
            except (OSError, IndexError):
                continue
    return False


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as fh:
        data = fh.read(cap + 1)
    return data[:cap].decode("utf-8", "replace"), len(data) > cap


def _classify(rc: Optional[int], timed_out: bool, stdout: str, stderr: str, out_over: bool, wall: float,
              mode: str, limits: Limits) -> RunResult:
    def res(verdict: str, reason: str = "") -> RunResult:
        return RunResult(verdict, rc, stdout, stderr, wall, reason, mode)

    if timed_out:
        return res("time_limit", f"wall clock over {limits.wall_s:g} s")
    if rc is not None and rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig in (signal.SIGXCPU, signal.SIGKILL) and "MemoryError" not in stderr:
            return res("time_limit", f"CPU limit of {limits.cpu_s:g} s ({name})")
        if sig == signal.SIGXFSZ or out_over:
            return res("runtime_error", f"output limit exceeded ({limits.output_bytes} bytes)")
        return res("runtime_error", f"killed by {name}")
    if out_over:
        return res("runtime_error", f"output limit exceeded ({limits.output_bytes} bytes)")
    if rc not in (0, None):
        if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
            return res("memory_limit", f"address space over {limits.memory_mb} MiB")
        if "File too large" in stderr:
            return res("runtime_error", f"output limit exceeded ({limits.output_bytes} bytes)")
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        return res("runtime_error", f"exit code {rc}: {last[:200]}")
    return res("ok")


# ---- what is in force ---------------------------------------------------------------------------------
_PROBE = r'''
import json, os, socket, sys, resource
port, marker, parent, outside = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = {"uid": os.getuid(), "env_keys": sorted(os.environ)}
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=2); s.close(); out["network"] = True
except OSError as e:
    out["network"] = False; out["network_error"] = str(e)
out["parent_tmp_visible"] = os.path.exists(marker)
out["rlimits"] = {n: resource.getrlimit(getattr(resource, n))[0] for n in
                  ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE")}
try:
    os.kill(parent, 0); out["can_signal_parent"] = True
except OSError:
    out["can_signal_parent"] = False
try:
    with open("/proc/%d/environ" % parent, "rb") as fh:
        out["parent_environ_readable"] = bool(fh.read(1))
except OSError:
    out["parent_environ_readable"] = False
out["can_write_outside"] = None
if outside:
    probe = os.path.join(outside, ".cogpo-sandbox-probe-%d" % os.getpid())
    try:
        open(probe, "x").close(); os.unlink(probe); out["can_write_outside"] = True
    except OSError:
        out["can_write_outside"] = False
with open("/proc/self/status") as fh:
    out["capabilities"] = [l.split()[1] for l in fh if l.startswith("CapEff")][0]
print(json.dumps(out))
'''


_SHELL_KEYS = {"PWD", "OLDPWD", "SHLVL", "_"}  # may be set by a shell on the way in


def isolation_report(limits: Limits = Limits(wall_s=20, cpu_s=10)) -> dict:
    """Run a probe in the sandbox and say which isolation was actually in force (and, in ``rlimits``
    mode, why there is no more)."""
    import socket

    mode = isolation_mode()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    marker = tempfile.NamedTemporaryFile(prefix="cogpo-visible-", delete=False)
    marker.close()
    cwd = os.getcwd()
    outside = cwd if os.access(cwd, os.W_OK) and not any(_under(os.path.realpath(cwd), h) for h in _hidden_dirs()) \
        else ""
    try:
        res = run_program(_PROBE, argv=[str(port), marker.name, str(os.getpid()), outside], limits=limits, mode=mode)
    finally:
        srv.close()
        os.unlink(marker.name)
    report = {"mode": mode, "python": sandbox_python(mode), "probe_verdict": res.verdict,
              "contains": {k: v[mode] for k, v in CONTAINMENT.items()}}
    if mode == "rlimits":
        report["why_unisolated"] = unisolated_reason()
    if res.verdict != "ok":
        report["error"] = (res.reason + " " + res.stderr[-500:]).strip()
        return report
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    report.update({
        "network_blocked": not probe["network"],
        "private_tmp": not probe["parent_tmp_visible"],
        "separate_uid": mode == "root" and probe["uid"] != os.getuid(),  # userns: root inside, the user outside
        "can_signal_parent": probe["can_signal_parent"],
        "parent_environ_readable": probe["parent_environ_readable"],
        "can_write_outside": probe["can_write_outside"],
        "capabilities": probe["capabilities"],
        "clean_env": set(probe["env_keys"]) <= set(_clean_env("/").keys()) | _SHELL_KEYS,
        "rlimits": probe["rlimits"],
    })
    return report
