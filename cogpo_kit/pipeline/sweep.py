"""``cogpo-kit sweep``: several variants of one run, each its own run folder, sharing every stage they can.

A sweep is a params file (or several, later wins) with a ``sweep:`` section, and/or ``--grid`` on the
command line::

    # a params file
    extends: demo.yaml
    sweep:
      id: demo-beta                            # folder <output_dir>/<id>/ (default <run_id>-sweep)
      grid: {pairs.beta_large: [0.3, 0.5, 1.0]}  # every combination of the listed values
      # variants:                              # and/or named variants, each a set of overrides
      #   uniform-0.1: {pairs.beta_small: 0.1, pairs.beta_medium: 0.1, pairs.beta_large: 0.1}
      stages: [critique, rethink, pairs, sft, preference, evaluate]   # optional (default: all)
      jobs: 1                                  # variants run at the same time

    cogpo-kit sweep params/demo.yaml --grid pairs.beta_large=0.3,0.5,1.0 --jobs 2

Named variants and grid points are crossed (a variant for every pair); each variant is the run
``<run_id>-<variant>`` in the same ``output_dir``, run by :func:`~cogpo_kit.pipeline.runner.run_pipeline`
(notebooks through papermill, or in process). The parameters without the ``sweep:`` section are
written to ``<output_dir>/<id>/params.yaml`` and every variant runs from that file plus its overrides.

**Sharing stages.** Before it runs, the sweep gives each (variant, stage) a key: the hash of the
parameters the stage depends on (:func:`~cogpo_kit.pipeline.freshness.stage_params`) and of its
upstream stages' keys. The first variant with a key runs that stage; the others wait for it and are
*seeded* with its finished stage folder instead of running it, when the freshness rules
(:mod:`cogpo_kit.pipeline.freshness`) say the folder matches their own parameters and its upstream
stages are the very ones they hold (same ``run_uid``). So a beta sweep (``pairs.beta_*``) runs the
critique, rethink and SFT stages once and pairs, preference, evaluation and report per variant; an
ablation sweep (``crv.ablation``) shares the critique.

Seeding copies the stage folder (:func:`seed_stage`): files inside model folders (``*/model/``, which the
kit only ever replaces as a whole) are hard-linked, so shared weights take no extra disk; every other
file is copied, so a later rerun of the variant (which appends to ``stage.log`` and rewrites
artifacts) never touches the sibling's files; training checkpoints (``checkpoints/``, resume state of
the run that made them) are left out. The copied manifest gets ``reused_from`` (the run it came from)
and its recorded inputs point into the variant's own folder.

**Resuming.** Running the sweep again skips every stage whose manifest matches (as ``cogpo-kit run``
does), so finished variants and stages are not redone; ``--force`` redoes the stages each key's first
variant runs, and the others are seeded again from them.

**Parallel.** ``jobs`` variants run at once (threads; each stage notebook runs in its own kernel);
a variant waits only for the stages it shares, so no variant waits for a later one. The default is 1:
on a CPU the stages already use every core.

At the end ``<output_dir>/<id>/sweep_manifest.json`` lists the variants, their parameter changes,
which stages each ran, found up to date, or was seeded with (and from where), their wall times, and
``compare.html`` there compares the variants (:mod:`cogpo_kit.viz.compare`) when they were evaluated.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from cogpo_kit.io import atomic_write_json, atomic_write_text, read_json, replace_dir, stable_hash
from cogpo_kit.params.loader import (ParamsError, deep_merge, from_dict, params_dict, params_layers,
                                     parse_override)
from cogpo_kit.pipeline.freshness import check_stage, stage_params
from cogpo_kit.pipeline.stage import STAGES, read_manifest, scrub_secrets
from cogpo_kit.pipeline.stages import MANIFEST_FILE, stage_path, stage_spec
from cogpo_kit.pipeline.sweep_files import BASE_PARAMS, COMPARE_REPORT, REUSED_KEY, SWEEP_MANIFEST

__all__ = ["BASE_PARAMS", "COMPARE_REPORT", "REUSED_KEY", "SWEEP_MANIFEST", "SweepParams", "SweepPlan", "Variant",
           "can_seed", "parse_grid", "plan_sweep", "read_sweep", "run_sweep", "seed_stage", "split_values",
           "variant_names"]

SWEEP_KEY = "sweep"
"""Top-level key of a params file holding the sweep (not a run parameter)."""
LINKED_DIR = "model"
"""Files below a folder of this name are hard-linked when a stage is seeded (the kit replaces such
folders whole, never a file in place)."""
SKIPPED_DIRS = ("checkpoints",)
"""Folders left out when a stage is seeded: resume state of the run that made them, not artifacts."""


@dataclass(frozen=True)
class SweepParams:
    """The ``sweep:`` section of a params file."""

    id: Optional[str] = None
    """Sweep folder name under ``run.output_dir`` (``None``: ``<run_id>-sweep``)."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Parameter path -> values; every combination is a variant (crossed with ``variants``)."""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant name -> its parameter changes (``{path: value}`` or nested mappings); ``{}`` = the base."""
    stages: Optional[list[str]] = None
    """Stages to run in every variant (``None``: all)."""
    jobs: int = 1
    """Variants run at the same time."""

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid '{key}' lists no values")
        for name in self.variants:
            if not _NAME.fullmatch(name):
                raise ValueError(f"variant name '{name}' may hold only letters, digits, '.', '_' and '-'")


_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Variant:
    """One run of the sweep."""

    name: str
    """Short name; the run id is ``<base run_id>-<name>``."""
    run_id: str
    """Its run folder name."""
    changes: dict[str, Any]
    """Parameter path -> value, what it changes in the base parameters."""

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.changes.items()] + [f"run.run_id={self.run_id}"]


@dataclass
class SweepPlan:
    """What a sweep will run: its folder, base parameters, variants and which of them share each stage."""

    sweep_id: str
    folder: Path
    base: dict
    variants: list[Variant]
    stages: list[str]
    jobs: int
    trees: dict[str, dict] = field(default_factory=dict)
    """Variant name -> its full parameter dict."""
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    """``(variant, stage)`` -> the hash of the stage's parameters and its upstream keys."""

    def producer(self, variant: str, stage: str) -> str:
        """The first variant with the same key for ``stage``: the one that runs it."""
        key = self.keys[(variant, stage)]
        return next(v.name for v in self.variants if self.keys[(v.name, stage)] == key)

    def sharing(self) -> dict[str, list[list[str]]]:
        """Stage -> groups of variants that share it (each group runs it once)."""
        out = {}
        for stage in self.stages:
            groups: dict[str, list[str]] = {}
            for v in self.variants:
                groups.setdefault(self.keys[(v.name, stage)], []).append(v.name)
            out[stage] = list(groups.values())
        return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def split_values(text: str) -> list[Any]:
    """``"0.1,0.2,[a,b]"`` -> ``[0.1, 0.2, ["a", "b"]]``: commas outside brackets split, each value read
    as YAML (as ``-o`` values are)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [next(iter(_flatten(parse_override(f"x={p.strip()}")).values())) for p in parts if p.strip()]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["pairs.beta_large=0.3,0.5"]`` -> ``{"pairs.beta_large": [0.3, 0.5]}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ParamsError(f"--grid '{item}' must look like section.key=value1,value2")
        key, raw = item.split("=", 1)
        values = split_values(raw)
        if not key.strip() or not values:
            raise ParamsError(f"--grid '{item}' names no key or no values")
        out[key.strip()] = values
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def variant_names(grid: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every grid point as ``(name, changes)``: the name joins each key's last part and value
    (``beta_large0.5``; the whole path where two keys end alike)."""
    keys = list(grid)
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [leaf if leaves.count(leaf) == 1 else k.replace(".", "_") for k, leaf in zip(keys, leaves)]
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = "-".join(f"{label}{_short(v)}" for label, v in zip(labels, combo))
        out.append((name, dict(zip(keys, combo))))
    return out


def _read_files(params_paths: Sequence[str | os.PathLike], overrides: Sequence[str]) -> tuple[dict, dict]:
    """``(run parameters, sweep section)`` of the files (``extends`` resolved) and overrides, each layer
    checked against the run's schema with its file named."""
    from cogpo_kit.params.run import RunParams

    merged: dict = {}
    sweep: dict = {}
    for path in params_paths:
        for source, data in params_layers(path):
            data = dict(data)
            section = data.pop(SWEEP_KEY, None)
            if section is not None:
                if not isinstance(section, dict):
                    raise ParamsError(f"{source}: '{SWEEP_KEY}' must be a mapping, got {section!r}")
                sweep = deep_merge(sweep, section)
            from_dict(RunParams, deep_merge(merged, data), source=str(source))
            merged = deep_merge(merged, data)
    for text in overrides:
        data = parse_override(text)
        from_dict(RunParams, deep_merge(merged, data), source=f"override '{text}'")
        merged = deep_merge(merged, data)
    return merged, sweep


def plan_sweep(params_paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
               grid: Sequence[str] | dict[str, list[Any]] = (), *, jobs: Optional[int] = None,
               stages: Sequence[str] | str | None = None, from_stage: Optional[str] = None) -> SweepPlan:
    """Read the sweep: the base parameters, the variants (each checked), the stages and their keys.

    ``grid`` entries (``key=v1,v2`` or a mapping) replace the file's grid for the same key; ``jobs`` and
    ``stages`` replace the file's."""
    from cogpo_kit.params.loader import load
    from cogpo_kit.params.run import RunParams
    from cogpo_kit.pipeline.runner import select_stages

    if isinstance(params_paths, (str, os.PathLike)):
        params_paths = [params_paths]
    base, section = _read_files(params_paths, list(overrides or ()))
    where = str(params_paths[-1]) if params_paths else "<params>"
    sp = from_dict(SweepParams, section, source=where, prefix=SWEEP_KEY)
    cli_grid = grid if isinstance(grid, dict) else parse_grid(grid)
    full_grid = {**sp.grid, **{k: list(v) for k, v in cli_grid.items()}}
    named = [(name, _flatten(changes) if changes else {}) for name, changes in sp.variants.items()] or [("", {})]
    points = variant_names(full_grid) if full_grid else [("", {})]
    base_params = load(RunParams, (), (), base=base)
    run_id = base_params.run.run_id
    variants: list[Variant] = []
    for (vname, vchanges), (gname, gchanges) in itertools.product(named, points):
        name = "-".join(p for p in (vname, gname) if p)
        if not name:
            raise ParamsError(f"{where}: the sweep has no variants (give '{SWEEP_KEY}.grid', "
                              f"'{SWEEP_KEY}.variants' or --grid key=v1,v2)")
        if any(v.name == name for v in variants):
            raise ParamsError(f"{where}: two variants are both named '{name}'")
        variants.append(Variant(name=name, run_id=f"{run_id}-{name}", changes={**vchanges, **gchanges}))
    chosen = select_stages(stages if stages is not None else sp.stages, from_stage)
    sweep_id = sp.id or f"{run_id}-sweep"
    if not _NAME.fullmatch(sweep_id):
        raise ParamsError(f"{where}: '{SWEEP_KEY}.id' may hold only letters, digits, '.', '_' and '-', got {sweep_id!r}")
    plan = SweepPlan(sweep_id=sweep_id, folder=Path(base_params.run.output_dir) / sweep_id, base=base,
                     variants=variants, stages=chosen, jobs=jobs if jobs is not None else sp.jobs)
    if plan.jobs < 1:
        raise ParamsError(f"jobs must be at least 1, got {plan.jobs}")
    for v in variants:
        try:
            params = load(RunParams, (), v.overrides, base=base)
        except ParamsError as exc:
            raise ParamsError(f"sweep variant '{v.name}': {exc}") from None
        tree = params_dict(params)
        plan.trees[v.name] = tree
        for spec in (stage_spec(s) for s in STAGES):
            own = json.loads(json.dumps(scrub_secrets(stage_params(tree, spec.folder)), default=str))
            plan.keys[(v.name, spec.folder)] = stable_hash(
                {"params": own, "upstream": [plan.keys[(v.name, u)] for u in spec.upstream_folders]})
    return plan


# --- seeding a stage from a sibling run ------------------------------------------------------------

def _copy_tree(src: Path, dst: Path, linked: bool = False) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if entry.name in SKIPPED_DIRS or entry.name.endswith(".tmp"):
                continue
            _copy_tree(entry, target, linked or entry.name == LINKED_DIR)
        elif linked:
            try:
                os.link(entry, target)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copy2(entry, target)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)


def _rebase(recorded: str, src_run: Path, dst_run: Path) -> str:
    """A path recorded inside ``src_run`` moved to the same place inside ``dst_run``."""
    p = Path(recorded)
    for root, new in ((src_run, dst_run), (src_run.resolve(), dst_run.resolve())):
        try:
            return str(new / p.relative_to(root))
        except ValueError:
            continue
    return recorded


def seed_stage(src_run: str | os.PathLike, dst_run: str | os.PathLike, stage: str) -> Path:
    """Put a copy of ``src_run``'s finished ``stage`` folder in ``dst_run`` (replacing what is there).

    Files under ``model/`` folders are hard-linked, every other file copied, ``checkpoints/`` left out;
    the manifest's recorded inputs inside ``src_run`` point into ``dst_run``, and it records
    ``reused_from``. The stage's executed notebook is copied too, with a first cell saying where it was
    executed (its tables and figures show the same artifacts; a kernel to redraw them would cost more
    than the stage on a small run); without one in ``src_run``, the one in ``dst_run`` is removed so the
    runner executes it again for the seeded artifacts."""
    src_run, dst_run = Path(src_run), Path(dst_run)
    src, dst = stage_path(src_run, stage), stage_path(dst_run, stage)
    manifest = read_json(src / MANIFEST_FILE)
    tmp = dst.with_name(f".{dst.name}.seed.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _copy_tree(src, tmp)
    manifest["inputs"] = {_rebase(k, src_run, dst_run): v for k, v in (manifest.get("inputs") or {}).items()}
    manifest[REUSED_KEY] = {"run": str(src_run.resolve()), "run_id": src_run.name}
    (tmp / MANIFEST_FILE).unlink()
    atomic_write_json(tmp / MANIFEST_FILE, manifest)
    replace_dir(tmp, dst)
    _copy_notebook(src_run, dst_run, dst.name)
    return dst


def _copy_notebook(src_run: Path, dst_run: Path, stage: str) -> None:
    import nbformat
    from nbformat.v4 import new_markdown_cell

    src, dst = src_run / "notebooks" / f"{stage}.ipynb", dst_run / "notebooks" / f"{stage}.ipynb"
    dst.unlink(missing_ok=True)
    if not src.exists():
        return
    nb = nbformat.read(str(src), as_version=4)
    nb.cells.insert(0, new_markdown_cell(
        f"**Stage {stage} of this run was reused from run `{src_run.name}`** (`cogpo-kit sweep`: same parameters "
        f"and upstream stages): its folder is a copy of that run's, and this notebook is the one executed there, "
        f"so paths and run ids below name `{src_run.name}`.", metadata={"tags": [REUSED_KEY]}))
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, nbformat.writes(nb))


def _run_uid(run: Path, stage: str) -> Optional[str]:
    m = read_manifest(run, stage)
    return m.get("run_uid") if m else None


def can_seed(src_run: Path, dst_run: Path, stage: str, tree: dict) -> tuple[bool, str]:
    """Whether ``src_run``'s ``stage`` can stand for ``dst_run``'s: it matches ``tree`` (the variant's
    parameters) by the freshness rules, and ``dst_run`` holds the very upstream stages it was made from."""
    fresh = check_stage(src_run, stage, tree)
    if not fresh.fresh:
        return False, f"{src_run.name}'s {stage} does not match ({fresh.reason})"
    for up in stage_spec(stage).upstream_folders:
        if _run_uid(src_run, up) != _run_uid(dst_run, up):
            return False, f"its upstream {up} differs from {src_run.name}'s"
    return True, "matches"


# --- running ----------------------------------------------------------------------------------------

@dataclass
class _Outcome:
    status: str = "pending"
    error: Optional[str] = None
    executed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    reused: dict[str, str] = field(default_factory=dict)
    ran_instead: dict[str, str] = field(default_factory=dict)
    wall_s: Optional[float] = None


def _stage_origins(run: Path) -> dict[str, str]:
    """Stage -> ``run_id`` of the run it was seeded from (stages made in place are left out)."""
    out = {}
    for stage in STAGES:
        m = read_manifest(run, stage) if stage_path(run, stage).is_dir() else None
        if m and isinstance(m.get(REUSED_KEY), dict):
            out[stage] = str(m[REUSED_KEY].get("run_id"))
    return out


def sweep_manifest(plan: SweepPlan, base_file: Path, outcomes: dict[str, _Outcome], started: float) -> dict:
    out_dir = Path(plan.folder).parent
    variants = []
    for v in plan.variants:
        o = outcomes[v.name]
        run = out_dir / v.run_id
        variants.append({
            "name": v.name, "run_id": v.run_id, "run": str(run.resolve()), "changes": v.changes,
            "status": o.status, "error": o.error, "wall_time_s": o.wall_s,
            "stages_run": o.executed, "stages_reused": o.reused, "stages_up_to_date": sorted(o.skipped),
            "ran_instead_of_reusing": o.ran_instead, "stage_origins": _stage_origins(run)})
    return {"sweep_id": plan.sweep_id, "params": str(base_file.resolve()), "stages": plan.stages,
            "jobs": plan.jobs, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "wall_time_s": round(time.time() - started, 3),
            "shared": {s: groups for s, groups in plan.sharing().items()}, "variants": variants}


def run_sweep(params_paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
              grid: Sequence[str] | dict[str, list[Any]] = (), *, jobs: Optional[int] = None,
              stages: Sequence[str] | str | None = None, from_stage: Optional[str] = None, force: bool = False,
              in_process: bool = False, show_logs: bool = True, report: bool = True) -> dict:
    """Run every variant of a sweep (see the module docstring); returns the sweep manifest.

    A variant that fails does not stop the others (except those waiting for a stage it was to run);
    the failures are raised together at the end as one
    :class:`~cogpo_kit.pipeline.runner.PipelineError`, after the manifest is written."""
    from cogpo_kit.pipeline.runner import Console, PipelineError, ensure_kernel, run_pipeline

    started = time.time()
    plan = plan_sweep(params_paths, overrides, grid, jobs=jobs, stages=stages, from_stage=from_stage)
    plan.folder.mkdir(parents=True, exist_ok=True)
    base_file = plan.folder / BASE_PARAMS
    text = ("# written by cogpo-kit sweep: the parameters every variant starts from (the 'sweep:' section "
            "left out)\n" + yaml.safe_dump(plan.base, sort_keys=False))
    if not base_file.exists() or base_file.read_text(encoding="utf-8") != text:
        atomic_write_text(base_file, text)
    out_dir = plan.folder.parent
    console = Console()
    console.line(f"sweep {plan.sweep_id}: {len(plan.variants)} variants, stages {', '.join(plan.stages)}, "
                 f"{plan.jobs} at a time · {plan.folder}")
    for v in plan.variants:
        console.line(f"  {v.name}: {', '.join(f'{k}={json.dumps(x)}' for k, x in v.changes.items()) or 'the base'}")
    for stage, groups in plan.sharing().items():
        shared = [g for g in groups if len(g) > 1]
        if shared:
            console.line(f"  {stage}: run by {', '.join(g[0] for g in shared)}, reused by "
                         f"{', '.join(n for g in shared for n in g[1:])}")
    if not in_process:
        ensure_kernel()  # once, before any thread starts a kernel

    done = {(v.name, s): threading.Event() for v in plan.variants for s in plan.stages}
    failed: set[tuple[str, str]] = set()
    outcomes = {v.name: _Outcome() for v in plan.variants}
    lock = threading.Lock()

    def write_manifest() -> dict:
        with lock:
            doc = sweep_manifest(plan, base_file, outcomes, started)
            atomic_write_json(plan.folder / SWEEP_MANIFEST, doc)
        return doc

    def run_variant(v: Variant) -> None:
        o = outcomes[v.name]
        o.status = "running"
        run = out_dir / v.run_id
        t0 = time.time()
        finished: list[str] = []
        vconsole = Console(label=v.name)

        def before_stage(stage: str, params) -> bool:
            for s in finished:
                done[(v.name, s)].set()
            finished.append(stage)
            producer = plan.producer(v.name, stage)
            if producer == v.name:
                return force
            done[(producer, stage)].wait()
            if (producer, stage) in failed:
                raise PipelineError(f"sweep variant '{v.name}': stage {stage} is shared with variant "
                                    f"'{producer}', which did not finish it")
            src = out_dir / next(x.run_id for x in plan.variants if x.name == producer)
            if _run_uid(run, stage) is not None and _run_uid(run, stage) == _run_uid(src, stage) \
                    and check_stage(run, stage, plan.trees[v.name]).fresh:
                return False  # seeded before: up to date
            ok, why = can_seed(src, run, stage, plan.trees[v.name])
            if ok:
                seed_stage(src, run, stage)
                o.reused[stage] = src.name
                vconsole.line(f"{stage}: reused from {src.name}")
            else:
                o.ran_instead[stage] = why
                vconsole.line(f"{stage}: not reused ({why}): running it")
            return False

        try:
            res = run_pipeline([base_file], v.overrides, stages=plan.stages, force=False, in_process=in_process,
                               label=v.name, before_stage=before_stage, summary=False, show_logs=show_logs)
            o.executed = [s for s in res["executed"] if s not in o.reused]
            o.skipped = {s: r for s, r in res["skipped"].items() if s not in o.reused}
            o.status = "done"
        except Exception as exc:
            o.status, o.error = "failed", f"{type(exc).__name__}: {exc}"
            with lock:
                failed.update((v.name, s) for s in plan.stages if s not in finished[:-1])
            vconsole.line(f"failed: {o.error}")
        finally:
            o.wall_s = round(time.time() - t0, 3)
            for s in plan.stages:
                done[(v.name, s)].set()
            write_manifest()

    if plan.jobs == 1:
        for v in plan.variants:
            run_variant(v)
    else:
        with ThreadPoolExecutor(max_workers=plan.jobs, thread_name_prefix="sweep") as pool:
            list(pool.map(run_variant, plan.variants))
    doc = write_manifest()
    _print_summary(plan, outcomes, console)
    errors = [f"{v.name}: {outcomes[v.name].error}" for v in plan.variants if outcomes[v.name].status == "failed"]
    if report and not errors:
        from cogpo_kit.viz.compare import compare_runs, write_compare_report

        runs = [out_dir / v.run_id for v in plan.variants]
        cmp = compare_runs(runs, names=[v.name for v in plan.variants])
        if not cmp.results.empty:
            path = write_compare_report(cmp, plan.folder / COMPARE_REPORT, title=f"Sweep {plan.sweep_id}")
            console.line(f"comparison: {path}")
            doc["compare_report"] = str(path)
            atomic_write_json(plan.folder / SWEEP_MANIFEST, doc)
    console.line(f"sweep manifest: {plan.folder / SWEEP_MANIFEST}")
    if errors:
        raise PipelineError(f"sweep {plan.sweep_id}: {len(errors)} of {len(plan.variants)} variants failed: "
                            + "; ".join(errors))
    return doc


def _print_summary(plan: SweepPlan, outcomes: dict[str, _Outcome], console) -> None:
    width = max(len(v.name) for v in plan.variants)
    console.line("sweep summary (ran / reused from <run> / up to date):")
    for v in plan.variants:
        o = outcomes[v.name]
        cells = []
        for s in plan.stages:
            if s in o.reused:
                cells.append(f"{s} reused from {o.reused[s]}")
            elif s in o.executed:
                cells.append(f"{s} ran")
            elif s in o.skipped:
                cells.append(f"{s} up to date")
        wall = f"{o.wall_s:.1f} s" if o.wall_s is not None else "-"
        console.line(f"  {v.name:<{width}}  {o.status:<6} {wall:>9}  " + " · ".join(cells))


def read_sweep(folder: str | os.PathLike) -> dict:
    """The ``sweep_manifest.json`` of a sweep folder."""
    path = Path(folder) / SWEEP_MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no sweep manifest (not a sweep folder, or the sweep has not run)")
    return read_json(path)
