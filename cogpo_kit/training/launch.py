"""A training stage that starts its own multi-process launcher (``accelerate launch`` or ``torchrun``).

``run_sft`` and ``run_preference`` call :func:`launch_if_asked` first. When the stage's ``launch``
parameters ask for processes (``sft.launch`` / ``preference.launch``,
:class:`~cogpo_kit.training.config.LaunchParams`) and this process was not itself started by a launcher
(:func:`inside_launcher`), nothing trains here, whoever called the stage (a notebook cell, papermill under
``cogpo-kit run``, ``cogpo-kit run --in-process``, ``cogpo-kit train``)::

    sft:
      launch: {launcher: torchrun, num_processes: 2}                 # two CPU processes (gloo), or two GPUs
    preference:
      launch: {config: params/launch/zero3.yaml, num_processes: 8}   # DeepSpeed ZeRO-3 on eight GPUs

What happens then (:func:`launch_stage`):

1. the run's parameters go to ``<stage>/launch/params.yaml`` (``run.output_dir`` made absolute), and are
   checked to load back as they are;
2. the launcher of this interpreter starts on ``cogpo-kit train <stage>`` with that file::

       python -m accelerate.commands.launch --config_file CONFIG --num_processes N [--num_machines M] \\
           -m cogpo_kit.cli train sft <stage>/launch/params.yaml
       python -m torch.distributed.run --standalone --nproc_per_node N -m cogpo_kit.cli train sft ...

   with :data:`LAUNCHED_ENV` set, so its processes train instead of launching again (as processes started
   by ``torchrun``/``accelerate launch`` on the command line do), in the folder the accelerate config was
   found relative to (the current one, or one above it: DeepSpeed JSON files named in the config are
   found as on the command line);
3. its stdout and stderr are copied to this process's as they come (a notebook's output; the terminal,
   where ``cogpo-kit run`` forwards a kernel's stderr and prints ``stage.log`` itself) and, all of it, to
   the end of ``<stage>/launch/output.log`` (earlier launches stay above); in a Jupyter kernel the lines the processes add to ``stage.log`` are
   printed as well. The command and its outcome go to ``stage.log``;
4. its main process writes the stage's files and ``manifest.json`` exactly as an in-process run does (this
   process writes neither), so :mod:`cogpo_kit.pipeline.freshness` reads the stage as usual; the manifest
   is returned. A launcher that fails raises :class:`LaunchError`: its exit code and the tail of its stderr,
   the training processes' own error first. Nothing is removed: a rerun resumes from the checkpoints
   (:func:`cogpo_kit.training.common.resumable_checkpoint`) as an in-process run does.

This process interrupted while the launcher runs: the launcher is stopped. This process killed: each
training process notices within :data:`WATCH_INTERVAL_S` seconds and stops (:func:`watch_parent`), so a
rerun never finds the old run still training.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence, TextIO

from cogpo_kit.pipeline.stages import LOG_FILE, artifact_path, manifest_path, stage_dir_name, stage_path

LAUNCHED_ENV = "COGPO_LAUNCHED"
"""Set (``1``) in the launcher's environment: its processes train, they never launch again."""
PARENT_ENV = "COGPO_LAUNCH_PARENT"
"""The pid of the process that started the launcher; the training processes stop once it is gone."""
LAUNCHER_ENV_MARKERS = ("WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")
"""Variables that ``torchrun`` (``WORLD_SIZE``) or every mode of ``accelerate launch`` (even one process)
set in the processes they start: a process that has one was started by a launcher."""
WATCH_INTERVAL_S = 2.0
"""How often a launched training process checks that the process that started its launcher is alive."""
STOP_GRACE_S = 30.0
"""Seconds an interrupted launcher gets to stop its processes (SIGTERM) before they are killed."""
TAIL_LINES = 40
"""Lines of the launcher's stderr in a :class:`LaunchError`."""
TAIL_CHARS = 64 * 1024
"""Characters of the launcher's stderr kept while it runs (the error's tail is cut from them)."""
POLL_S = 0.5
"""How often ``stage.log`` is read for new lines while the launcher runs (inside a Jupyter kernel)."""

_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?"
                         r"((?:cogpo-kit: error: |(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)\b).*)$")
"""A training process's own error: the last line of a Python traceback, or ``cogpo-kit: error: ...`` (the
command line's message for a data or parameter error)."""


class LaunchError(RuntimeError):
    """The launcher of a training stage failed: ``returncode``, ``command``, ``tail`` (its last stderr lines)
    and ``output`` (the file holding all it wrote)."""

    def __init__(self, message: str, *, command: Sequence[str] = (), returncode: Optional[int] = None,
                 tail: str = "", output: Optional[Path] = None):
        super().__init__(message)
        self.command, self.returncode, self.tail, self.output = list(command), returncode, tail, output


def inside_launcher() -> bool:
    """Whether this process was started by a launcher (the stage's own, or one on the command line)."""
    return os.environ.get(LAUNCHED_ENV) == "1" or any(v in os.environ for v in LAUNCHER_ENV_MARKERS)


def stage_launch(params, stage: str):
    """The :class:`~cogpo_kit.training.config.LaunchParams` of a training stage (``sft`` or ``preference``)."""
    name = stage_dir_name(stage).split("_", 1)[1]
    if name not in ("sft", "preference"):
        raise ValueError(f"stage {stage_dir_name(stage)} trains no model: it has no launch parameters")
    return getattr(params, name).launch


def launch_if_asked(params, stage: str) -> Optional[dict]:
    """The stage's manifest after running it under its launcher, or ``None`` when this process trains.

    ``None`` when the stage's ``launch`` asks for no launcher, or when this process is one a launcher
    started (then, if the launcher was the stage's own, this process stops once the process that started
    it is gone: :func:`watch_parent`)."""
    if inside_launcher():
        parent = os.environ.get(PARENT_ENV, "")
        if parent.isdigit():
            watch_parent(int(parent))
        return None
    if not stage_launch(params, stage).enabled:
        return None
    return launch_stage(params, stage)


def resolve_config(config: str, *, key: str = "launch.config", cwd: Optional[Path] = None) -> tuple[Path, Path]:
    """``(config file, folder the launcher runs in)`` of an accelerate config path.

    An absolute path runs in the current folder; a relative one is looked up in the current folder, then
    in each folder above it (a notebook opened in JupyterLab runs in ``notebooks/``), and the launcher runs
    in the folder where it was found. ``FileNotFoundError`` names ``key`` when there is none."""
    cwd = Path(cwd or Path.cwd()).resolve()
    path = Path(os.path.expanduser(config))
    if path.is_absolute():
        if not path.is_file():
            raise FileNotFoundError(f"{key}: accelerate config {path} not found")
        return path, cwd
    for base in (cwd, *cwd.parents):
        if (base / path).is_file():
            return (base / path).resolve(), base
    raise FileNotFoundError(f"{key}: accelerate config {config} not found in {cwd} or any folder above it")


def launch_command(launch, stage: str, params_file: str | os.PathLike,
                   config_path: Optional[str | os.PathLike] = None) -> list[str]:
    """The launcher's command line: this interpreter's ``accelerate launch`` or ``torchrun`` on
    ``cogpo-kit train <stage> <params_file>`` (``config_path``: the resolved accelerate config)."""
    name = stage_dir_name(stage).split("_", 1)[1]
    train = ["-m", "cogpo_kit.cli", "train", name, str(params_file)]
    if launch.launcher == "torchrun":
        nodes = ["--standalone"] if launch.num_machines == 1 else ["--nnodes", str(launch.num_machines)]
        return [sys.executable, "-m", "torch.distributed.run", *nodes,
                "--nproc_per_node", str(launch.num_processes // launch.num_machines), *train]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_path is not None:
        cmd += ["--config_file", str(config_path)]
    cmd += ["--num_processes", str(launch.num_processes)]
    if launch.num_machines > 1:
        cmd += ["--num_machines", str(launch.num_machines)]
    return [*cmd, *train]


def write_launch_params(params, path: str | os.PathLike) -> Path:
    """Write ``params`` to ``path`` as the YAML file the launched ``cogpo-kit train`` reads, with
    ``run.output_dir`` absolute; raise ``RuntimeError`` if it does not load back to the same parameters."""
    import yaml

    from cogpo_kit.io import atomic_write_text
    from cogpo_kit.params.loader import params_dict
    from cogpo_kit.params.run import load_params

    same = dataclasses.replace(params, run=dataclasses.replace(
        params.run, output_dir=str(Path(params.run.output_dir).resolve())))
    path = Path(path)
    text = ("# The parameters of this run, as its training stage gave them to its launcher\n"
            "# (cogpo_kit.training.launch); rewritten at every launch.\n"
            + yaml.safe_dump(params_dict(same), sort_keys=False, allow_unicode=True, width=120))
    atomic_write_text(path, text)
    if load_params([path]) != same:
        raise RuntimeError(f"{path}: the run's parameters do not load back from YAML as they are")
    return path


def _in_kernel() -> bool:
    return "ipykernel" in sys.modules and type(sys.stderr).__module__.startswith("ipykernel")


def launch_env(*, in_kernel: Optional[bool] = None) -> dict[str, str]:
    """The launcher's environment: this one, with :data:`LAUNCHED_ENV` and :data:`PARENT_ENV` set, output
    unbuffered, this kit first on ``PYTHONPATH`` (the processes run the same code) and, inside a Jupyter
    kernel, text progress bars redrawn no more often than the kernel's own (:mod:`cogpo_kit.progress`)."""
    from cogpo_kit.progress import INTERVAL_ENV, KERNEL_INTERVAL_S

    env = {**os.environ, LAUNCHED_ENV: "1", PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    root = Path(__file__).resolve().parents[2]
    if root.name not in ("site-packages", "dist-packages"):
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(root), *rest])
    if _in_kernel() if in_kernel is None else in_kernel:
        env.setdefault("TQDM_MININTERVAL", os.environ.get(INTERVAL_ENV, str(KERNEL_INTERVAL_S)))
    return env


def _append_log(path: Path, level: str, message: str) -> None:
    """A line in the stage's ``stage.log``, formatted as the stage's own logger formats them."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{stamp} {level} {message}\n")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the launcher's process group: SIGTERM (it stops its processes), then SIGKILL after a grace."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def log_echo(path: Path, out: Optional[TextIO] = None):
    """A :class:`~cogpo_kit.pipeline.runner.LogTail` printing to ``out`` (this process's stdout by default)
    the lines added to ``path`` from now on, each time it is polled."""
    from cogpo_kit.pipeline.runner import Console, LogTail

    return LogTail(path, Console(out=out))


def stream(cmd: Sequence[str], *, cwd: str | os.PathLike, env: dict[str, str], output: Path,
           out: Optional[TextIO] = None, err: Optional[TextIO] = None, echo=None) -> tuple[int, str]:
    """Run ``cmd``, copying its stdout to ``out`` and its stderr to ``err`` (this process's by default) as
    they come, and both to the end of the file ``output``; ``echo`` (a :func:`log_echo`) is polled meanwhile. Returns
    ``(exit code, the last TAIL_CHARS characters of its stderr)``. An exception here (an interrupt) stops the
    command before it propagates."""
    output.parent.mkdir(parents=True, exist_ok=True)
    err_tail = ""
    with open(output, "a", encoding="utf-8") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}, in {cwd}\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            sel = selectors.DefaultSelector()
            decoders = {}
            for pipe, is_err in ((proc.stdout, False), (proc.stderr, True)):
                sel.register(pipe, selectors.EVENT_READ, is_err)
                decoders[pipe.fileno()] = codecs.getincrementaldecoder("utf-8")(errors="replace")
            open_pipes = 2
            while open_pipes:
                for key, _ in sel.select(timeout=POLL_S):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        open_pipes -= 1
                        continue
                    text = decoders[key.fd].decode(data)
                    log.write(text)
                    log.flush()
                    stream_to = (err or sys.stderr) if key.data else (out or sys.stdout)
                    stream_to.write(text)
                    stream_to.flush()
                    if key.data:
                        err_tail = (err_tail + text)[-TAIL_CHARS:]
                if echo is not None:
                    echo.poll()
            sel.close()
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
        if echo is not None:
            echo.poll()
        log.write(f"# exit code {code}\n")
    return code, err_tail


def error_tail(text: str, lines: int = TAIL_LINES) -> tuple[str, str]:
    """``(the processes' own error, the last ``lines`` lines)`` of a launcher's stderr, progress bars reduced
    to their last state and blank lines dropped. The error is the first unindented line that ends a Python
    traceback (``...Error: ...``) or says ``cogpo-kit: error: ...``, leaving out the launcher's own summary
    (``ChildFailedError``): the first process to fail names the cause, the others often fail because of
    it (a closed connection). ``""`` when there is none."""
    kept = []
    for raw in text.split("\n"):
        line = raw.rsplit("\r", 1)[-1].rstrip()
        if line.strip():
            kept.append(line)
    first = ""
    for line in kept:
        m = _ERROR_LINE.match(line)
        if m and "ChildFailedError" not in line:
            first = m.group(1)
            break
    return first, "\n".join(kept[-lines:])


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch_stage(params, stage: str) -> dict:
    """Run a training stage under the launcher its ``launch`` parameters name; returns its manifest
    (written by the launched main process). Raises :class:`LaunchError` when the launcher fails."""
    from cogpo_kit.io import read_json
    from cogpo_kit.pipeline.stage import run_dir

    name = stage_dir_name(stage)
    short = name.split("_", 1)[1]
    launch = stage_launch(params, stage)
    run_path = run_dir(params).resolve()
    cwd = Path.cwd()
    config = None
    if launch.launcher == "accelerate" and launch.config:
        config, cwd = resolve_config(launch.config, key=f"{short}.launch.config")
    params_file = write_launch_params(params, artifact_path(run_path, f"{short}_launch_params"))
    output = artifact_path(run_path, f"{short}_launch_output")
    cmd = launch_command(launch, stage, params_file, config)
    log_file = stage_path(run_path, name) / LOG_FILE
    manifest_file = manifest_path(run_path, name)
    before = read_json(manifest_file).get("run_uid") if manifest_file.exists() else None
    what = f"{launch.launcher} ({launch.num_processes} process{'es' if launch.num_processes > 1 else ''})"
    echo = log_echo(log_file) if _in_kernel() else None  # cogpo-kit run prints stage.log itself
    _append_log(log_file, "INFO", f"launching {what} in {cwd}: {' '.join(cmd)}")
    t0 = time.time()
    code, err = stream(cmd, cwd=cwd, env=launch_env(), output=output, echo=echo)
    seconds = time.time() - t0
    if code != 0:
        first, tail = error_tail(err)
        _append_log(log_file, "ERROR", f"{what} {_describe(code)} after {seconds:.1f} s"
                                       f"{': ' + first if first else ''} (all its output: {output})")
        if echo is not None:
            echo.poll()
        raise LaunchError(
            f"{name}: the launcher {what} {_describe(code)}{': ' + first if first else ''}\n"
            f"command: {' '.join(cmd)}\nlast lines of its stderr:\n{tail}\n"
            f"all its output: {output}; a rerun resumes from the stage's checkpoints",
            command=cmd, returncode=code, tail=tail, output=output)
    manifest = read_json(manifest_file) if manifest_file.exists() else None
    if manifest is None or manifest.get("run_uid") == before:
        raise LaunchError(f"{name}: the launcher {what} exited with code 0 but the stage wrote no new "
                          f"{manifest_file} (all its output: {output})", command=cmd, returncode=0, output=output)
    _append_log(log_file, "INFO", f"{what} finished in {seconds:.1f} s")
    if echo is not None:
        echo.poll()
    return manifest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_watching: set[int] = set()


def watch_parent(pid: int, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Stop this process (SIGTERM to itself) once process ``pid`` is gone, checked every ``interval_s``
    seconds by a daemon thread (started once per ``pid``)."""
    if pid in _watching:
        return
    _watching.add(pid)

    def loop() -> None:
        while _alive(pid):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name=f"watch launching process {pid}", daemon=True).start()


__all__ = ["LAUNCHED_ENV", "LaunchError", "PARENT_ENV", "error_tail", "inside_launcher", "launch_command",
           "launch_env", "launch_if_asked", "launch_stage", "log_echo", "resolve_config", "stage_launch", "stream",
           "watch_parent", "write_launch_params"]
