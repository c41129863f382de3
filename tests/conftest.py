"""Shared fixtures and the ``builds_model`` marker.

Fixtures:

- ``params_factory(*overrides, paths=(), run_id="run")``: :class:`~cogpo_kit.params.run.RunParams`
  loaded from ``paths`` and ``section.key=value`` overrides, with the run folder under the test's
  ``tmp_path`` (``<tmp_path>/<run_id>``, the folder ``crv_run`` writes);
- ``tiny_model_path``: the folder of ``tiny:llama`` (built once and cached by
  :func:`cogpo_kit.models.resolve.hf_path`); a test that asks for it is marked ``builds_model``;
- ``crv_run``: ``<tmp_path>/run`` holding the CRV artifacts written by the real critique and rethink
  stages on scripted agents (:func:`test_pairs_fixtures.write_crv_fixture`);
- ``loopback_server``: ``start(handler_class) -> base URL`` of an HTTP server on 127.0.0.1 for the
  test (stand-in OpenAI-compatible and vLLM servers);
- ``fake_run``: the parameter file of a finished fake run (every stage but the report,
  :func:`fake_run.make_fake_run`), built once per test module.

The marker ``builds_model`` (registered in ``pyproject.toml``) marks tests that build or load a
model's weights; ``pytest -m "not builds_model"`` runs the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest

BUILDS_MODEL_FIXTURES = ("tiny_model_path",)
"""Fixtures whose users are marked ``builds_model`` automatically."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in BUILDS_MODEL_FIXTURES):
            item.add_marker(pytest.mark.builds_model)


@pytest.fixture
def params_factory(tmp_path) -> Callable:
    """``make(*overrides, paths=(), run_id="run")`` -> RunParams whose run folder is ``<tmp_path>/<run_id>``."""
    from cogpo_kit.params.run import load_params

    def make(*overrides: str, paths: Sequence[str | Path] = (), run_id: str = "run"):
        return load_params(list(paths), [f"run.output_dir={tmp_path}", f"run.run_id={run_id}", *overrides])

    return make


@pytest.fixture
def loopback_server() -> Callable:
    """``start(handler_class) -> base URL``: an HTTP server on 127.0.0.1 (a free port) serving
    ``handler_class`` in a thread, shut down after the test; the URL ends in ``/v1``."""
    import threading
    from http.server import ThreadingHTTPServer

    servers = []

    def start(handler_class) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """``hf_path("tiny:llama")``: an HF folder with a tiny random Llama and the embedded tokenizer."""
    from cogpo_kit.models.resolve import hf_path

    return hf_path("tiny:llama")


@pytest.fixture
def crv_run(tmp_path) -> Path:
    """``<tmp_path>/run`` with the critique and rethink stages' own output on the scripted agents."""
    from test_pairs_fixtures import write_crv_fixture

    return write_crv_fixture(tmp_path / "run")


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    """The parameter file of a finished fake run (every stage but 07), built once per test module:
    read it, or copy it before changing it."""
    from fake_run import make_fake_run

    return make_fake_run(tmp_path_factory.mktemp("fake_run"))
