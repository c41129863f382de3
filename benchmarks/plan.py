"""Plans of the paper's replication runs next to the paper's reported setups, and the memory model against measured
CPU runs.

    python benchmarks/plan.py                   # writes benchmarks/results/plan.md
    python benchmarks/plan.py --skip-measure    # the plans only (seconds)

For every ``params/paper-*.yaml``: the plan (``cogpo-kit plan``) on the paper's hardware (Appendix A.2: nodes of
8 x A800 80GB; one node for the 3B and 7B students, four for the 14B), with both training stages launched by
``params/launch/zero3.yaml`` on all of them; only the stages the file's header says it runs. Then the paper's
reported training times beside the plan's, and the mean tokens per training row at which the plan's time equals the
paper's (the Bespoke-Stratos-17k texts are not on this machine, so the plan's own figure takes every row at
``max_length``, an upper bound). Last, the CPU check of the memory model (:mod:`cogpo_kit.planning.measure`):
several SFT and preference configurations trained for two steps in child processes, peak memory measured against
the estimate.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "plan.md"

PAPER_TIMES = {
    # Appendix A.2: "for the 3B model we use a single node with 8 A800 GPUs (80GB), with a training time of
    # approximately 4 hours. For the 7B model, ... about 5 hours. For the 14B model, we use 4 nodes (each with 8 A800
    # GPUs), resulting in a training time of approximately 14 hours."
    "paper-qwen2.5-3b.yaml": ("1 node, 8 x A800 80GB", 4.0),
    "paper-qwen2.5-7b.yaml": ("1 node, 8 x A800 80GB", 5.0),
    "paper-qwen2.5-14b.yaml": ("4 nodes, 32 x A800 80GB", 14.0),
}
NODES = {"paper-qwen2.5-14b.yaml": 4}
"""Nodes of 8 GPUs per file (1 where the paper gives none: its files assume one node)."""
GPU = "a800-80gb"
LAUNCH = "params/launch/zero3.yaml"


def hardware_overrides(name: str) -> list[str]:
    nodes = NODES.get(name, 1)
    return [f"{s}.launch.{k}={v}" for s in ("sft", "preference")
            for k, v in (("config", LAUNCH), ("num_processes", 8 * nodes), ("num_machines", nodes))]


def file_stages(path: Path) -> list[str]:
    """The stages a params file's header says to run (``--stages a,b``), else every stage."""
    from cogpo_kit.pipeline.stage import STAGES

    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = re.search(r"--stages\s+([a-z,]+)", line)
        if m:
            return m.group(1).split(",")
    return [s.split("_", 1)[1] for s in STAGES]


def command(path: Path, overrides: list[str], extra: list[str] = ()) -> str:
    return " ".join(["cogpo-kit plan", str(path.relative_to(ROOT)), *[f"-o {shlex.quote(o)}" for o in overrides],
                     "--gpu", GPU, *extra])


def paper_hours(plan) -> float:
    """The paper's method's training: CRV+SFT and CogPO."""
    return sum(r.seconds for r in plan.runs if r.name in ("crv_sft", "cogpo")) / 3600


def backsolve(params, settings, target_h: float) -> tuple[float, float]:
    """Mean tokens per row (per side of a pair) at which CRV+SFT + CogPO take ``target_h`` hours; and the plan's hours
    at that length (bisection on ``tokens_per_row``)."""
    from cogpo_kit.planning import make_plan

    lo, hi = 64.0, float(params.sft.optim.max_length)
    for _ in range(30):
        mid = (lo + hi) / 2
        h = paper_hours(make_plan(params, replace(settings, tokens_per_row=int(mid)), load_data=False))
        lo, hi = (mid, hi) if h < target_h else (lo, mid)
    x = (lo + hi) / 2
    return x, paper_hours(make_plan(params, replace(settings, tokens_per_row=int(x)), load_data=False))


def plan_section(path: Path, lines: list[str], settings) -> dict:
    from cogpo_kit.params import load_params
    from cogpo_kit.planning import make_plan
    from cogpo_kit.planning.report import crv_lines, eval_lines, memory_table, sources_list, time_table

    ovr = hardware_overrides(path.name)
    params = load_params([path], ovr)
    plan = make_plan(params, settings, params_files=[str(path)], overrides=ovr, load_data=False)
    stages = [s for s in ("sft", "preference") if s in file_stages(path)]
    lines += [f"### `{path.name}` — `{params.student.model}`", "", f"`{command(path, ovr)}`", ""]
    if stages:
        lines += memory_table(plan, stages) + [""] + time_table(plan, stages) + [""]
        if path.name == "paper-qwen2.5-7b.yaml":
            lines += sources_list(plan, stages) + [""]
    else:
        lines += ["Trains nothing (its header runs: " + ", ".join(file_stages(path)) + ")", ""]
    if path.name == "paper-qwen2.5-7b.yaml":
        lines += ["CRV agents (stages 01-02):", ""] + crv_lines(plan) + ["", "Evaluation (stage 06):", ""] \
            + eval_lines(plan) + [""]
    elif "evaluate" in file_stages(path) and plan.eval is not None:
        e = plan.eval
        lines += [f"Evaluation: {e.samples:,} samples ({len(e.models)} model{'s' if len(e.models) > 1 else ''}), at "
                  f"most {e.token_budget / 1e9:.2f} B generated tokens.", ""]
    for w in plan.warnings:
        lines.append(f"- **{w}**")
    if plan.warnings:
        lines.append("")
    peak = max((r.memory.total for r in plan.runs if r.stage in stages), default=0.0)
    return {"file": path.name, "params": params, "plan": plan, "stages": stages, "peak_gb": peak / 1e9,
            "fits": all(r.fits for r in plan.runs if r.stage in stages)}


def measure_section(lines: list[str], threads: int) -> None:
    from cogpo_kit.planning.measure import MMAP_THRESHOLD, MeasureSpec, measure

    base = MeasureSpec(threads=threads)
    specs = [("SFT, full fine-tuning", base),
             ("SFT, LoRA r 16", replace(base, lora=True)),
             ("SFT, gradient checkpointing, max_length 512", replace(base, gradient_checkpointing=True, max_length=512)),
             ("SFT, batch 2, max_length 512", replace(base, batch=2, max_length=512)),
             ("CogPO, precomputed reference", replace(base, stage="preference", method="cogpo")),
             ("DPO, reference model in memory", replace(base, stage="preference", method="dpo", reference="model")),
             ("SimPO (full logits)", replace(base, stage="preference", method="simpo"))]
    t0 = time.time()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: measure(s[1]), specs))
    rows = []
    for (label, spec), got in zip(specs, results):
        t = got["terms_mb"]
        top = ", ".join(f"{k} {v:.0f}" for k, v in t.items() if v >= 1)
        rows.append([label, f"{got['measured_mb']:.0f}", f"{got['estimated_mb']:.0f}", f"{got['ratio']:.2f}", top])
        print(f"  {label}: measured {got['measured_mb']:.0f} MB, estimated {got['estimated_mb']:.0f} MB", flush=True)
    from cogpo_kit.planning.report import md_table

    ratios = [g["ratio"] for g in results]
    lines += [f"Model `{base.model}` ({results[0]['params_m']:.1f} M parameters, vocabulary 49,152), float32, "
              f"{base.steps} optimizer steps, batch {base.batch} and max_length {base.max_length} unless said, rows "
              f"longer than max_length (cut to it); {threads} torch thread(s) per child, two children at a time; "
              f"{time.time() - t0:.0f} s. Measured: resident-set growth from just before the model loads to the peak "
              f"(`VmHWM`), glibc serving blocks of {MMAP_THRESHOLD // 1024} KiB or more by their own mappings "
              "(`MALLOC_MMAP_THRESHOLD_`, so freed tensors leave at once). Estimated: `make_plan` on the same "
              "parameters with `--device cpu` (terms in MB; the total takes the larger of activations + logits and "
              "the gradients, as gradient accumulation is 1).", ""]
    lines += md_table(["configuration", "measured (MB)", "estimated (MB)", "estimate / measured", "estimate's terms (MB)"],
                      rows, [False, True, True, True, False])
    lines += ["", f"Ratios {min(ratios):.2f}-{max(ratios):.2f}; `tests/test_plan.py` checks two of these (SFT, DPO "
                  "with its reference copy) within 35%.", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-measure", action="store_true", help="leave out the CPU measurements")
    p.add_argument("--threads", type=int, default=1, help="torch threads per measured child")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--out", default=str(RESULTS))
    opts = p.parse_args(argv)
    os.chdir(ROOT)
    from cogpo_kit.planning import PlanSettings

    settings = PlanSettings(gpu=GPU, mfu=opts.mfu)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    body: list[str] = []
    rows = []
    for path in sorted((ROOT / "params").glob("paper-*.yaml")):
        info = plan_section(path, body, settings)
        rows.append(info)
        print(f"planned {path.name}: peak {info['peak_gb']:.1f} GB per GPU", flush=True)
    from cogpo_kit.planning.report import md_table

    summary = []
    for info in rows:
        plan, stages = info["plan"], info["stages"]
        n = plan.runs[0].setup.parallel.processes if plan.runs else 0
        sft_h = plan.stage_hours("sft") if "sft" in stages else None
        pref_h = plan.stage_hours("preference") if "preference" in stages else None
        fits = ("yes" if info["fits"] else "**NO**") if stages else "-"
        summary.append([info["file"], plan.model["spec"], f"{n} x A800 80GB" if stages else "-",
                        f"{info['peak_gb']:.1f}" if stages else "-", fits,
                        "-" if sft_h is None else f"{sft_h:.1f}", "-" if pref_h is None else f"{pref_h:.1f}"])
    from cogpo_kit.planning import make_plan

    solved = {}
    for name, (hardware, hours_paper) in PAPER_TIMES.items():
        info = next(i for i in rows if i["file"] == name)
        solved[name] = backsolve(info["params"], settings, hours_paper)
    common = solved["paper-qwen2.5-7b.yaml"][0]
    paper_rows = []
    for name, (hardware, hours_paper) in PAPER_TIMES.items():
        info = next(i for i in rows if i["file"] == name)
        tokens, check = solved[name]
        at_common = paper_hours(make_plan(info["params"], replace(settings, tokens_per_row=int(common)), load_data=False))
        paper_rows.append([name, info["plan"].model["spec"], hardware, f"{hours_paper:g} h",
                           f"{paper_hours(info['plan']):.1f} h", f"{tokens:,.0f} ({check:.1f} h)",
                           f"{settings.mfu * at_common / hours_paper:.0%}"])
    lines = [
        "# Plans of the replication runs (`cogpo-kit plan`)",
        "",
        f"Command: `python benchmarks/plan.py{' --skip-measure' if opts.skip_measure else ''}` (each plan below names its "
        "own `cogpo-kit plan` command).  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load0:.1f} at start; planning needs no GPU.  ",
        f"Hardware planned for: the paper's (Appendix A.2): NVIDIA A800 80GB, 312 TFLOP/s BF16 dense per GPU, "
        f"{opts.mfu:.0%} MFU assumed; both training stages under `{LAUNCH}` (DeepSpeed ZeRO-3) on one node of 8 GPUs, "
        "four nodes (32 GPUs) for the 14B student.  ",
        "Rows: the data set's published size (Bespoke-Stratos-17k about 16.7k, OpenThoughts-114k about 114k, Sky-T1 "
        "about 16.4k) and, for D_SFT* and the pairs, their expected share under the plan's stated CRV assumptions; "
        "tokens: every row at `max_length` (16,384), an upper bound, since the hub texts are not on this machine.",
        "",
        "## The paper's reported setups and the plan",
        "",
    ]
    lines += md_table(["file", "student", "paper's hardware", "paper's training time",
                       "plan: CRV+SFT + CogPO, rows at max_length", f"tokens per row giving the paper's time at "
                       f"{opts.mfu:.0%} MFU (plan then)", f"MFU the paper's time implies at {common:,.0f} tokens per row"],
                      paper_rows, [False, False, False, True, True, True, True])
    lines += ["",
              "The paper's times are read as the training of its own method (CRV+SFT, 3 epochs on D_SFT*, then CogPO, "
              "1 epoch on the pairs); it does not say what they include. With every row at `max_length` the plan is an "
              "upper bound. The next column is the mean tokens per row (one side of a pair) at which the plan's time "
              "equals the paper's: what the paper's times imply about its data at the assumed MFU. The three runs "
              "trained on the same data, so they cannot all hold at one MFU: the last column fixes the rows at the 7B "
              "run's implied length and gives the MFU each reported time implies instead (a smaller model and a "
              "four-node ZeRO-3 run reach less of the GPUs' peak). Every stage fits on the paper's 80 GB GPUs under "
              "ZeRO-3 (below), as the paper ran them.", "",
              "## Every replication file", ""]
    lines += md_table(["file", "student", "GPUs", "peak GB / GPU", "fits", "SFT stage (h)", "preference stage (h)"],
                      summary, [False, False, False, True, False, True, True])
    lines += ["", "Hours at `max_length` for every row (upper bounds), all runs of the stage (SFT: every variant; "
                  "preference: every method).", ""] + body
    if not opts.skip_measure:
        print("measuring the memory model on CPU:", flush=True)
        lines += ["## The memory model against measured CPU runs", ""]
        measure_section(lines, opts.threads)
    lines += [f"Total time of this script: {time.time() - t0:.0f} s.", ""]
    Path(opts.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
