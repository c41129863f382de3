"""Step time and peak memory of CogPO against TRL's DPO trainer, and the effect of precomputed reference log-probs.

    python benchmarks/training.py                      # writes benchmarks/results/training.md
    python benchmarks/training.py --steps 8 --rounds 3

Each measurement runs in its own subprocess (a fresh interpreter, so the peak resident set size of one
trainer is not inherited by the next), on the same model, pairs, batch and seed:

- ``dpo``: ``trl.DPOTrainer`` (beta 0.1), full fine-tuning, reference model in memory;
- ``cogpo``: ``CogPOTrainer`` with per-pair betas (0.1 / 0.2 / 0.5 by gap), otherwise identical;
- ``cogpo_precompute``: ``CogPOTrainer`` with ``precompute_ref_log_probs`` (no reference model kept).

Step time is the median over the optimizer steps after the warm-up steps, as CPU time of the process
(``time.process_time``: what the step computed, little moved by other programs on a shared machine;
the ratio is taken on it) and as wall time; peak memory is the process's maximum resident set size
(``resource.getrusage``). Runs alternate DPO and CogPO over several
rounds and report medians, so load on a shared machine hits both alike. The pairs are synthetic
arithmetic problems with reasoning of a few hundred tokens (deterministic, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "training.md"
GAPS = (("small", 0.1), ("medium", 0.2), ("large", 0.5))


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` preference pairs: correct step-by-step sums against wrong ones, of varied length."""
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        nums = [rng.randint(2, 99) for _ in range(rng.randint(6, 14))]
        total, steps = 0, []
        for x in nums:
            steps.append(f"We add {x} to the running total {total}, which gives {total + x}.")
            total += x
        wrong = total + rng.randint(1, 9)
        chosen = " ".join(steps) + f"\n\nThe final answer is $\\boxed{{{total}}}$."
        rejected = " ".join(steps[: len(steps) // 2]) + f" Then the rest adds up to {wrong - total // 2}." \
            + f"\n\nThe final answer is $\\boxed{{{wrong}}}$."
        gap, beta = GAPS[i % 3]
        pairs.append({"prompt": [{"role": "user", "content": "What is " + " + ".join(map(str, nums))
                                  + "?\nPlease reason step by step, and put your final answer within \\boxed{}."}],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      "beta": beta, "gap": gap})
    return pairs


def child(args) -> dict:
    """One measurement in this process; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from cogpo_kit.models.resolve import hf_path
    from cogpo_kit.training.cogpo_trainer import CogPOConfig, CogPOTrainer

    path = hf_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    ds = Dataset.from_list(make_pairs(args.pairs))
    out = tempfile.mkdtemp(prefix="cogpo_bench_")
    common = dict(output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
                  learning_rate=1e-5, bf16=False, activation_checkpointing=False, report_to="none", save_strategy="no",
                  logging_steps=1000, max_length=args.max_length, seed=0, use_cpu=True, disable_tqdm=True,
                  precompute_ref_log_probs=args.method == "cogpo_precompute", beta=0.1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    t0 = time.perf_counter()
    if args.method == "dpo":
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=ds, processing_class=tok)
    else:
        trainer = CogPOTrainer(model=model, args=CogPOConfig(**common), train_dataset=ds, processing_class=tok)
    setup_s = time.perf_counter() - t0
    rss_setup = _rss_now_kb()
    marks: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, a, state, control, **kw):
            marks.append((time.perf_counter(), time.process_time()))

    trainer.add_callback(Timer())
    trainer.train()
    pairs = [(marks[i + 1][0] - marks[i][0], marks[i + 1][1] - marks[i][1]) for i in range(0, len(marks) - 1, 2)]
    pairs = pairs[args.warmup:]
    return {"method": args.method, "model": args.model, "steps": len(pairs),
            "step_s": statistics.median(w for w, _ in pairs), "step_cpu_s": statistics.median(c for _, c in pairs),
            "step_s_all": [w for w, _ in pairs], "setup_s": setup_s,
            "rss_setup_mb": rss_setup / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ref_model_in_memory": trainer.ref_model is not None,
            "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6}


def _rss_now_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_child(method: str, model: str, opts) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--model", model, "--steps", str(opts.steps),
           "--warmup", str(opts.warmup), "--batch", str(opts.batch), "--pairs", str(opts.pairs),
           "--max-length", str(opts.max_length), "--threads", str(opts.threads)]
    env = dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-4000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    print(f"  {method:18s} {model:50s} step {out['step_cpu_s']:.3f} s CPU, {out['step_s']:.3f} s wall, "
          f"peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny:llama", help="model of the DPO/CogPO comparison")
    p.add_argument("--memory-model", default="tiny:llama?layers=4&hidden=256&heads=4&kv_heads=2&intermediate=768",
                   help="model of the precomputed-reference memory comparison (larger, so the reference counts)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="DPO/CogPO pairs of runs (order alternates)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: steadier on a shared machine)")
    p.add_argument("--out", default=str(RESULTS))
    opts = p.parse_args(argv)
    if opts.child:
        opts.method = opts.child
        print(json.dumps(child(opts)))
        return 0

    t0 = time.time()
    load0 = os.getloadavg()
    runs: dict[str, list[dict]] = {"dpo": [], "cogpo": []}
    print("CogPO vs TRL DPO:", flush=True)
    for r in range(opts.rounds):
        order = ("dpo", "cogpo") if r % 2 == 0 else ("cogpo", "dpo")
        for m in order:
            runs[m].append(run_child(m, opts.model, opts))
    print("precomputed reference log-probs:", flush=True)
    mem = {m: run_child(m, opts.memory_model, opts) for m in ("cogpo", "cogpo_precompute")}

    def med(m, key):
        return statistics.median(r[key] for r in runs[m])

    step_ratio = med("cogpo", "step_cpu_s") / med("dpo", "step_cpu_s")
    wall_ratio = med("cogpo", "step_s") / med("dpo", "step_s")
    mem_ratio = med("cogpo", "peak_rss_mb") / med("dpo", "peak_rss_mb")
    pre_ratio = mem["cogpo_precompute"]["peak_rss_mb"] / mem["cogpo"]["peak_rss_mb"]
    import torch
    import transformers
    import trl

    lines = [
        "# Training benchmark: CogPO against TRL's DPO trainer",
        "",
        f"Command: `python benchmarks/training.py --steps {opts.steps} --warmup {opts.warmup} --rounds {opts.rounds}"
        f" --batch {opts.batch} --max-length {opts.max_length} --threads {opts.threads}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load0[0]:.1f} at start; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
        f"{opts.threads} torch thread(s) per run; total {time.time() - t0:.0f} s.  ",
        f"Data: {opts.pairs} synthetic pairs, batch {opts.batch}, max length {opts.max_length}; full fine-tuning, "
        f"reference model in memory unless precomputed; {opts.warmup} warm-up + {opts.steps} timed steps per run; "
        "each run in its own process.",
        "",
        f"## CogPO vs DPO on `{opts.model}` ({runs['dpo'][0]['params_m']:.1f} M parameters), medians of {opts.rounds} runs each",
        "",
        "| trainer | step CPU time (s) | step wall time (s) | peak RSS (MB) | runs: step CPU time (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, label in (("dpo", "TRL `DPOTrainer` (beta 0.1)"), ("cogpo", "`CogPOTrainer` (per-pair beta)")):
        lines.append(f"| {label} | {med(m, 'step_cpu_s'):.3f} | {med(m, 'step_s'):.3f} | {med(m, 'peak_rss_mb'):.0f} | "
                     + ", ".join(f"{r['step_cpu_s']:.3f}" for r in runs[m]) + " |")
    lines += [
        "",
        f"**Ratios CogPO / DPO: step time {step_ratio:.3f} (CPU; wall {wall_ratio:.3f}), peak memory {mem_ratio:.3f}** "
        f"(target: both ≤ 1.05 — {'met' if step_ratio <= 1.05 and mem_ratio <= 1.05 else 'NOT met'}).",
        "",
        f"## Precomputed reference log-probs on `{opts.memory_model}` "
        f"({mem['cogpo']['params_m']:.1f} M parameters)",
        "",
        "| CogPO | reference model in memory | peak RSS (MB) | RSS after setup (MB) | step CPU time (s) | setup (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, label in (("cogpo", "reference forward each step"), ("cogpo_precompute", "precomputed once")):
        r = mem[m]
        lines.append(f"| {label} | {'yes' if r['ref_model_in_memory'] else 'no'} | {r['peak_rss_mb']:.0f} | "
                     f"{r['rss_setup_mb']:.0f} | {r['step_cpu_s']:.3f} | {r['setup_s']:.1f} |")
    lines += ["", f"**Peak memory with / without precomputing: {pre_ratio:.3f}** "
              f"(saves {mem['cogpo']['peak_rss_mb'] - mem['cogpo_precompute']['peak_rss_mb']:.0f} MB; the setup "
              "time includes the one extra pass over the pairs). The reference copy holds "
              f"{mem['cogpo']['params_m'] * 4:.0f} MB of float32 weights; the rest of the peak is the training step "
              "itself (activations and the LM head's tiles over the vocabulary), which both runs share, so the saving "
              "grows with the model's share of memory.", ""]
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
