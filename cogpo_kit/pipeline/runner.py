"""``cogpo-kit run``: the stage notebooks executed in order by papermill, one run folder.

For each selected stage, the notebook of ``notebooks/NN_stage.py`` (its jupytext source, converted by
:func:`cogpo_kit.pipeline.notebook.notebook_path`) is executed with its parameters taken from
the YAML files (and overrides) into ``<output_dir>/<run_id>/notebooks/NN_stage.ipynb``. Before
anything runs, every notebook's ``parameters`` cell is read: a parameter it does not declare is an
error (papermill itself would only warn). A stage whose manifest matches the current parameters
and inputs (see :mod:`cogpo_kit.pipeline.freshness`) is skipped unless ``force``; when its
executed notebook is missing, the notebook is still executed with ``skip_compute = True`` so the
run folder holds every stage's tables and figures. The first failure stops the run with an error
that names the executed notebook and the failing cell. At the end the results table and the
report path are printed.

What a stage is doing reaches the terminal while it runs: the kernel is started with
``COGPO_PROGRESS=text`` so the stage's progress bars (:mod:`cogpo_kit.progress`: items done, rate,
ETA) are text on its stderr, which is forwarded as it is drawn; and the new lines of the stage's
``stage.log`` are printed as they are written (:class:`LogTail`). ``label`` prefixes every line
(a sweep runs several variants at once).

``in_process=True`` calls the stage functions directly (no kernels, no notebooks): for tests and
debugging.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from cogpo_kit.params.loader import ParamsError, params_dict
from cogpo_kit.params.run import load_params
from cogpo_kit.pipeline.freshness import check_stage, record_stage
from cogpo_kit.pipeline.notebook import check_parameters, notebook_path, stage_function
from cogpo_kit.pipeline.stage import STAGES, run_dir
from cogpo_kit.pipeline.stages import LOG_FILE, artifact_path, stage_dir_name, stage_path
from cogpo_kit.progress import MODE_ENV

KERNEL_NAME = "python3"
FALLBACK_KERNEL = "cogpo-kit"
KERNEL_ENV = {MODE_ENV: "text"}
"""Set in every stage kernel's environment: progress bars as text the runner can forward."""
TAIL_INTERVAL_S = 0.5
"""How often a running stage's ``stage.log`` is read for new lines."""
PLAIN_BAR_INTERVAL_S = 30.0
"""Where stderr is not a terminal, a forwarded progress bar is written as a line at most this often."""


_CURSOR_UP = "\x1b[A"
_NESTED_BAR = re.compile(r"\n+([^\n\x1b]*)(?:\x1b\[A)+")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage, the executed notebook and the failing cell."""


class Console:
    """The terminal shared by the runner's lines, a stage's forwarded progress bars and its log lines.

    ``bar(text)`` takes raw stderr text of a kernel (progress bars redrawn with ``\\r``, or whole lines);
    ``line(text)`` prints a whole line to ``out``, clearing the bar being drawn first and drawing it
    again after, so log lines and bars never share a line. Every line carries ``label`` when given.
    Safe to call from several threads."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, label: str | None = None):
        self._out, self._err = out, err
        self.label = label
        self._lock = threading.Lock()
        self._partial = ""  # text after the last \\r or \\n: the bar being drawn
        self._shown = ""
        self._last_plain = 0.0

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def _prefix(self, text: str) -> str:
        return f"[{self.label}] {text}" if self.label and text else text

    def _clear(self) -> None:
        if self._shown:
            self.err.write("\r" + " " * len(self._shown) + "\r")
            self.err.flush()
            self._shown = ""

    def _draw(self) -> None:
        if not self._partial.strip():
            return
        if not _isatty(self.err):  # a log file: a bar's state as a line now and then, no redraws
            if time.time() - self._last_plain >= PLAIN_BAR_INTERVAL_S:
                self._last_plain = time.time()
                self.err.write(self._prefix(self._partial.strip()) + "\n")
                self.err.flush()
            return
        self._shown = self._prefix(self._partial)
        self.err.write("\r" + self._shown)
        self.err.flush()

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.out.write(self._prefix(text) + "\n")
            self.out.flush()
            self._draw()

    def bar(self, text: str) -> None:
        # a nested tqdm bar is drawn one line down ("\n" bar "\x1b[A"): here it takes the one status line
        text = _NESTED_BAR.sub(lambda m: "\r" + m.group(1), text).replace(_CURSOR_UP, "")
        with self._lock:
            for part in re.split(r"(\r|\n)", text):
                if part == "\n":
                    self._clear()
                    if self._partial.strip():
                        self.err.write(self._prefix(self._partial) + "\n")
                        self.err.flush()
                    self._partial = ""
                elif part == "\r":
                    self._partial = ""
                elif part:
                    self._partial += part
            self._clear()
            self._draw()

    def end(self) -> None:
        """Finish the bar being drawn (a stage that ended without a last newline)."""
        with self._lock:
            if self._shown:
                self.err.write("\n")
                self.err.flush()
            self._shown = self._partial = ""

    # a file-like face for papermill's ``stderr_file``
    def write(self, text: str) -> int:
        self.bar(text)
        return len(text)

    def flush(self) -> None:
        pass


class LogTail:
    """Prints the lines appended to a file (a running stage's ``stage.log``) while it is written.

    Lines that were in the file before :meth:`start` are not printed. Used as a context manager: the
    lines written up to its exit are printed before it returns."""

    def __init__(self, path: Path, console: Console, *, interval_s: float = TAIL_INTERVAL_S):
        self.path, self.console, self.interval_s = Path(path), console, interval_s
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._rest = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tail {self.path}", daemon=True)

    def poll(self) -> None:
        """Print the complete lines written since the last poll."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # the file was replaced: read it from the start
            self._offset, self._rest = 0, b""
        if size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip()
            if text:
                self.console.line(f"  {text}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def __enter__(self) -> "LogTail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def select_stages(stages: Sequence[str] | str | None = None, from_stage: str | None = None) -> list[str]:
    """Stage folder names to run, in pipeline order (``stages`` and ``from_stage`` both narrow the set)."""
    try:
        if isinstance(stages, str):
            stages = [s for s in stages.split(",") if s.strip()]
        chosen = {stage_dir_name(s.strip()) for s in stages} if stages else set(STAGES)
        start = STAGES.index(stage_dir_name(from_stage)) if from_stage else 0
    except ValueError as exc:
        raise ParamsError(str(exc)) from None
    out = [s for s in STAGES[start:] if s in chosen]
    if not out:
        raise ParamsError(f"no stage selected (stages={stages!r}, from={from_stage!r})")
    return out


def ensure_kernel() -> str:
    """A kernelspec that starts this interpreter: ``python3`` when it does, else one installed as
    ``cogpo-kit`` into this environment."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    pythons = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    for name in (KERNEL_NAME, FALLBACK_KERNEL):
        try:
            argv0 = ksm.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        # jupyter_client starts sys.executable for a bare "python" (see KernelManager.format_kernel_cmd).
        if argv0 in pythons or os.path.realpath(argv0) == os.path.realpath(sys.executable):
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=FALLBACK_KERNEL, display_name="Python (cogpo-kit)", prefix=sys.prefix)
    print(f"installed the Jupyter kernel '{FALLBACK_KERNEL}' for {sys.executable}", file=sys.stderr)
    return FALLBACK_KERNEL


def kernel_manager_class(env: dict[str, str]):
    """An ``AsyncKernelManager`` whose kernels start with ``env`` added to this process's environment
    (this process's own environment is left as it is, so concurrent runs can differ)."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    class StageKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # local sockets, one set of files per kernel (removed at its shutdown): no network port, no
            # warning per kernel about unencrypted TCP, and kernels started at once never pick the same files
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            self.transport = "ipc"
            self.ip = str(runtime / f"cogpo-kernel-{uuid.uuid4().hex[:12]}-ipc")

        async def start_kernel(self, **kw):
            kw["env"] = {**os.environ, **(kw.get("env") or {}), **env}
            return await super().start_kernel(**kw)

    return StageKernelManager


def execute_notebook(stage: str, out_path: Path, parameters: dict[str, Any], *, kernel_name: str,
                     source: Path | None = None, cwd: str | None = None, log_output: bool = False,
                     console: Console | None = None) -> Path:
    """Execute one stage notebook with papermill; a failing cell raises :class:`PipelineError`.

    With a ``console``, the kernel's stderr (the stage's text progress bars, warnings) is forwarded to
    it as it arrives; papermill's own cell bar is then left out."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = source or notebook_path(stage)
    check_parameters(source, parameters)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"kernel_manager_class": kernel_manager_class(KERNEL_ENV)}
    if console is not None:
        extra["stderr_file"] = console
    try:
        pm.execute_notebook(str(source), str(out_path), parameters=parameters, kernel_name=kernel_name,
                            cwd=cwd or os.getcwd(),
                            progress_bar=console is None and os.environ.get("COGPO_NO_PROGRESS") != "1",
                            log_output=log_output, **extra)
    except PapermillExecutionError as exc:
        first = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        raise PipelineError(
            f"stage {stage} failed in {out_path}, cell {exc.cell_index} (In [{exc.exec_count}]: {first.strip()!r}): "
            f"{exc.ename}: {exc.evalue}") from None
    except Exception as exc:  # kernel died, timeout, unreadable notebook: name the notebook all the same
        raise PipelineError(f"stage {stage} failed in {out_path}: {type(exc).__name__}: {exc}") from exc
    finally:
        if console is not None:
            console.end()
    return out_path


def _print_results(run_path: Path) -> tuple[Any, Path | None]:
    from cogpo_kit.viz import tables
    from cogpo_kit.viz.artifacts import Run

    run = Run(run_path)
    table = tables.results(run, with_ci=True)
    if table.empty:
        print("results: none (the evaluation stage has not run)")
    else:
        print("results (pass@1 %, [95% CI]):")
        print(table.to_string())
    report = artifact_path(run_path, "report")
    print(f"report: {report}" if report.exists() else "report: not written (the report stage has not run)")
    return table, report if report.exists() else None


def run_pipeline(params_paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
                 stages: Sequence[str] | str | None = None, from_stage: str | None = None, force: bool = False,
                 in_process: bool = False, *, log_output: bool = False, label: str | None = None,
                 before_stage: Callable[[str, Any], bool | None] | None = None, summary: bool = True,
                 show_logs: bool = True) -> dict:
    """Run the selected stages of one run; returns ``{run, executed, skipped, notebooks, report, results}``.

    ``log_output`` also streams each notebook's cell output to this process's log. ``label`` prefixes
    every line printed; ``before_stage(stage, params)`` is called before each stage's manifest is
    checked (a sweep seeds the run folder there) and redoes the stage when it returns true; ``summary=False`` leaves out the results table at
    the end; ``show_logs=False`` keeps the stages' log lines and progress bars off the terminal."""
    if isinstance(params_paths, (str, os.PathLike)):
        params_paths = [params_paths]
    overrides = list(overrides or ())
    try:
        params = load_params(params_paths, overrides)
    except ParamsError as exc:
        if "unknown key 'sweep'" in str(exc):
            raise ParamsError(f"{exc}; a file with a 'sweep:' section is run by `cogpo-kit sweep`") from None
        raise
    selected = select_stages(stages, from_stage)
    run_path = run_dir(params)
    tree = params_dict(params)
    nb_dir = run_path / "notebooks"
    parameters = {"params_files": [str(Path(p).resolve()) for p in params_paths], "overrides": overrides,
                  "output_dir": str(Path(params.run.output_dir).resolve()), "skip_compute": False}
    kernel = None
    if not in_process:
        for stage in selected:  # every notebook checked before the first one runs
            try:
                check_parameters(notebook_path(stage), parameters)
            except (ValueError, FileNotFoundError) as exc:
                raise ParamsError(str(exc)) from None
        kernel = ensure_kernel()
    console = Console(label=label)
    console.line(f"run {params.run.run_id}: {run_path} · stages {', '.join(selected)}"
                 f"{' · forced' if force else ''}{' · in process' if in_process else ''}")
    executed, skipped, notebooks = [], {}, {}
    for i, stage in enumerate(selected, start=1):
        step = f"[{i}/{len(selected)}] {stage}"
        forced = force
        if before_stage is not None:
            forced = bool(before_stage(stage, params)) or force
        fresh = check_stage(run_path, stage, tree)
        out_nb = nb_dir / f"{stage}.ipynb"
        if fresh.fresh and not forced:
            skipped[stage] = fresh.reason
            console.line(f"{step}: skipped ({fresh.reason}; --force redoes it)")
            record_stage(run_path, stage)
            if not in_process and not out_nb.exists():
                notebooks[stage] = str(execute_notebook(stage, out_nb, {**parameters, "skip_compute": True},
                                                        kernel_name=kernel))
            continue
        console.line(f"{step}: running ({'forced' if fresh.fresh else fresh.reason})")
        t0 = time.time()
        tail = LogTail(stage_path(run_path, stage) / LOG_FILE, console) if show_logs else None
        if tail is not None:
            tail.__enter__()
        try:
            if in_process:
                try:
                    stage_function(stage)(params)
                except Exception as exc:
                    raise PipelineError(f"stage {stage} failed: {type(exc).__name__}: {exc}") from exc
            else:
                notebooks[stage] = str(execute_notebook(stage, out_nb, parameters, kernel_name=kernel,
                                                        log_output=log_output,
                                                        console=console if show_logs else None))
        finally:
            if tail is not None:
                tail.__exit__(None, None, None)
        record_stage(run_path, stage)
        executed.append(stage)
        console.line(f"{step}: done in {time.time() - t0:.1f} s")
    if summary:
        table, report = _print_results(run_path)
    else:
        table, report = None, artifact_path(run_path, "report")
        report = report if report.exists() else None
    return {"run": str(run_path), "executed": executed, "skipped": skipped, "notebooks": notebooks,
            "report": str(report) if report else None, "results": table}
