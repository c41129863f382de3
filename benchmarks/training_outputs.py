"""Disk left by the SFT and preference stages, and their wall time: adapters and shared reference
log-probs against merged full-model copies with per-method reference log-probs.

    python benchmarks/training_outputs.py      # demo settings; writes benchmarks/results/training_outputs.md
    python benchmarks/training_outputs.py --params params/demo.yaml --source outputs/demo

Both configurations run the real stages (``cogpo-kit train sft`` then ``cogpo-kit train preference``, each in
its own process) on copies of the same finished ``01_critique`` .. ``03_pairs`` folders (``--source``), one
after the other:

- ``merged`` (the baseline of every ratio): ``sft.merge_lora`` and ``preference.merge_lora`` on and
  ``preference.share_ref_log_probs`` off: every ``model/`` folder is a merged full model (as the kit saved
  them before adapters were kept), every CogPO-family method computes its own reference log-probs;
- ``adapters``: the defaults: adapters with their base recorded, one reference pass shared by the methods.

Disk is the apparent size of ``04_sft`` + ``05_preference`` (checkpoints included) and of whatever the run
added to the kit's model cache (merged folders); wall time is each stage's ``wall_time_s`` from its
manifest. The runs share the machine with whatever else runs on it: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "training_outputs.md"
CONFIGS = {
    "merged": ["sft.merge_lora=true", "preference.merge_lora=true", "preference.share_ref_log_probs=false"],
    "adapters": [],
}
UPSTREAM = ("01_critique", "02_rethink", "03_pairs")


def tree_bytes(path: Path) -> int:
    """Apparent size of every file under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run_config(name: str, params: Path, source: Path, work: Path, cache: Path, extra: list[str]) -> dict:
    """Run the SFT and preference stages of one configuration (``extra``: overrides for both); returns its
    measurements."""
    out = work / name
    run_id = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys; from cogpo_kit.params import load_params; "
         f"print(json.dumps(load_params([{str(params)!r}]).run.run_id))"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    run = out / run_id
    for folder in UPSTREAM:
        shutil.copytree(source / folder, run / folder)
    before_cache = tree_bytes(cache / "merged")
    env = dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1")
    res = {"name": name, "overrides": CONFIGS[name]}
    for stage in ("sft", "preference"):
        cmd = [sys.executable, "-m", "cogpo_kit.cli", "train", stage, str(params), "-o", f"run.output_dir={out}",
               *sum((["-o", o] for o in [*extra, *CONFIGS[name]]), [])]
        t0 = time.time()
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {stage} failed:\n{done.stderr[-3000:]}")
        folder = run / ("04_sft" if stage == "sft" else "05_preference")
        manifest = json.loads((folder / "manifest.json").read_text())
        res[f"{stage}_wall_s"] = manifest["wall_time_s"]
        res[f"{stage}_process_s"] = round(time.time() - t0, 1)
        res[f"{stage}_bytes"] = tree_bytes(folder)
        res[f"{stage}_models_bytes"] = sum(tree_bytes(p) for p in folder.glob("*/model"))
        if stage == "preference":
            res["methods"] = {m: {k: v for k, v in s.items() if k in ("setup_seconds", "train_seconds",
                                                                       "reference_logps", "saved")}
                              for m, s in manifest["methods"].items()}
    res["cache_added_bytes"] = tree_bytes(cache / "merged") - before_cache
    return res


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f}"


def write_report(results: list[dict], command: str, load: tuple, seconds: float, extra: list[str]) -> None:
    import torch
    import transformers
    import trl

    base, new = results
    lines = [
        "# Training outputs: adapters and shared reference log-probs against merged copies",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at start; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {seconds:.0f} s.  ",
        "Each configuration: `cogpo-kit train sft` then `cogpo-kit train preference` on copies of the same "
        "finished stages 01-03; baseline `merged` = " + ", ".join(f"`{o}`" for o in CONFIGS["merged"]) + "; "
        "both with " + (", ".join(f"`{o}`" for o in extra) or "the params file's steps") + ".",
        "",
        "| configuration | 04_sft (GB) | 05_preference (GB) | both (GB) | of which `model/` folders (GB) | "
        "merged cache added (GB) | SFT stage (s) | preference stage (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| `{r['name']}` | {_gb(r['sft_bytes'])} | {_gb(r['preference_bytes'])} | "
                     f"{_gb(r['sft_bytes'] + r['preference_bytes'])} | "
                     f"{_gb(r['sft_models_bytes'] + r['preference_models_bytes'])} | {_gb(r['cache_added_bytes'])} | "
                     f"{r['sft_wall_s']:.1f} | {r['preference_wall_s']:.1f} |")
    disk = (new["sft_bytes"] + new["preference_bytes"]) / (base["sft_bytes"] + base["preference_bytes"])
    pref = new["preference_wall_s"] / base["preference_wall_s"]
    sft = new["sft_wall_s"] / base["sft_wall_s"]
    lines += ["", f"**Ratios adapters / merged: disk {disk:.4f}, preference stage wall time {pref:.3f}, SFT stage "
                  f"wall time {sft:.3f}.**", "", "Per method (setup includes loading the starting model and, "
                  "for the first CogPO-family method with sharing, the one reference pass):", "",
              "| configuration | method | setup (s) | train (s) | reference log-probs | saved |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for m, s in r["methods"].items():
            lines.append(f"| `{r['name']}` | {m} | {s.get('setup_seconds')} | {s.get('train_seconds')} | "
                         f"{s.get('reference_logps')} | {s.get('saved')} |")
    lines += ["", "Wall times on a shared 2-core machine move with its load; the disk figures do not."]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/demo.yaml", help="params file of the run (demo settings)")
    ap.add_argument("--source", default="outputs/demo", help="a run folder holding finished 01..03 stages")
    ap.add_argument("--work", default=None, help="where the two runs go (default: a temporary folder, removed)")
    ap.add_argument("--sft-steps", type=int, default=None,
                    help="sft.optim.max_steps (default: the params file's); disk is the same while a checkpoint "
                         "step is reached")
    ap.add_argument("--preference-steps", type=int, default=None, help="preference.optim.max_steps (same)")
    args = ap.parse_args()
    extra = ([f"sft.optim.max_steps={args.sft_steps}"] if args.sft_steps else []) + (
        [f"preference.optim.max_steps={args.preference_steps}"] if args.preference_steps else [])
    from cogpo_kit.models.resolve import cache_root

    params, source = (ROOT / args.params).resolve(), (ROOT / args.source).resolve()
    missing = [f for f in UPSTREAM if not (source / f / "manifest.json").exists()]
    if missing:
        sys.exit(f"{source}: no finished {', '.join(missing)} (run the first three stages there first)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="training_outputs_"))
    load, t0 = os.getloadavg(), time.time()
    try:
        results = [run_config(name, params, source, work, cache_root(), extra) for name in CONFIGS]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/training_outputs.py " + " ".join(sys.argv[1:])
    write_report(results, command.strip(), load, time.time() - t0, extra)
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
