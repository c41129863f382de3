"""Running an untrusted program in its own process, contained.

Each run gets:

- a fresh temporary working directory (removed afterwards) and a clean environment (``PATH``,
  ``HOME`` = the working directory, ``LANG``; nothing inherited, so no secrets);
- resource limits (``prlimit``): CPU seconds, address space, file size (which also caps the
  output: stdout/stderr go to files), number of processes, open files, no core dumps;
- its own session (process group) and a wall-clock limit after which the whole group is killed;
- where the system allows (chosen once by probing, see :func:`isolation_report`):
  ``root`` mode — new network namespace (no network: even loopback is down), new mount namespace
  with private tmpfs on ``/tmp``, ``/var/tmp``, ``/dev/shm``, and a fresh unprivileged uid for the
  program (so it cannot write outside its directory, read other processes' environments, or signal
  its parent; ``RLIMIT_NPROC`` is enforced and every process of that uid is killed afterwards);
  ``userns`` mode — the same namespaces inside an unprivileged user namespace (same uid outside);
  ``rlimits`` mode — limits, session and clean environment only.

Verdicts: ``ok``, ``time_limit``, ``memory_limit``, ``runtime_error`` (``reason`` says which:
exit code, signal, "output limit exceeded").
"""

from __future__ import annotations

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

_UNSHARE = shutil.which("unshare")
_PRLIMIT = shutil.which("prlimit")
_SETPRIV = shutil.which("setpriv")
_SH = shutil.which("sh") or "/bin/sh"
_MODE_LOCK = threading.Lock()
_MODE: Optional[str] = None
_PYTHON: dict[str, str] = {}


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
    """Processes/threads the program's uid may have (enforced in ``root`` mode)."""
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


def _probe(cmd: Sequence[str]) -> bool:
    try:
        return subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def isolation_mode() -> str:
    """The strongest isolation this system permits: ``root``, ``userns`` or ``rlimits`` (probed once)."""
    global _MODE
    with _MODE_LOCK:
        if _MODE is None:
            mount = "mount -t tmpfs -o size=1m tmpfs /tmp"
            if (os.geteuid() == 0 and _UNSHARE and _SETPRIV and _PRLIMIT
                    and _probe([_UNSHARE, "--net", "--mount", "--propagation", "private", _SH, "-c", mount])):
                _MODE = "root"
            elif _UNSHARE and _PRLIMIT and _probe([_UNSHARE, "--user", "--map-root-user", "--net", "--mount",
                                                   "--propagation", "private", _SH, "-c", mount]):
                _MODE = "userns"
            else:
                _MODE = "rlimits"
        return _MODE


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


def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}


def _kill_uid(uid: int, patience_s: float = 5.0) -> None:
    """Kill every process of a sandbox uid (fork bombs that left the process group), repeating
    until none is alive (processes forked while ``kill -1`` runs are caught by the next round)."""
    if not _SETPRIV:
        return
    deadline = time.monotonic() + patience_s
    while True:
        subprocess.run([_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", _SH, "-c",
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


def run_program(source: str, stdin: str = "", *, limits: Limits = Limits(), files: Optional[dict[str, str]] = None,
                argv: Sequence[str] = (), mode: Optional[str] = None) -> RunResult:
    """Run Python ``source`` as ``solution.py`` in the sandbox with ``stdin``; never raises for
    anything the program does."""
    mode = mode or isolation_mode()
    python = sandbox_python(mode)
    base = tempfile.mkdtemp(prefix="cogpo-sandbox-")
    workdir = os.path.join(base, "work")
    os.mkdir(workdir)
    uid = random.randint(200_000, 260_000) if mode == "root" else os.getuid()
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
        cpu_soft = max(1, int(round(limits.cpu_s)))
        mem = int(limits.memory_mb) << 20
        fsize = int(limits.output_bytes)
        program = [python, "-I", "solution.py", *argv]
        rl = []
        if _PRLIMIT:
            nproc = limits.nproc if mode == "root" else _user_process_count() + limits.nproc
            rl = [_PRLIMIT, f"--cpu={cpu_soft}:{cpu_soft + 1}", f"--as={mem}", f"--fsize={fsize}",
                  f"--nproc={nproc}", f"--nofile={limits.nofile}", "--core=0", "--"]
        if mode == "root":
            inner = rl + [_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                          "--", *program]
            cmd = [_UNSHARE, "--net", "--mount", "--propagation", "private", _SH, "-c", _MOUNT_SCRIPT, "sandbox", *inner]
        elif mode == "userns":
            cmd = [_UNSHARE, "--user", "--map-root-user", "--net", "--mount", "--propagation", "private", _SH, "-c",
                   _MOUNT_SCRIPT, "sandbox", *rl, *program]
        else:
            cmd = rl + program if rl else program
        preexec = None if rl else _rlimit_preexec(cpu_soft, mem, fsize, limits.nofile)
        start = time.monotonic()
        timed_out = False
        with open(io_dir / "stdin", "rb") as fin, open(io_dir / "stdout", "wb") as fout, \
                open(io_dir / "stderr", "wb") as ferr:
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=workdir, env=_clean_env(workdir),
                                    start_new_session=True, close_fds=True, preexec_fn=preexec)
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
        return _classify(proc.returncode, timed_out, stdout, stderr, out_over, wall, mode, limits)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# mounts private tmpfs over the shared temp folders, binds the working directory back at its own
# path inside them, then execs the rest of the command line
_MOUNT_SCRIPT = ('W="$(pwd -P)"; exec 3<.; for d in /tmp /var/tmp /dev/shm; do [ -d "$d" ] && '
                 'mount -t tmpfs -o size=64m,mode=1777 tmpfs "$d"; done; '
                 'mkdir -p "$W" && mount -c --bind /proc/self/fd/3 "$W" && exec 3<&- && cd "$W" && exec "$@"')


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


def _rlimit_preexec(cpu: int, mem: int, fsize: int, nofile: int):
    def apply() -> None:  # pragma: no cover - runs in the child
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


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


_PROBE = r'''
import json, os, socket, sys, resource
out = {"uid": os.getuid(), "env_keys": sorted(os.environ)}
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2); s.close(); out["network"] = True
except OSError as e:
    out["network"] = False; out["network_error"] = str(e)
out["parent_tmp_visible"] = os.path.exists(sys.argv[2])
out["rlimits"] = {n: resource.getrlimit(getattr(resource, n))[0] for n in
                  ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE")}
try:
    os.kill(int(sys.argv[3]), 0); out["can_signal_parent"] = True
except OSError:
    out["can_signal_parent"] = False
print(json.dumps(out))
'''


_SHELL_KEYS = {"PWD", "OLDPWD", "SHLVL", "_"}  # set by the shell that mounts the private /tmp


def isolation_report(limits: Limits = Limits(wall_s=20, cpu_s=10)) -> dict:
    """Run a probe in the sandbox and say which isolation was actually in force."""
    import json
    import socket

    mode = isolation_mode()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    marker = tempfile.NamedTemporaryFile(prefix="cogpo-visible-", delete=False)
    marker.close()
    try:
        res = run_program(_PROBE, argv=[str(port), marker.name, str(os.getpid())], limits=limits, mode=mode)
    finally:
        srv.close()
        os.unlink(marker.name)
    report = {"mode": mode, "python": sandbox_python(mode), "probe_verdict": res.verdict}
    if res.verdict != "ok":
        report["error"] = (res.reason + " " + res.stderr[-500:]).strip()
        return report
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    report.update({
        "network_blocked": not probe["network"],
        "private_tmp": not probe["parent_tmp_visible"],
        "separate_uid": probe["uid"] != os.getuid(),
        "can_signal_parent": probe["can_signal_parent"],
        "clean_env": set(probe["env_keys"]) <= set(_clean_env("/").keys()) | _SHELL_KEYS,
        "rlimits": probe["rlimits"],
    })
    return report
