"""The stage notebooks in a real JupyterLab (with jupytext, as ``make lab`` starts it) on loopback.

- ``test_save_through_the_contents_api_keeps_the_edit``: an edit written by JupyterLab's own file API
  (``PUT /api/contents/...``, what its Save does) lands in the ``.py`` source as exactly that edit, a save
  without an edit changes no byte, and the saved source still keeps every rule of ``test_notebooks.py``;
- ``test_rethink_notebook_in_jupyterlab``: headless Chromium, driven over the DevTools protocol, opens
  ``02_rethink.py`` as a notebook, edits a note and saves it with JupyterLab's save command, points the
  parameters cell at a finished (fake) run, runs all cells, and checks that the CoT comparison widget
  renders the run's first example (and the next one on a click of *next*, through the kernel), the
  funnel figure is drawn and the page logged no JavaScript error.
  Screenshots go to ``outputs/test-artifacts/`` (``COGPO_TEST_OUTPUTS``); with ``COGPO_UPDATE_RESULTS=1`` one is
  also copied to ``benchmarks/results/``.

``COGPO_LAB_RUN=<params file>`` opens that finished run instead of the fake one (e.g. a smoke run: a YAML
with ``extends: <repo>/params/smoke.yaml`` and its ``run.output_dir``).

Run them alone with ``.venv/bin/pytest -q tests/test_jupyterlab.py`` (about two minutes on 2 busy cores);
they need the ``test`` extra (jupyterlab, jupytext) and, for the browser test, ``/usr/bin/chromium``
(``make system-deps``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cogpo_kit.params import load_params
from cogpo_kit.pipeline.notebook import NOTEBOOK_DIR, notebook_source
from cogpo_kit.pipeline.stage import run_dir
from cogpo_kit.viz.artifacts import Run
from test_notebooks import check_source

pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
pytest.importorskip("jupytext", reason="jupytext is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parents[1]
TEST_OUTPUTS = Path(os.environ.get("COGPO_TEST_OUTPUTS", ROOT / "outputs" / "test-artifacts"))
RESULTS = ROOT / "benchmarks" / "results"
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
NOTEBOOK = notebook_source("rethink").name
EDIT_AFTER = "# ## One example at a time\n"
EDIT_LINE = "# A researcher's note, written in JupyterLab.\n"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Lab:
    """A JupyterLab server on 127.0.0.1 serving ``root`` (token auth; config, settings and runtime
    folders of its own, so nothing of the user's setup is read or written)."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   PYTHONUNBUFFERED="1")
        news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text(json.dumps({"fetchNews": "false"}), encoding="utf-8")  # no news fetch, no news prompt
        self.log = home / "jupyterlab.log"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                json.loads(self.api("GET", "status"))
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"JupyterLab did not start: {self.log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, body: dict | None = None) -> bytes:
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class Browser:
    """Headless Chromium on one page, driven over the DevTools protocol (a websocket to
    ``--remote-debugging-port``); console errors and uncaught exceptions are collected in ``errors``."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             f"--remote-debugging-port={self.port}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.loop = asyncio.new_event_loop()
        self.ws = None
        self._id = 0
        self.errors: list[str] = []
        try:
            self._connect(width, height)
        except BaseException:
            self.close()  # no Chromium left behind when the page cannot be reached
            raise

    def _connect(self, width: int, height: int) -> None:
        from tornado.websocket import websocket_connect

        deadline = time.monotonic() + 60
        while True:
            try:
                targets = json.loads(_get(f"http://127.0.0.1:{self.port}/json/list"))
                pages = [t for t in targets if t["type"] == "page"]
                if pages:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not open its DevTools port {self.port}")
            time.sleep(0.3)

        async def connect():
            return await websocket_connect(pages[0]["webSocketDebuggerUrl"], max_message_size=256 * 2**20)

        self.ws = self.loop.run_until_complete(connect())
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Emulation.setFocusEmulationEnabled", enabled=True)  # JupyterLab's commands act on the focused tab

    def _event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                            for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")

    async def _call(self, method: str, params: dict) -> dict:
        self._id += 1
        my_id = self._id
        await self.ws.write_message(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                raise RuntimeError("the DevTools connection closed")
            msg = json.loads(raw)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self._event(msg)

    def call(self, method: str, timeout: float = 120, **params) -> dict:
        return self.loop.run_until_complete(asyncio.wait_for(self._call(method, params), timeout))

    def js(self, expression: str, timeout: float = 120):
        """Evaluate ``expression`` in the page (promises awaited) and return its JSON value."""
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise AssertionError(f"in the page: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.loop.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab serving a copy of ``notebooks/`` (sources and jupytext.toml) under ``<root>/notebooks``."""
    root = tmp_path_factory.mktemp("lab_root")
    shutil.copytree(NOTEBOOK_DIR, root / "notebooks", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    server = Lab(root, tmp_path_factory.mktemp("lab_home"))
    yield server
    server.stop()


def test_save_through_the_contents_api_keeps_the_edit(lab):
    path = lab.root / "notebooks" / notebook_source("pairs").name
    original = path.read_text(encoding="utf-8")
    api = f"contents/notebooks/{path.name}"
    model = json.loads(lab.api("GET", f"{api}?type=notebook&content=1"))
    assert model["type"] == "notebook" and model["content"]["cells"][1]["metadata"]["tags"] == ["parameters"]
    lab.api("PUT", api, {"type": "notebook", "format": "json", "content": model["content"]})
    assert path.read_text(encoding="utf-8") == original  # a save without an edit changes no byte

    cells = model["content"]["cells"]
    note = next(c for c in cells if c["cell_type"] == "markdown" and "## Browse the pairs" in c["source"])
    note["source"] += "\nChecked by hand on the demo run."
    lab.api("PUT", api, {"type": "notebook", "format": "json", "content": model["content"]})
    saved = path.read_text(encoding="utf-8")
    assert saved.splitlines() == [*original.splitlines()[:original.splitlines().index("# ## Browse the pairs") + 2],
                                  "# Checked by hand on the demo run.",
                                  *original.splitlines()[original.splitlines().index("# ## Browse the pairs") + 2:]]
    check_source(path)  # the edited source still passes every source check of the suite


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)")
def test_rethink_notebook_in_jupyterlab(lab, request, tmp_path):
    run_params = os.environ.get("COGPO_LAB_RUN") or str(request.getfixturevalue("fake_run"))
    first, second = [c["id"] for c in Run(run_dir(load_params([run_params]))).critiques()[:2]]
    path = lab.root / "notebooks" / NOTEBOOK
    original = path.read_text(encoding="utf-8")
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=f"{lab.url}/lab?token={lab.token}")
        browser.wait("!!(window.jupyterapp && document.querySelector('#jp-main-dock-panel'))", "JupyterLab to start")
        factories = browser.js(f"""(async () => {{ await window.jupyterapp.started; await window.jupyterapp.restored;
            return [...window.jupyterapp.docRegistry.preferredWidgetFactories('notebooks/{NOTEBOOK}')]
                   .map(f => f.name); }})()""")
        assert "Jupytext Notebook" in factories, factories  # jupytext's JupyterLab extension is active
        assert browser.js(f"""(async () => {{ const app = window.jupyterapp;
            const panel = await app.commands.execute('docmanager:open',
                {{path: 'notebooks/{NOTEBOOK}', factory: 'Jupytext Notebook'}});
            await panel.context.ready; await panel.sessionContext.ready; window.__panel = panel;
            app.shell.activateById(panel.id); await new Promise(r => setTimeout(r, 500));
            return app.shell.currentWidget === panel; }})()""")
        browser.wait("window.__panel.sessionContext.session?.kernel?.status === 'idle'", "the kernel", 180)

        # An edit of a note, saved with JupyterLab's own save command.
        browser.js(f"""(async () => {{ const nb = window.__panel.content;
            const cell = nb.widgets.find(c => c.model.type === 'markdown'
                                              && c.model.sharedModel.getSource().startsWith('## One example'));
            cell.model.sharedModel.setSource(cell.model.sharedModel.getSource().replace(
                {json.dumps(EDIT_AFTER[2:])}, {json.dumps(EDIT_AFTER[2:] + EDIT_LINE[2:])}));
            await window.jupyterapp.commands.execute('docmanager:save'); return true; }})()""")
        deadline = time.monotonic() + 30
        while path.read_text(encoding="utf-8") == original and time.monotonic() < deadline:
            time.sleep(0.5)
        saved = path.read_text(encoding="utf-8")
        assert saved == original.replace(EDIT_AFTER, EDIT_AFTER + EDIT_LINE), "the save changed more than the edit"
        check_source(path)

        # The parameters pointed at the finished run (not saved), then every cell run.
        params_src = (f"params_files = [{run_params!r}]\noverrides = []\nrun_id = None\noutput_dir = None\n"
                      "skip_compute = True")
        browser.js(f"""(async () => {{ const nb = window.__panel.content;
            nb.widgets[1].model.sharedModel.setSource({json.dumps(params_src)});
            await window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }})()""")
        browser.wait("""(() => { const nb = window.__panel.content;
            return nb.widgets.every(c => c.model.type !== 'code' || (c.model.executionCount !== null
                    && window.__panel.sessionContext.session.kernel.status === 'idle')); })()""",
                     "all cells to run", 300)
        errors_out = browser.js("""window.__panel.content.widgets.filter(c => c.model.type === 'code')
            .flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error')
            .map(o => o.ename + ': ' + o.evalue)""")
        assert not errors_out, errors_out
        view = browser.wait("""(() => { const v = window.__panel.node.querySelector('.jupyter-widgets .ck-view');
            return v && v.innerText; })()""", "the CoT comparison widget", 120)
        assert first in view and "Original CoT" in view and "Critic votes" in view
        browser.wait("window.__panel.node.querySelectorAll('.js-plotly-plot .main-svg').length >= 1",
                     "the funnel figure", 60)
        controls = browser.js("""[...window.__panel.node.querySelectorAll('.jupyter-widgets select')].length""")
        assert controls >= 3  # level, outcome and the item selector: the live widget, not its static copy
        browser.js("""[...window.__panel.node.querySelectorAll('.jupyter-widgets button')]
                      .find(b => b.innerText.includes('next')).click(); true""")
        shown = "window.__panel.node.querySelector('.jupyter-widgets .ck-view').innerText"
        browser.wait(f"{shown}.startsWith({json.dumps(second + ' ')})", "the next example (a kernel round trip)", 60)
        browser.js("""[...window.__panel.node.querySelectorAll('.jupyter-widgets button')]
                      .find(b => b.innerText.includes('prev')).click(); true""")
        browser.wait(f"{shown}.startsWith({json.dumps(first + ' ')})", "the first example again", 60)

        TEST_OUTPUTS.mkdir(parents=True, exist_ok=True)
        browser.js("""window.__panel.node.querySelector('.jupyter-widgets .ck-view')
                      .closest('.jp-OutputArea-output').scrollIntoView(); true""")
        time.sleep(1)
        shot = browser.screenshot(TEST_OUTPUTS / "jupyterlab_rethink_widget.png")
        browser.js("window.__panel.node.querySelector('.js-plotly-plot').scrollIntoView(); true")
        time.sleep(1)
        browser.screenshot(TEST_OUTPUTS / "jupyterlab_rethink_funnel.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("COGPO_UPDATE_RESULTS") == "1":  # refresh the committed screenshot on purpose only
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, RESULTS / "jupyterlab_rethink_widget.png")
        assert not browser.errors, "\n".join(browser.errors)
    finally:
        browser.close()
