"""The package's import graph: no cycles, and parameters that do not drag in the stages.

The graph is read from the source (``ast``), one node per module of ``cogpo_kit`` (a package's node
is its ``__init__.py``). An edge ``a -> b`` means that running ``a`` imports ``b``:

- ``import x.y.z`` and ``from x.y.z import n``: ``x.y.z`` and the packages above it (their
  ``__init__`` runs first), except the packages above ``a`` itself, which are always initialised
  before ``a`` runs and so never close a cycle through ``a``;
- ``from x.y import z`` where ``z`` is a submodule: ``x.y.z`` (and ``x.y`` unless it is a package
  above ``a`` and every name taken is a submodule: ``from cogpo_kit.params import loader`` inside
  ``cogpo_kit.params.run`` reads nothing from ``params/__init__``);
- relative imports are resolved against ``a``'s package;
- imports under ``if TYPE_CHECKING:`` never run and are left out; ``importlib.import_module`` with a
  computed name (the engine registry) is not an import statement and is not seen.

Two checks:

- :func:`test_no_import_cycles_at_import_time`: module-level imports only. A cycle here is the one
  that breaks at import time (a partly initialised module, ``ImportError: cannot import name``),
  depending on which module is imported first.
- :func:`test_no_import_cycles_through_deferred_imports`: imports inside functions count too. A
  deferred import does not fail when the module loads, and that is exactly why it is the usual way to
  hide a cycle: the two modules still need each other, neither is the lower layer, and moving either
  import to the top (as any tidy-up would) turns it into an import-time failure. The cycles this
  check was written for (``models.resolve`` <-> ``models.tiny``, ``viz.artifacts`` <-> ``viz.results``)
  were deferred on at least one side. Deferring an import stays allowed for what it is good for:
  heavy or optional third-party packages (torch, transformers, vLLM, llama.cpp), and kit modules as
  long as the dependency goes one way.

A failure prints each cycle as a chain ``a -> b (a.py:12) -> ... -> a`` and every edge inside the
strongly connected group, so the line to change is named.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import cogpo_kit

PACKAGE_DIR = Path(cogpo_kit.__file__).resolve().parent
ROOT_NAME = "cogpo_kit"

STAGE_MODULES = ("cogpo_kit.crv.stage", "cogpo_kit.pairs.stage", "cogpo_kit.training.stage",
                 "cogpo_kit.evaluation.stage", "cogpo_kit.viz.report")
"""The modules that hold the stage entry points (``run_critique`` ... ``run_report``)."""


# -- the graph --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    deferred: bool
    """The import statement is inside a function (runs on call, not when the module loads)."""


def module_files() -> dict[str, Path]:
    """``{module name: file}`` for every module of the package."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [ROOT_NAME, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """``(node, deferred)`` for every import statement that can run."""
    def walk(node: ast.AST, deferred: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, deferred
                continue
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), deferred)
                continue
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inner)
    yield from walk(tree, False)


def module_edges(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The imports of one module that land in the package (see the module docstring)."""
    is_package = path.name == "__init__.py"
    own_package = name if is_package else name.rpartition(".")[0]
    parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    edges: dict[str, Edge] = {}

    def add(target: str, line: int, deferred: bool) -> None:
        if target == name or target not in modules:
            return
        known = edges.get(target)
        if known is None or (known.deferred and not deferred):
            edges[target] = Edge(name, target, line, deferred)

    def add_with_packages(target: str, line: int, deferred: bool) -> None:
        parts = target.split(".")
        for i in range(2, len(parts)):  # the packages above the target (not the top package)
            above = ".".join(parts[:i])
            if above not in parents:
                add(above, line, deferred)
        add(target, line, deferred)

    for node, deferred in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add_with_packages(alias.name, node.lineno, deferred)
            continue
        if node.level:
            base = own_package.split(".")
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not (source == ROOT_NAME or source.startswith(ROOT_NAME + ".")):
            continue
        submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
        for sub in submodules:
            add(sub, node.lineno, deferred)
        if source in parents and len(submodules) == len(node.names):
            continue  # only submodules taken from a package above: nothing read from its __init__
        add_with_packages(source, node.lineno, deferred)
    return sorted(edges.values(), key=lambda e: e.target)


def import_graph(*, deferred: bool) -> dict[str, list[Edge]]:
    """``{module: edges}``; ``deferred=False`` keeps module-level imports only."""
    modules = module_files()
    return {name: [e for e in module_edges(name, path, modules) if deferred or not e.deferred]
            for name, path in modules.items()}


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Groups of two or more modules that import each other, directly or not (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for edge in edges:
                nxt = edge.target
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def shortest_cycle(graph: dict[str, list[Edge]], group: list[str]) -> list[Edge]:
    """One shortest cycle through the group's first module, as its edges."""
    members = set(group)
    start = group[0]
    came: dict[str, Edge] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in graph[node]:
            if edge.target not in members:
                continue
            if edge.target == start:
                chain = [edge]
                while chain[0].source != start:
                    chain.insert(0, came[chain[0].source])
                return chain
            if edge.target not in came:
                came[edge.target] = edge
                queue.append(edge.target)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a group always has one


def _where(edge: Edge) -> str:
    path = module_files()[edge.source].relative_to(PACKAGE_DIR.parent)
    return f"{path}:{edge.line}{', in a function' if edge.deferred else ''}"


def describe_cycles(graph: dict[str, list[Edge]]) -> str:
    """Each cycle as a chain with file and line, then every edge inside its group."""
    out = []
    for group in strongly_connected(graph):
        chain = shortest_cycle(graph, group)
        text = chain[0].source + "".join(f" -> {e.target} ({_where(e)})" for e in chain)
        inside = [e for m in group for e in graph[m] if e.target in group]
        out.append(f"cycle: {text}\n" + "".join(f"    {e.source} -> {e.target} ({_where(e)})\n" for e in inside))
    return "".join(out)


# -- the checks -------------------------------------------------------------------------------------

def test_no_import_cycles_at_import_time():
    report = describe_cycles(import_graph(deferred=False))
    assert not report, "module-level import cycles (they fail at import time, depending on order):\n" + report


def test_no_import_cycles_through_deferred_imports():
    report = describe_cycles(import_graph(deferred=True))
    assert not report, ("import cycles closed by imports inside functions (the modules still need each "
                        "other; give the shared part a home both can import):\n" + report)


def test_the_graph_sees_what_python_imports():
    """The reader finds module-level, deferred, relative and ``from package import submodule``
    imports, and leaves out ``TYPE_CHECKING`` blocks and the packages above the importing module."""
    modules = {"cogpo_kit.a": Path("a.py"), "cogpo_kit.a.b": Path("b.py"), "cogpo_kit.a.c": Path("c.py"),
               "cogpo_kit.d": Path("d.py"), "cogpo_kit.e": Path("e.py"), "cogpo_kit.f": Path("f.py")}
    source = ("from typing import TYPE_CHECKING\n"
              "from cogpo_kit.a import c\n"
              "from . import b as _b\n"
              "import cogpo_kit.d\n"
              "if TYPE_CHECKING:\n    from cogpo_kit.f import X\n"
              "def later():\n    from cogpo_kit.e import y\n")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.py"
        path.write_text(source, encoding="utf-8")
        edges = {e.target: e for e in module_edges("cogpo_kit.a.x", path, modules)}
        assert set(edges) == {"cogpo_kit.a.b", "cogpo_kit.a.c", "cogpo_kit.d", "cogpo_kit.e"}
        assert edges["cogpo_kit.e"].deferred and not edges["cogpo_kit.d"].deferred
        edges = {e.target for e in module_edges("cogpo_kit.d", path.with_name("x.py"), modules)}
        assert "cogpo_kit.a" in edges  # from outside, importing cogpo_kit.a.c runs a/__init__ first
    graph = {"p": [Edge("p", "q", 1, False)], "q": [Edge("q", "r", 2, True)], "r": [Edge("r", "p", 3, False)],
             "s": [Edge("s", "p", 4, False)]}
    assert strongly_connected(graph) == [["p", "q", "r"]]
    assert [e.target for e in shortest_cycle(graph, ["p", "q", "r"])] == ["q", "r", "p"]


def _loaded_after(statement: str) -> list[str]:
    """The kit's modules loaded by ``statement`` in a fresh interpreter."""
    code = (f"import sys\n{statement}\nimport json\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('{ROOT_NAME}'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(PACKAGE_DIR.parent))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_params_loads_no_stage_and_no_stage_config():
    """``import cogpo_kit.params`` (and ``from cogpo_kit.params import params_dict``, what stages
    need) loads the loader only; ``RunParams`` gathers every stage's config but no stage's code."""
    loaded = _loaded_after("import cogpo_kit.params\nfrom cogpo_kit.params import params_dict, ParamsError")
    assert [m for m in loaded if not m.startswith("cogpo_kit.params")] == [ROOT_NAME], loaded
    loaded = _loaded_after("from cogpo_kit.params import RunParams, load_params")
    assert "cogpo_kit.params.run" in loaded
    stages = [m for m in loaded if m in STAGE_MODULES or m.startswith("cogpo_kit.pipeline")]
    assert not stages, f"importing the parameters loads stage code: {stages}"


STAGE_CONFIGS = {"cogpo_kit.crv": "cogpo_kit.crv.config", "cogpo_kit.pairs": "cogpo_kit.pairs.config",
                 "cogpo_kit.training": "cogpo_kit.training.config", "cogpo_kit.evaluation": "cogpo_kit.evaluation.config",
                 "cogpo_kit.viz": "cogpo_kit.viz.config"}
"""Each stage package -> the module of its section of :class:`~cogpo_kit.params.run.RunParams`."""


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_a_stage_module_loads_no_other_stage_config(module):
    """A stage records its parameters with ``cogpo_kit.params.loader.params_dict``: importing it does
    not load ``cogpo_kit.params.run`` and through it every other stage's config."""
    loaded = _loaded_after(f"import {module}")
    own = STAGE_CONFIGS[module.rpartition(".")[0]]
    others = [m for m in loaded if m == "cogpo_kit.params.run" or (m in STAGE_CONFIGS.values() and m != own)]
    assert not others, f"importing {module} loads {others}"
