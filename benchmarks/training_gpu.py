"""Peak GPU memory and step time of CogPO's chunked log-probs against TRL's DPO trainer, at Qwen2.5's vocabulary.

    python benchmarks/training_gpu.py                  # on a CUDA GPU; writes benchmarks/results/training_gpu.md
    python benchmarks/training_gpu.py --lengths 2048,8192,16384 --steps 3 --out-json gpu.json

The GPU counterpart of ``benchmarks/training.py``: the same synthetic pairs (``make_pairs``), each run in its own
subprocess (a fresh CUDA context, so one trainer's peak is not inherited by the next), bf16 weights, batch 1, full
fine-tuning with the reference model in memory, activation checkpointing off. For each max length (``--lengths``)
it runs, in this order:

- ``dpo``: ``trl.DPOTrainer`` (beta 0.1) as shipped, with its own fused LM head (on CUDA with Triton: only the
  completion positions, in tiles of 4096 tokens x 32768 vocabulary columns); the baseline of every ratio;
- ``cogpo``: ``CogPOTrainer`` with its default ``logprob_path="chunked"`` (completion tokens only, tiles of
  ``logprob_token_chunk`` x ``logprob_vocab_chunk``), per-pair betas 0.1 / 0.2 / 0.5;
- ``cogpo_full``: ``CogPOTrainer`` with ``logprob_path="full"``: the full (2, T-1, V) float32 logits and
  ``log_softmax`` of the plain computation, the memory the tiles avoid.

Peak memory is ``torch.cuda.max_memory_allocated()`` over the child's whole life (setup included; the setup's own
allocation, two copies of the weights, is reported beside it); a run that raises ``torch.OutOfMemoryError`` is
recorded as such with its peak so far. Step time is the median over the optimizer steps after the warm-up steps,
between ``torch.cuda.synchronize()`` calls at step begin and end. The model is a tiny Llama at Qwen2.5-0.5B's
widths with few layers (``--model``) built once from the tokenizer in ``--tokenizer`` (default: the kit's embedded
tokenizer through ``hf_path``). Pairs have about ``length / 20`` summed numbers, so the chosen response is cut at the
max length and the rejected one is about half as long. Without CUDA it runs on the CPU (peak RSS instead; for
checking the script only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.training import make_pairs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "training_gpu.md"
DEFAULT_MODEL = "tiny:llama?layers=4&hidden=896&heads=14&kv_heads=2&intermediate=4864&vocab=152064"
METHODS = ("dpo", "cogpo", "cogpo_full", "cogpo_auto")
LABELS = {"dpo": "TRL DPO, its own fused LM head", "cogpo": "`CogPOTrainer`, chunked log-probs",
          "cogpo_full": "`CogPOTrainer`, full logits (`logprob_path=\"full\"`)",
          "cogpo_auto": "`CogPOTrainer`, its default (`logprob_path=\"auto\"`: TRL's head on CUDA)"}
MIB = 1024 * 1024


def terms_for(length: int) -> tuple[int, int]:
    """Summed numbers per synthetic pair for a max length: the chosen response (about 24 tokens a number) is cut."""
    return max(2, length // 20), max(2, length // 20 + length // 200)


def child(opts) -> dict:
    """One measurement in this process; returns the record printed as a JSON line."""
    import torch

    cuda = torch.cuda.is_available()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from cogpo_kit.training.cogpo_trainer import CogPOConfig, CogPOTrainer

    tok = AutoTokenizer.from_pretrained(opts.model_dir)
    n = opts.warmup + opts.steps
    ds = Dataset.from_list(make_pairs(n, terms=terms_for(opts.max_length)))
    common = dict(output_dir=tempfile.mkdtemp(prefix="cogpo_gpu_bench_"), per_device_train_batch_size=1,
                  max_steps=n, learning_rate=1e-5, bf16=cuda, activation_checkpointing=False, report_to="none",
                  save_strategy="no", logging_steps=1000, max_length=opts.max_length, seed=0, use_cpu=not cuda,
                  disable_tqdm=True, beta=0.1, dataloader_num_workers=0)
    record = {"method": opts.method, "max_length": opts.max_length, "device": "cuda" if cuda else "cpu", "oom": False}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    if cuda:
        model = model.to("cuda")
    t0 = time.perf_counter()
    if opts.method == "dpo":
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=ds, processing_class=tok)
    else:
        path = {"cogpo_full": "full", "cogpo_auto": "auto"}.get(opts.method, "chunked")
        trainer = CogPOTrainer(model=model, args=CogPOConfig(**common, logprob_path=path), train_dataset=ds,
                               processing_class=tok)
    record["setup_s"] = time.perf_counter() - t0
    record["activation_checkpointing"] = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    record["params_m"] = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    record["vocab"] = trainer.model.config.vocab_size
    record["dtype"] = str(next(trainer.model.parameters()).dtype).replace("torch.", "")
    if cuda:
        record["setup_alloc_mib"] = torch.cuda.memory_allocated() / MIB
    marks: list[float] = []

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks.append(now())

        def on_step_end(self, a, state, control, **kw):
            marks.append(now())

    trainer.add_callback(Timer())
    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:  # recorded, not raised: running out is one of the results
        record["oom"] = True
        record["error"] = str(exc).splitlines()[0][:300]
    steps = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
    record["step_s_all"] = steps
    timed = steps[opts.warmup:]
    record["step_s"] = statistics.median(timed) if timed else None
    record["steps_done"] = trainer.state.global_step
    record["tokens_per_step"] = trainer._total_train_tokens / max(trainer.state.global_step, 1)
    if cuda:
        record["peak_mib"] = torch.cuda.max_memory_allocated() / MIB
        record["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
        record["end_alloc_mib"] = torch.cuda.memory_allocated() / MIB
    else:
        import resource

        record["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def build_model(spec: str, tokenizer_dir: str | None, root: str) -> str:
    """The model folder of ``spec``: built under ``root`` from ``tokenizer_dir``, else through the kit's cache."""
    if tokenizer_dir is None:
        from cogpo_kit.models.resolve import hf_path

        return hf_path(spec)
    from transformers import AutoTokenizer

    from cogpo_kit.models.tiny import build_tiny

    return str(build_tiny(spec, root, lambda: AutoTokenizer.from_pretrained(tokenizer_dir)))


def run_child(method: str, length: int, model_dir: str, opts, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--model-dir", model_dir, "--max-length", str(length),
           "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    env = dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "max_length": length, "failed": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = res.stderr[-3000:]
        print(f"  {method} at {length} failed (exit {res.returncode}):\n{tail}", flush=True)
        return {"method": method, "max_length": length, "failed": f"exit {res.returncode}", "stderr_tail": tail}
    out = json.loads(lines[-1])
    out["wall_s"] = time.time() - t0
    step = "-" if out["step_s"] is None else f"{out['step_s']:.3f} s"
    print(f"  {method:11s} max length {length:6d}: peak {out['peak_mib']:9.0f} MiB, step {step}, "
          f"{out['tokens_per_step']:.0f} tokens/step{', OUT OF MEMORY' if out['oom'] else ''} "
          f"({out['wall_s']:.0f} s)", flush=True)
    return out


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def _fmt(value, spec=".0f") -> str:
    return "-" if value is None else format(value, spec)


def report(runs: list[dict], opts, meta: dict) -> str:
    by = {(r["method"], r["max_length"]): r for r in runs}
    lines = [
        "# Training benchmark on a GPU: CogPO's chunked log-probs against TRL's DPO trainer",
        "",
        f"Command: `python benchmarks/training_gpu.py --model '{opts.model}' --lengths {opts.lengths} "
        f"--methods {opts.methods} --steps {opts.steps} --warmup {opts.warmup}`  ",
        f"Device: {meta['device']}; {meta['versions']}; total {meta['total_s']:.0f} s.  ",
        f"Model: `{opts.model}` ({meta.get('params_m', 0):.1f} M parameters, vocabulary {meta.get('vocab', '?')}), "
        f"{meta.get('dtype', '?')} weights, full fine-tuning, reference model in memory, activation checkpointing off, "
        f"batch 1 (one pair: chosen and rejected), {opts.warmup} warm-up + {opts.steps} timed steps per run, each run "
        "in its own process. Pairs: synthetic sums of about length / 20 numbers (`make_pairs` of "
        "`benchmarks/training.py`), the chosen response cut at the max length.",
        "",
        "Peak = `torch.cuda.max_memory_allocated()` over the run (setup included); setup = allocated after the "
        "trainer's construction (policy and reference weights); step = median CUDA-synchronised optimizer step.",
        "",
        "| max length | trainer | peak (MiB) | setup (MiB) | peak - setup (MiB) | step (s) | non-pad tokens / step | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lengths = sorted(int(x) for x in opts.lengths.split(","))
    methods = opts.methods.split(",")
    for length in lengths:
        for m in methods:
            r = by.get((m, length))
            if r is None:
                continue
            if "failed" in r or "skipped" in r:
                lines.append(f"| {length} | {LABELS[m]} | - | - | - | - | - | {r.get('failed') or r.get('skipped')} |")
                continue
            setup = r.get("setup_alloc_mib")
            extra = None if setup is None else r["peak_mib"] - setup
            lines.append(f"| {length} | {LABELS[m]} | {r['peak_mib']:.0f} | {_fmt(setup)} | {_fmt(extra)} | "
                         f"{_fmt(r['step_s'], '.3f')} | {r['tokens_per_step']:.0f} | "
                         f"{'OUT OF MEMORY: ' + r.get('error', '') if r['oom'] else 'ok'} |")
    lines += ["", "| max length | peak CogPO / DPO | step CogPO / DPO | peak full logits / DPO | "
              "step full logits / DPO |", "| --- | --- | --- | --- | --- |"]

    def ratio(a, b, key):
        ra, rb = by.get((a, length)), by.get((b, length))
        if not ra or not rb or "peak_mib" not in ra or "peak_mib" not in rb or ra["oom"] or rb["oom"]:
            return "-"
        if ra.get(key) is None or rb.get(key) is None:
            return "-"
        return f"{ra[key] / rb[key]:.3f}"

    for length in lengths:
        lines.append(f"| {length} | {ratio('cogpo', 'dpo', 'peak_mib')} | {ratio('cogpo', 'dpo', 'step_s')} | "
                     f"{ratio('cogpo_full', 'dpo', 'peak_mib')} | {ratio('cogpo_full', 'dpo', 'step_s')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, default=2048, help=argparse.SUPPRESS)
    p.add_argument("--model", default=DEFAULT_MODEL, help="tiny model spec (Qwen2.5-0.5B widths, 4 layers)")
    p.add_argument("--tokenizer", help="tokenizer folder to build the tiny model from (default: the kit's cache)")
    p.add_argument("--model-root", default=None, help="where --tokenizer builds the model (default: a temp dir)")
    p.add_argument("--lengths", default="2048,8192,16384", help="max lengths, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS), help="among " + ", ".join(METHODS))
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no run after this many seconds")
    p.add_argument("--child-timeout-s", type=float, default=600, help="kill a run after this many seconds")
    p.add_argument("--out", default=str(RESULTS), help="Markdown results")
    p.add_argument("--out-json", default=None, help="every run's record, rewritten after each run")
    opts = p.parse_args(argv)
    if opts.child:
        opts.method = opts.child
        print(json.dumps(child(opts)), flush=True)
        return 0
    methods = opts.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown[0]!r} (known: {', '.join(METHODS)})")
    t0 = time.time()
    model_dir = build_model(opts.model, opts.tokenizer, opts.model_root or tempfile.mkdtemp(prefix="cogpo_tiny_"))
    print(f"model folder {model_dir} ({time.time() - t0:.0f} s)", flush=True)
    import importlib.metadata as md

    import torch

    cuda = torch.cuda.is_available()
    names = ("transformers", "trl", "accelerate", "datasets", "peft", "triton")
    versions = ", ".join(f"{n} {md.version(n)}" for n in names if _installed(n))
    meta = {"device": (torch.cuda.get_device_name(0) + f", {torch.cuda.get_device_properties(0).total_memory / MIB:.0f} MiB"
                       f", CUDA {torch.version.cuda}" if cuda else f"CPU only ({platform.machine()}, {os.cpu_count()} CPUs)"),
            "versions": f"torch {torch.__version__}, {versions}, Python {platform.python_version()}"}
    runs: list[dict] = []
    for length in (int(x) for x in opts.lengths.split(",")):
        for m in methods:
            left = opts.budget_s - (time.time() - t0)
            if left <= 0:
                runs.append({"method": m, "max_length": length, "skipped": "not run: time budget spent"})
                continue
            runs.append(run_child(m, length, model_dir, opts, min(opts.child_timeout_s, left)))
            for key in ("params_m", "vocab", "dtype"):
                if key in runs[-1]:
                    meta[key] = runs[-1][key]
            if opts.out_json:
                Path(opts.out_json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1), encoding="utf-8")
    meta["total_s"] = time.time() - t0
    text = report(runs, opts, meta)
    if opts.out_json:
        Path(opts.out_json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1), encoding="utf-8")
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
