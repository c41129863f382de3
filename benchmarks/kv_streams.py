"""Why the llama.cpp engine keeps its sequences in contiguous slots written in slot order: a decode step's cost.

    python benchmarks/kv_streams.py          # writes benchmarks/results/kv_streams.md

With one KV stream per sequence (``kv_unified = False``, the engine's setting), llama.cpp splits a
batch into micro-batches of sequences whose ids follow each other in the batch. This script
loads the embedded model as the engine does (weights f32, 17 streams of 2048 tokens, 2 threads),
fills the streams of a set of sequences with a prompt of the same length, then times decode steps
(one new token per sequence) for the same number of sequences in three layouts, in one process,
repeated and interleaved:

* **contiguous, in slot order**: slots 0..k-1, tokens written in that order (what the engine does);
* **contiguous, out of order**: the same slots, tokens written in reverse order (k-1, ..., 1, 0);
  llama.cpp puts a sequence into the current micro-batch only if its id follows the previous one's,
  so this splits the step into one pass over the weights per sequence;
* **spread**: slots 0, 2, 4, ... in order; no two ids are consecutive, so again one pass per
  sequence (the layout continuous batching leaves behind when finished sequences free slots).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogpo_kit.engines.common import cpu_threads, openmp_defaults  # noqa: E402

openmp_defaults()  # before llama.cpp loads, as in the engine

from cogpo_kit.io import atomic_write_text  # noqa: E402
from cogpo_kit.models.resolve import DEFAULT_MODEL, resolve  # noqa: E402

STREAMS, STREAM_TOKENS, N_BATCH = 17, 2048, 512


def step_ms(llama_cpp, internals, model, slots: list[int], context: int, steps: int, threads: int) -> float:
    """Mean wall time of one decode step over ``slots`` (tokens written in that order), each holding
    ``context`` tokens."""
    cp = llama_cpp.llama_context_default_params()
    cp.n_seq_max, cp.n_ctx = STREAMS, STREAM_TOKENS * STREAMS
    cp.n_batch = cp.n_ubatch = N_BATCH
    cp.kv_unified = False
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    ctx = internals.LlamaContext(model=model, params=cp, verbose=False)
    holder = internals.LlamaBatch(n_tokens=N_BATCH, embd=0, n_seq_max=1, verbose=False)
    batch = holder.batch

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, int(logits)

    def decode(n: int) -> None:
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    try:
        for seq in slots:
            for start in range(0, context, N_BATCH):
                n = min(N_BATCH, context - start)
                for i in range(n):
                    put(i, 100 + (7 * (start + i) + seq) % 4000, start + i, seq, False)
                decode(n)
        t = time.perf_counter()
        for s in range(steps):
            for i, seq in enumerate(slots):
                put(i, 200 + s + seq, context + s, seq, True)
            decode(len(slots))
        return 1000 * (time.perf_counter() - t) / steps
    finally:
        holder.close()
        ctx.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, nargs="+", default=[2, 5, 8], help="sequences per decode step")
    ap.add_argument("--context", type=int, default=600, help="tokens already in each sequence's stream")
    ap.add_argument("--steps", type=int, default=24, help="decode steps timed per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of each measurement")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kv_streams.md"))
    args = ap.parse_args(argv)
    if max(args.sequences) * 2 - 1 > STREAMS - 1:
        raise SystemExit(f"--sequences: at most {STREAMS // 2} (spread slots 0, 2, ... must fit {STREAMS} streams)")

    import llama_cpp
    from llama_cpp import _internals as internals

    from cogpo_kit.engines.llamacpp_model import converted_gguf, model_params, quiet_llama_logs

    quiet_llama_logs()
    threads = cpu_threads(0)
    model = internals.LlamaModel(path_model=converted_gguf(resolve(DEFAULT_MODEL).gguf_path, "f32"),
                                 params=model_params(), verbose=False)
    rows = []
    try:
        for k in args.sequences:
            layouts = {"contiguous": list(range(k)), "out of order": list(range(k))[::-1],
                       "spread": list(range(0, 2 * k, 2))}
            times: dict[str, list[float]] = {name: [] for name in layouts}
            for _ in range(args.repeats):
                for name, slots in layouts.items():
                    times[name].append(step_ms(llama_cpp, internals, model, slots, args.context, args.steps, threads))
            mean = {name: sum(v) / len(v) for name, v in times.items()}
            rows.append((k, layouts["spread"][-1], mean["contiguous"], mean["out of order"], mean["spread"]))
            print(f"{k} sequences: " + ", ".join(f"{name} {v:.1f} ms/step" for name, v in mean.items()), flush=True)
    finally:
        model.close()

    lines = ["# llama.cpp decode step: contiguous slots in order, out of order, and spread KV streams", "",
             f"Embedded model {DEFAULT_MODEL} (weights f32), {STREAMS} KV streams of {STREAM_TOKENS} tokens, "
             f"{args.context} tokens in each decoding sequence's stream, one new token per sequence per step, "
             f"{threads} threads; mean of {args.repeats} interleaved measurements of {args.steps} steps; "
             f"{platform.machine()}, {os.cpu_count()} cores; {datetime.now():%Y-%m-%d %H:%M}; "
             f"load average at the end {os.getloadavg()[0]:.1f}.", "",
             "| sequences | slots 0..k-1 in order, ms/step | same slots out of order, ms/step | × | spread slots "
             "| ms/step | × |",
             "|---:|---:|---:|---:|---|---:|---:|"]
    for k, top, cont, rotated, spread in rows:
        spread_slots = ", ".join(str(i) for i in range(0, top + 1, 2)) if k <= 4 else f"0, 2, ..., {top}"
        lines.append(f"| {k} | {cont:.1f} | {rotated:.1f} | {rotated / cont:.2f}× | {spread_slots} | {spread:.1f} "
                     f"| {spread / cont:.2f}× |")
    lines += ["", "× is the ratio to the in-order column. The engine moves the sequence in the highest slot into "
              "the gap a finished one leaves and writes each step's tokens in slot order "
              "(`cogpo_kit/engines/llamacpp_batch.py`), so its steps cost what the in-order column shows.",
              "", "Command: `python benchmarks/kv_streams.py`"]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
