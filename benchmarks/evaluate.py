"""The evaluate stage's speed: problems per minute before and after, answer agreement, and the rerun case.

One run measures, on the same models and problems (``params/demo.yaml``'s evaluation: GSM8K and
MATH-500, 12 problems each, greedy, 192 new tokens):

- **before**: the stage as it ran before (the transformers engine in bfloat16 at batch 24, one engine per
  model with its adapters merged, ``model.generate`` carrying every row to the end of its batch, no reuse of
  finished evaluations, an empty response cache);
- **after**: the stage with ``params/demo.yaml``'s evaluation settings as they are now (``--after`` overrides
  added), an empty store: the models of one base generate together in shared batches
  (``eval.batch_models``), finished rows leave the batch (``eval.engine.retire_rows``);
- the **agreement** of the two: the share of (model, problem) pairs whose extracted answers are equal,
  and of those whose verdicts are equal;
- the **rerun** of item 6 of issue #17: the after-setting evaluated again in the same output folder with
  one model changed (a copy of ``crv_sft`` with one byte of its weights flipped); which models were
  generated and which were reused, and the wall time.

Each path's wall seconds and the CPU seconds of this process (generation runs here; the math grader's worker
processes are not counted) are reported, the CPU seconds being the steadier figure on a shared machine.
- with ``--sweep``: the zero-shot model's generation time alone under each engine setting (the
  transformers engine in bfloat16 / float32, llama.cpp with f32 / f16 / q8_0 weights and batch widths).

The models come from a finished run (``--run``, default ``outputs/demo``: its ``04_sft`` folder is
linked, never written). Everything is written under ``--work`` (a temporary folder by default).

    nice -n 5 .venv/bin/python benchmarks/evaluate.py [--run outputs/demo] [--models zero_shot,sft,crv_sft] \
        [-o KEY=VALUE] [--after KEY=VALUE]
    nice -n 5 .venv/bin/python benchmarks/evaluate.py --sweep [-o KEY=VALUE]

Results go to ``benchmarks/results/evaluate.md`` (``--sweep``: ``evaluate_engines.md``), with the command,
machine, date and load.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogpo_kit.evaluation.stage import model_dir_name, run_evaluate  # noqa: E402
from cogpo_kit.io import read_json, read_jsonl  # noqa: E402
from cogpo_kit.params import load_params  # noqa: E402

BEFORE = ["eval.engine.engine=transformers", "eval.engine.dtype=bfloat16", "eval.engine.batch_size=24",
          "eval.reuse=false", "eval.engine.cache.enabled=false", "eval.batch_models=false",
          "eval.engine.retire_rows=false"]
"""The stage as it ran before: transformers bfloat16 at batch 24, one engine per model, ``model.generate``,
nothing reused, no response cache."""

SWEEP = {
    "transformers bfloat16, batch 24": ["eval.engine.engine=transformers", "eval.engine.dtype=bfloat16",
                                        "eval.engine.batch_size=24"],
    "transformers bfloat16, batch 24, stop at final answer": ["eval.engine.engine=transformers",
                                                              "eval.engine.dtype=bfloat16",
                                                              "eval.engine.batch_size=24",
                                                              "eval.stop_at_final_answer=true"],
    "transformers float32, batch 24": ["eval.engine.engine=transformers", "eval.engine.dtype=float32",
                                       "eval.engine.batch_size=24"],
    "llama.cpp f32, batch 24": ["eval.engine.engine=llamacpp", "eval.engine.gguf_weights=f32",
                                "eval.engine.batch_size=24"],
    "llama.cpp f16, batch 24": ["eval.engine.engine=llamacpp", "eval.engine.gguf_weights=f16",
                                "eval.engine.batch_size=24"],
    "llama.cpp q8_0, batch 24": ["eval.engine.engine=llamacpp", "eval.engine.gguf_weights=q8_0",
                                 "eval.engine.batch_size=24"],
    "llama.cpp q8_0, batch 12": ["eval.engine.engine=llamacpp", "eval.engine.gguf_weights=q8_0",
                                 "eval.engine.batch_size=12"],
}
"""Engine settings timed on the zero-shot model alone (``--sweep``)."""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare_run(work: Path, name: str, source_run: Path, models: list[str]) -> Path:
    """An output folder ``work/name`` whose run ``demo`` links the finished run's trained models."""
    run = work / name / "demo"
    for stage in ("04_sft", "05_preference"):
        src = source_run / stage
        if src.is_dir():
            (run / stage).mkdir(parents=True, exist_ok=True)
            for sub in src.iterdir():
                if sub.is_dir() and sub.name in models:
                    (run / stage / sub.name).mkdir(exist_ok=True)
                    link = run / stage / sub.name / "model"
                    if not link.exists() and (sub / "model").exists():
                        link.symlink_to((sub / "model").resolve())
    return run


EXTRA: list[str] = []
"""``-o key=value`` overrides given on the command line, applied to every path alike."""


def evaluate(work: Path, name: str, models: list[str], overrides: list[str]) -> tuple[float, dict]:
    """Run the evaluate stage in ``work/name``; returns (wall seconds, manifest); the CPU seconds of this process
    go to ``CPU[name]``."""
    params = load_params([ROOT / "params" / "demo.yaml"], [
        f"run.output_dir={work / name}", "run.run_id=demo", f"eval.models=[{', '.join(models)}]", *EXTRA,
        *overrides])
    t0, c0 = time.time(), time.process_time()
    manifest = run_evaluate(params, show_progress=False)
    CPU[name] = time.process_time() - c0
    return time.time() - t0, manifest


CPU: dict[str, float] = {}
"""CPU seconds of this process per run folder name."""


def answers(run: Path, models: list[str]) -> dict:
    """(model, benchmark, problem id, sample) -> (extracted answer, correct)."""
    out = {}
    for m in models:
        folder = run / "06_evaluate" / model_dir_name(m)
        for f in sorted(folder.glob("samples_*.jsonl")):
            bench = f.stem[len("samples_"):]
            for r in read_jsonl(f):
                out[(m, bench, r["id"], r["sample"])] = (r["extracted"], r["correct"], r["finish_reason"])
    return out


def sweep(work: Path) -> list[tuple[str, float, int]]:
    """The zero-shot model's generate time under each engine setting: (name, seconds, truncated)."""
    rows = []
    for k, (label, over) in enumerate(SWEEP.items()):
        secs, manifest = evaluate(work, f"sweep{k}", ["zero_shot"], over + ["eval.reuse=false",
                                                                           "eval.engine.cache.enabled=false"])
        res = read_json(work / f"sweep{k}" / "demo" / "06_evaluate" / "zero_shot" / "results.json")
        cut = sum(b["truncated"] for b in res["benchmarks"].values())
        rows.append((label, res["generate_s"], cut))
        print(f"sweep {label}: generate {res['generate_s']:.1f} s, {cut} cut at max_tokens, load {load()}",
              flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "outputs" / "demo"), help="finished run whose models are evaluated")
    ap.add_argument("--models", default="zero_shot,sft,crv_sft")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--sweep", action="store_true", help="only time the zero-shot model under each engine setting "
                    "(written to --out, default benchmarks/results/evaluate_engines.md)")
    ap.add_argument("-o", "--override", action="append", default=[],
                    help="params override applied to every path alike (e.g. eval.limit=2 on a loaded machine)")
    ap.add_argument("--after", action="append", default=[],
                    help="params override of the after path only (e.g. eval.stop_at_final_answer=true)")
    ap.add_argument("--repeat", type=int, default=1, help="before/after pairs, alternated (totals reported)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    EXTRA.extend(a.override)
    out_md = Path(a.out or ROOT / "benchmarks" / "results" / ("evaluate_engines.md" if a.sweep else "evaluate.md"))
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    work = Path(a.work or tempfile.mkdtemp(prefix="cogpo_bench_eval_"))
    source = Path(a.run)
    load_start = load()
    started = time.strftime("%Y-%m-%d %H:%M")

    if a.sweep:
        rows = sweep(work)
        base = rows[0][1]
        lines = ["# Evaluate stage: engine settings", "",
                 f"Command: `nice -n 5 .venv/bin/python benchmarks/evaluate.py {' '.join(sys.argv[1:])}`  ",
                 f"Machine: {os.cpu_count()} CPUs; date {started}; load average at start {load_start}, at end "
                 f"{load()}  ", "The zero-shot model alone, generation only (no response cache), params/demo.yaml's "
                 f"evaluation{' with ' + ', '.join(EXTRA) if EXTRA else ''}.", "",
                 "| engine setting | generate s | vs transformers bfloat16 | cut at max_tokens |", "|---|---|---|---|"]
        lines += [f"| {label} | {secs:.1f} | {base / secs:.2f}x | {cut_n} |" for label, secs, cut_n in rows]
        out_md.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0

    pairs = []  # (before s, after s) of each repetition, alternated so that a load change hits both alike
    for k in range(a.repeat):
        suffix = "" if k == 0 else str(k)
        before_run = prepare_run(work, "before" + suffix, source, models)
        before_s, _ = evaluate(work, "before" + suffix, models, BEFORE)
        print(f"before: {before_s:.1f} s, {CPU['before' + suffix]:.1f} CPU s, load {load()}", flush=True)
        after_run = prepare_run(work, "after" + suffix, source, models)
        after_s, after_manifest = evaluate(work, "after" + suffix, models, a.after)
        print(f"after: {after_s:.1f} s, {CPU['after' + suffix]:.1f} CPU s, load {load()}", flush=True)
        pairs.append((before_s, after_s))
    cpu = {p: sum(v for k, v in CPU.items() if k.rstrip("0123456789") == p) for p in ("before", "after")}
    before_run, after_run = work / "before" / "demo", work / "after" / "demo"
    before_s, after_s = sum(b for b, _ in pairs), sum(x for _, x in pairs)
    n_problems = sum(v for k, v in after_manifest["counts"].items() if k.startswith("problems_"))
    a_before, a_after = answers(before_run, models), answers(after_run, models)
    keys = sorted(set(a_before) & set(a_after))
    same_answer = sum(a_before[k][0] == a_after[k][0] for k in keys)
    same_verdict = sum(a_before[k][1] == a_after[k][1] for k in keys)
    per_model = {m: (sum(a_before[k][0] == a_after[k][0] for k in keys if k[0] == m),
                     sum(1 for k in keys if k[0] == m)) for m in models}
    correct = {name: sum(v[1] for v in ans.values()) for name, ans in (("before", a_before), ("after", a_after))}
    cut = {name: sum(v[2] == "length" for v in ans.values()) for name, ans in (("before", a_before), ("after", a_after))}

    # the rerun: the same output folder, one model changed (crv_sft's weights with one byte flipped)
    changed = "crv_sft" if "crv_sft" in models else models[-1]
    rerun_models = models
    link = after_run / "04_sft" / changed / "model"
    if link.is_symlink():
        target = link.resolve()
        link.unlink()
        shutil.copytree(target, link)
        weights = sorted(link.glob("*.safetensors"))[0]
        with open(weights, "r+b") as fh:
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
            fh.seek(-1, os.SEEK_END)
            fh.write(bytes([last[0] ^ 1]))
    rerun_s, rerun_manifest = evaluate(work, "after", rerun_models, a.after)  # the first pair's folder
    generated = [m for m, i in rerun_manifest["models"].items() if i.get("generated")]
    reused = [m for m, i in rerun_manifest["models"].items() if i.get("reused_from") and not i.get("generated")]
    print(f"rerun: {rerun_s:.1f} s, generated {generated}, reused {reused}", flush=True)

    per_min = {"before": len(pairs) * len(models) * n_problems / (before_s / 60),
               "after": len(pairs) * len(models) * n_problems / (after_s / 60)}
    after_params = load_params([ROOT / "params" / "demo.yaml"], [*EXTRA, *a.after])
    eng = after_params.eval.engine
    cpu_name = platform.processor() or "cpu"
    try:
        cpu_name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Evaluate stage: before and after",
        "",
        f"Command: `nice -n 5 .venv/bin/python benchmarks/evaluate.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {os.cpu_count()} CPUs ({cpu_name}); date {started}; load average at start {load_start}, at end "
        f"{load()} (a shared machine: wall times move with the load, so both paths ran back to back in one run)  ",
        f"Models: {', '.join(models)} from `{source}`; problems: {n_problems} per model "
        f"(params/demo.yaml's evaluation: GSM8K + MATH-500, greedy{'; with ' + ', '.join(EXTRA) if EXTRA else ''})"
        + (f"; after path also with {', '.join(a.after)}" if a.after else ""),
        "",
        "| path | settings | wall s | CPU s | problems per minute | speed-up (wall) | speed-up (CPU) |",
        "|---|---|---|---|---|---|---|",
        f"| before | transformers bfloat16, batch 24, one engine per model, generate, no reuse, empty response cache | "
        f"{before_s:.1f} | {cpu['before']:.1f} | {per_min['before']:.1f} | 1.00x | 1.00x |",
        f"| after | {eng.engine} ({'gguf_weights ' + eng.gguf_weights if eng.engine == 'llamacpp' else eng.dtype}), "
        f"batch {eng.batch_size} per model, models of one base together: {after_params.eval.batch_models}, rows "
        f"retire: {eng.retire_rows}, stop at final answer: {after_params.eval.stop_at_final_answer}, empty store | "
        f"{after_s:.1f} | {cpu['after']:.1f} | {per_min['after']:.1f} | {per_min['after'] / per_min['before']:.2f}x | "
        f"{cpu['before'] / max(cpu['after'], 1e-9):.2f}x |",
        "",
        f"{len(pairs)} before/after pair(s), alternated; wall seconds per pair: "
        + ", ".join(f"{b:.1f} / {x:.1f} ({b / x:.2f}x)" for b, x in pairs) + ".",
        "",
        f"Answer agreement (extracted answers equal, before vs after): **{same_answer}/{len(keys)} = "
        f"{100 * same_answer / max(1, len(keys)):.1f}%**; verdicts equal {same_verdict}/{len(keys)} = "
        f"{100 * same_verdict / max(1, len(keys)):.1f}%; per model: "
        + ", ".join(f"{m} {s}/{n}" for m, (s, n) in per_model.items())
        + f". Correct answers: before {correct['before']}, after {correct['after']}; cut at max_tokens: before "
          f"{cut['before']}, after {cut['after']}.",
        "",
        "## Rerun with one model changed (issue #17 item 6)",
        "",
        f"The after-setting evaluated again in the same output folder, `{changed}` replaced by a copy with one byte "
        f"of its weights flipped: **{rerun_s:.1f} s**; generated: {', '.join(generated) or 'none'}; reused "
        f"without loading the model: {', '.join(reused) or 'none'} (generate s per model: "
        + ", ".join(f"{m} {i.get('generate_s')}" for m, i in rerun_manifest["models"].items())
        + f"). Before, every model was generated again (the whole stage took as long as the first time: "
          f"{pairs[0][0]:.1f} s in the first pair here).",
    ]
    lines.append("")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
