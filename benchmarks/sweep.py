"""A 3-variant beta sweep against the same 3 variants run one by one, in one script.

    python benchmarks/sweep.py                                   # params/smoke.yaml, notebooks (papermill)
    python benchmarks/sweep.py --params params/demo.yaml         # the demo (about 3 x 10+ min on 2 cores)
    python benchmarks/sweep.py --in-process                      # stage functions called directly

Baseline: ``cogpo-kit run`` once per variant (``run_pipeline``), each run from scratch in its own run
folder, the runs sharing one output folder (and so the kit's response cache, as separate runs of a
researcher would). Measured: ``cogpo-kit sweep`` (``run_sweep``) of the same variants in a fresh output
folder, which runs every stage the variants share once and seeds the others. Both write under
``outputs/bench-sweep/``. Reported: wall time of each, their ratio, the stages each variant ran or
reused (from ``sweep_manifest.json``), and a screenshot of the sweep's comparison report in headless
Chromium. Writes ``benchmarks/results/sweep.md`` and ``benchmarks/results/sweep_compare.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogpo_kit.io import atomic_write_text  # noqa: E402
from cogpo_kit.pipeline.runner import run_pipeline  # noqa: E402
from cogpo_kit.pipeline.sweep import COMPARE_REPORT, plan_sweep, run_sweep  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def screenshot(html: Path, png: Path) -> str:
    """A PNG of ``html`` from headless Chromium; returns what happened."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "no Chromium installed: no screenshot"
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / "cogpo-bench-sweep-chromium"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--hide-scrollbars", "--virtual-time-budget=20000", "--window-size=1280,2400",
           f"--screenshot={png}", html.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    return "written" if res.returncode == 0 and png.exists() else f"failed: {res.stderr[-500:]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/smoke.yaml")
    ap.add_argument("--grid", default="pairs.beta_large=0.25,0.5,1.0")
    ap.add_argument("--in-process", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    root = ROOT / "outputs" / "bench-sweep"
    if root.exists():
        shutil.rmtree(root)
    separate_dir, sweep_dir = root / "separate", root / "sweep"
    plan = plan_sweep([args.params], [f"run.output_dir={separate_dir}"], [args.grid])
    load_before = os.getloadavg()

    t0 = time.time()
    separate = []
    for v in plan.variants:
        t = time.time()
        res = run_pipeline([args.params], [*v.overrides[:-1], f"run.run_id={v.run_id}",
                                           f"run.output_dir={separate_dir}"],
                           in_process=args.in_process, summary=False)
        separate.append((v.name, time.time() - t, res["executed"]))
    separate_s = time.time() - t0

    t0 = time.time()
    doc = run_sweep([args.params], [f"run.output_dir={sweep_dir}"], [args.grid], in_process=args.in_process)
    sweep_s = time.time() - t0
    load_after = os.getloadavg()

    report = Path(doc.get("compare_report") or (sweep_dir / plan.sweep_id / COMPARE_REPORT))
    png = RESULTS / "sweep_compare.png"
    shot = screenshot(report, png) if report.exists() else "no comparison report written"

    runs_separately = sum(len(e) for _, _, e in separate)
    runs_in_sweep = sum(len(v["stages_run"]) for v in doc["variants"])
    mode = "stage functions in process (`--in-process`)" if args.in_process else "notebooks through papermill"
    lines = [
        "# Sweep: a 3-variant beta sweep against 3 separate runs", "",
        f"Command: `python benchmarks/sweep.py --params {args.params} --grid {args.grid}"
        f"{' --in-process' if args.in_process else ''}`  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; stages run as {mode}.  ",
        f"Load average (1/5/15 min) before: {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} (the machine is shared: "
        "wall times move with the load).", "",
        "Baseline: `cogpo-kit run` once per variant (`-o pairs.beta_large=...`), one after the other, sharing one "
        "output folder (and so the response cache). Measured: `cogpo-kit sweep` of the same variants in a fresh "
        "output folder.", "",
        "| | wall time (s) | stages run |", "|---|---:|---:|",
        f"| 3 separate runs (baseline) | {separate_s:.1f} | {runs_separately} |",
        f"| sweep | {sweep_s:.1f} | {runs_in_sweep} |",
        f"| **ratio (baseline / sweep)** | **{separate_s / sweep_s:.2f}x** | |", "",
        "## Separate runs", "", "| variant | wall time (s) | stages run |", "|---|---:|---|",
        *[f"| {n} | {s:.1f} | {', '.join(e)} |" for n, s, e in separate], "",
        "## The sweep's variants (from `sweep_manifest.json`)", "",
        "| variant | changes | wall time (s) | stages run | stages reused (from) |", "|---|---|---:|---|---|",
        *[f"| {v['name']} | {json.dumps(v['changes'])} | {v['wall_time_s']:.1f} | {', '.join(v['stages_run'])} | "
          f"{', '.join(f'{s} ({r})' for s, r in v['stages_reused'].items()) or '-'} |" for v in doc["variants"]], "",
        f"Comparison report: `{report.relative_to(ROOT) if report.is_relative_to(ROOT) else report}`; "
        f"screenshot `benchmarks/results/sweep_compare.png`: {shot}.", "",
    ]
    atomic_write_text(RESULTS / "sweep.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
