"""Step time and peak memory of CogPO against TRL's DPO trainer, and the effect of precomputed reference log-probs.

    python benchmarks/training.py                      # writes benchmarks/results/training.md
    python benchmarks/training.py --steps 8 --rounds 3

Each measurement runs in its own subprocess (a fresh interpreter, so the peak resident set size of one
trainer is not inherited by the next), on the same model, pairs, batch and seed:

- ``dpo``: ``trl.DPOTrainer`` (beta 0.1) as shipped, with its own log-prob path (TRL's fused LM head: without
  Triton every position, prompt and padding included, in tiles of 4096 tokens x 32768 vocabulary columns), full
  fine-tuning, reference model in memory; the baseline of every ratio;
- ``cogpo``: ``CogPOTrainer`` with per-pair betas (0.1 / 0.2 / 0.5 by gap) and its default chunked log-probs
  (completion tokens only, tiles of ``logprob_token_chunk`` x ``logprob_vocab_chunk``), otherwise identical;
- ``cogpo_precompute``: ``CogPOTrainer`` with ``precompute_ref_log_probs`` (no reference model kept).

Three figures: CogPO / DPO on ``--model`` at ``--max-length`` (512); the same with the vocabulary and length scaled
toward the paper's (``--scaled-model``, a tiny Llama with Qwen2.5's 152,064-row LM head, pairs of
``--scaled-terms`` steps cut at ``--scaled-max-length``); and precomputed reference log-probs on ``--memory-model``.

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


def make_pairs(n: int, seed: int = 0, terms: tuple[int, int] = (6, 14)) -> list[dict]:
    """``n`` preference pairs: correct step-by-step sums of ``terms`` (low, high) numbers against wrong ones."""
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        nums = [rng.randint(2, 99) for _ in range(rng.randint(*terms))]
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
    ds = Dataset.from_list(make_pairs(args.pairs, terms=_terms(args.terms)))
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
    steps_done = max(trainer.state.global_step, 1)
    return {"method": args.method, "model": args.model, "steps": len(pairs),
            "tokens_per_step": trainer._total_train_tokens / steps_done,
            "vocab": trainer.model.config.vocab_size,
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


def _terms(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
        raise ValueError(f"--terms must be LOW-HIGH (two integers, LOW <= HIGH), got {text!r}")
    return int(low), int(high)


def run_child(method: str, model: str, opts, *, max_length=None, batch=None, terms=None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--model", model, "--steps", str(opts.steps),
           "--warmup", str(opts.warmup), "--batch", str(batch or opts.batch), "--pairs", str(opts.pairs),
           "--max-length", str(max_length or opts.max_length), "--threads", str(opts.threads),
           "--terms", terms or opts.terms]
    env = dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-4000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    print(f"  {method:18s} {model:50s} step {out['step_cpu_s']:.3f} s CPU, {out['step_s']:.3f} s wall, "
          f"peak RSS {out['peak_rss_mb']:.0f} MB, {out['tokens_per_step']:.0f} tokens/step", flush=True)
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
    p.add_argument("--terms", default="6-14", help="numbers per synthetic sum, LOW-HIGH (sets the pair length)")
    p.add_argument("--scaled-model", default="tiny:llama?vocab=152064",
                   help="model of the scaled figure (Qwen2.5's LM head width)")
    p.add_argument("--scaled-max-length", type=int, default=2048)
    p.add_argument("--scaled-batch", type=int, default=1)
    p.add_argument("--scaled-terms", default="80-110", help="numbers per sum of the scaled figure (pairs cut at its max length)")
    p.add_argument("--scaled-rounds", type=int, default=1, help="DPO/CogPO pairs of runs of the scaled figure")
    p.add_argument("--skip-precompute", action="store_true",
                   help="leave out the precomputed-reference figure (it then says so in the results)")
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
    print("scaled vocabulary and length:", flush=True)
    scaled: dict[str, list[dict]] = {"dpo": [], "cogpo": []}
    for r in range(opts.scaled_rounds):
        for m in (("dpo", "cogpo") if r % 2 == 0 else ("cogpo", "dpo")):
            scaled[m].append(run_child(m, opts.scaled_model, opts, max_length=opts.scaled_max_length,
                                       batch=opts.scaled_batch, terms=opts.scaled_terms))
    mem = {}
    if not opts.skip_precompute:
        print("precomputed reference log-probs:", flush=True)
        mem = {m: run_child(m, opts.memory_model, opts) for m in ("cogpo", "cogpo_precompute")}

    def med(m, key, source=None):
        return statistics.median(r[key] for r in (source or runs)[m])

    step_ratio = med("cogpo", "step_cpu_s") / med("dpo", "step_cpu_s")
    wall_ratio = med("cogpo", "step_s") / med("dpo", "step_s")
    mem_ratio = med("cogpo", "peak_rss_mb") / med("dpo", "peak_rss_mb")
    s_step = med("cogpo", "step_cpu_s", scaled) / med("dpo", "step_cpu_s", scaled)
    s_wall = med("cogpo", "step_s", scaled) / med("dpo", "step_s", scaled)
    s_mem = med("cogpo", "peak_rss_mb", scaled) / med("dpo", "peak_rss_mb", scaled)
    met = step_ratio <= 1.1 and mem_ratio <= 0.5
    import torch
    import transformers
    import trl

    lines = [
        "# Training benchmark: CogPO against TRL's DPO trainer",
        "",
        f"Command: `python benchmarks/training.py --steps {opts.steps} --warmup {opts.warmup} --rounds {opts.rounds}"
        f" --batch {opts.batch} --max-length {opts.max_length} --threads {opts.threads} --pairs {opts.pairs}"
        f" --scaled-rounds {opts.scaled_rounds} --scaled-batch {opts.scaled_batch}"
        f" --scaled-max-length {opts.scaled_max_length} --scaled-terms {opts.scaled_terms}"
        f"{' --skip-precompute' if opts.skip_precompute else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load0[0]:.1f} at start; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
        f"{opts.threads} torch thread(s) per run; total {time.time() - t0:.0f} s.  ",
        f"Data: {opts.pairs} synthetic pairs, batch {opts.batch}, max length {opts.max_length}; full fine-tuning, "
        f"reference model in memory unless precomputed; {opts.warmup} warm-up + {opts.steps} timed steps per run; "
        "each run in its own process.",
        "",
        "Baseline: TRL DPO, its own log-prob path (`trl.DPOTrainer` as shipped: its fused LM head scores every "
        "position in tiles of 4096 tokens x 32768 vocabulary columns on CPU). CogPO: `CogPOTrainer` with its default "
        "chunked log-probs (completion tokens only; tiles of `logprob_token_chunk` x `logprob_vocab_chunk` = "
        "1024 x 8192).",
        "",
    ]

    def table(source, rounds):
        out = ["| trainer | step CPU time (s) | step wall time (s) | peak RSS (MB) | non-pad tokens / step | runs: step CPU time (s) |",
               "| --- | --- | --- | --- | --- | --- |"]
        for m, label in (("dpo", "TRL DPO, its own log-prob path (beta 0.1)"),
                         ("cogpo", "`CogPOTrainer`, chunked log-probs (per-pair beta)")):
            out.append(f"| {label} | {med(m, 'step_cpu_s', source):.3f} | {med(m, 'step_s', source):.3f} | "
                       f"{med(m, 'peak_rss_mb', source):.0f} | {med(m, 'tokens_per_step', source):.0f} | "
                       + ", ".join(f"{r['step_cpu_s']:.3f}" for r in source[m]) + " |")
        return out

    lines += [f"## CogPO vs DPO on `{opts.model}` ({runs['dpo'][0]['params_m']:.1f} M parameters, vocabulary "
              f"{runs['dpo'][0]['vocab']}), max length {opts.max_length}, batch {opts.batch}, medians of {opts.rounds} "
              "run(s) each", ""] + table(runs, opts.rounds) + [
        "",
        f"**Ratios CogPO / DPO: step time {step_ratio:.3f} (CPU; wall {wall_ratio:.3f}), peak memory {mem_ratio:.3f}** "
        f"(targets: step time ≤ 1.1, peak memory ≤ 0.5 — {'met' if met else 'NOT met'}).",
        "",
        f"## Vocabulary and length scaled toward the paper's: `{opts.scaled_model}` "
        f"({scaled['dpo'][0]['params_m']:.1f} M parameters, vocabulary {scaled['dpo'][0]['vocab']}), "
        f"max length {opts.scaled_max_length}, batch {opts.scaled_batch} (pairs of {opts.scaled_terms} summed numbers, "
        f"cut at the max length), medians of {opts.scaled_rounds} run(s) each",
        "",
    ] + table(scaled, opts.scaled_rounds) + [
        "",
        f"**Ratios CogPO / DPO: step time {s_step:.3f} (CPU; wall {s_wall:.3f}), peak memory {s_mem:.3f}.** "
        "For scale: the paper's student, Qwen2.5-7B, has a 152,064-row LM head, and the paper's pairs run to 4096 "
        "tokens; the tiny model keeps a hidden size of 64, so here the log-prob path is nearly all of the step's "
        "memory, while at 7B the weights, optimizer state and activations come on top of it in both runs.",
        "",
    ]
    if mem:
        pre_ratio = mem["cogpo_precompute"]["peak_rss_mb"] / mem["cogpo"]["peak_rss_mb"]
        lines += [
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
                  "itself (activations and the LM head's tiles over the vocabulary), which both runs share, so the "
                  "saving grows with the model's share of memory.", ""]
    else:
        lines += ["Precomputed reference log-probs: not measured in this run (`--skip-precompute`).", ""]
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
