"""Benchmark: the kit's CRV stages against a naive implementation of the same algorithm.

Both run the Critic, Verifier, Rethinker loop and incorrect CoTs on the same GSM8K-train CoTs with
the same back end (one engine instance, loaded once), in one process:

* **kit**: the scheduler streams (an example's next calls join the running batch as soon as its last
  ones are answered; rounds of all pending requests on engines that cannot take requests while they
  run), the Critic stops asking once two votes agree, a request's samples share their prompt, and a
  response cache (empty at the start, so every call is paid) sits under the engine;
* **naive**: one example after the other, one request of one sample at a time, always all three
  votes, no response cache. It runs in up to three variants (``--naive``), which differ only in what
  the engine keeps of earlier prompts' KV cells:

  - ``no-cache``: nothing; every prompt is evaluated in full;
  - ``previous-prompt``: the previous request's prompt only, which is what a plain loop over
    llama-cpp-python's ``Llama`` gets with no cache set (its single context reuses the common prefix
    with the tokens it evaluated last): the second and third vote reuse the first one's prompt;
  - ``prompt-store``: the kit's host-memory prompt store (``prompt_cache_mb``), as the kit has it.

Labels are the same by construction (early exit on the same samples), so with a back end whose
samples do not depend on their batch the kit and every naive variant write the same ``sft.jsonl``
and ``incorrect.jsonl``; the benchmark checks it against each variant. Results (examples per minute, LLM calls per example, ratios) go to
``benchmarks/results/crv.md``.

    python benchmarks/crv.py                                  # params/demo.yaml, 32 examples
    python benchmarks/crv.py --limit 8 -o crv.rethinker.sampling.max_tokens=64 --naive previous-prompt
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogpo_kit.engines.common import openmp_defaults  # noqa: E402

openmp_defaults()  # before torch or llama.cpp loads OpenMP

from cogpo_kit.crv.agents import ROLES  # noqa: E402
from cogpo_kit.crv.stage import run_critique, run_rethink  # noqa: E402
from cogpo_kit.data.loaders import load_cot  # noqa: E402
from cogpo_kit.engines import build_engine  # noqa: E402
from cogpo_kit.engines.cache import CachedEngine  # noqa: E402
from cogpo_kit.engines.config import CacheParams  # noqa: E402
from cogpo_kit.io import atomic_write_text  # noqa: E402
from cogpo_kit.params import load_params  # noqa: E402


NAIVE = {
    "no-cache": "naive, no cache",
    "previous-prompt": "naive, previous prompt kept",
    "prompt-store": "naive + prompt store",
}


def _run(label: str, params, records, engine, *, naive: bool, backend=None, keep: str = "prompt-store") -> dict:
    """One implementation on ``records``; ``keep`` is what the engine keeps of earlier prompts (see NAIVE)."""
    store = getattr(backend, "prompt_store", None)
    if store is None:
        return _timed(label, params, records, engine, naive=naive, backend=backend)
    budget, entries = store.budget, store.max_entries
    store.clear()  # no prompt saved by another implementation's run
    store.budget = 0 if keep == "no-cache" else budget
    store.max_entries = 1 if keep == "previous-prompt" else entries
    try:
        return _timed(label, params, records, engine, naive=naive, backend=backend)
    finally:
        store.budget, store.max_entries = budget, entries


def _timed(label: str, params, records, engine, *, naive: bool, backend=None) -> dict:
    engines = {r: engine for r in ROLES}
    store = getattr(backend, "prompt_store", None)
    restored0 = store.restored_tokens if store is not None else 0
    decoded0 = getattr(backend, "decoded_tokens", None)
    load0 = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    m1 = run_critique(params, records=records, engines=engines, naive=naive)
    m2 = run_rethink(params, engines=engines, naive=naive)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c1, c2 = m1["funnel"]["calls"], m2["funnel"]["calls"]
    n = len(records)
    out = {
        "label": label, "wall_s": wall, "cpu_s": cpu, "examples": n, "examples_per_min": 60 * n / wall,
        "examples_per_cpu_min": 60 * n / cpu,
        "samples": c1["samples"] + c2["samples"], "paid": c1["paid"] + c2["paid"],
        "generate_calls": c1["generate_calls"] + c2["generate_calls"],
        "rounds": c1["rounds"] + c2["rounds"],
        "streamed": bool(c1.get("streamed") and c2.get("streamed")),
        "critic_samples": m1["funnel"]["early_exit"]["samples_asked"]
        + c2["by_tag"].get("critic", {}).get("samples", 0),
        "prompt_tokens": c1["prompt_tokens"] + c2["prompt_tokens"],
        "completion_tokens": c1["completion_tokens"] + c2["completion_tokens"],
        "funnel": m2["funnel"], "levels": m1["funnel"]["levels"], "load": (load0, os.getloadavg()[0]),
        "run_dir": str(Path(params.run.output_dir) / params.run.run_id),
        "decoded_tokens": None if decoded0 is None else backend.decoded_tokens - decoded0,
        "restored_tokens": None if store is None else store.restored_tokens - restored0,
    }
    out["calls_per_example"] = out["paid"] / n
    print(f"[{label}] {wall:.1f} s wall, {cpu:.1f} s CPU, {out['paid']} paid calls, "
          f"{out['generate_calls']} generate calls", flush=True)
    return out


def _same_outputs(a: dict, b: dict) -> dict:
    res = {}
    for name in ("02_rethink/sft.jsonl", "02_rethink/incorrect.jsonl"):
        res[name] = (Path(a["run_dir"]) / name).read_bytes() == (Path(b["run_dir"]) / name).read_bytes()
    res["levels"] = a["levels"] == b["levels"]
    return res


def _table(kit: dict, naives: list[dict], settings: dict) -> str:
    def row(r):
        return (f"| {r['label']} | {r['wall_s']:.0f} | {r['examples_per_min']:.2f} | {r['cpu_s']:.0f} | "
                f"{r['examples_per_cpu_min']:.2f} | {r['paid']} | "
                f"{r['calls_per_example']:.2f} | {r['critic_samples']} | {r['generate_calls']} | "
                f"{r['prompt_tokens']} | {r['completion_tokens']} | {r['decoded_tokens'] if r['decoded_tokens'] is not None else 'n/a'} | "
                f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")

    def ratios(naive):
        speed = kit["examples_per_min"] / naive["examples_per_min"]
        speed_cpu = kit["examples_per_cpu_min"] / naive["examples_per_cpu_min"]
        same = _same_outputs(kit, naive)
        return (f"- over **{naive['label']}**: **{speed:.2f}× per wall-clock minute, {speed_cpu:.2f}× per CPU "
                f"minute**; LLM calls per example {kit['calls_per_example']:.2f} vs {naive['calls_per_example']:.2f} "
                f"({naive['calls_per_example'] / kit['calls_per_example']:.2f}× fewer); prompt tokens restored from "
                f"the prompt store: {naive['restored_tokens']}; same outputs: "
                + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))

    kit_mode = ("streamed: each example's next calls join the running batch as soon as its last ones are answered "
                "(one `generate` call per stage)" if kit["streamed"] else
                "all pending requests of all examples per round, one `generate` call per engine per round")
    lines = [
        "# CRV: the kit against a naive implementation of the same algorithm", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/crv.py "
        f"{' '.join(settings['argv'])}` on {settings['host']}.", "",
        f"Same {kit['examples']} GSM8K-train CoTs, same back end ({settings['engine']}, one instance), "
        f"same seeds and prompts (paper Table 13), in one process. Settings: {settings['sampling']}.", "",
        "| implementation | wall s | examples/min | CPU s | examples/CPU-min | LLM calls | calls/example "
        "| Critic calls | generate calls | prompt tokens | completion tokens | tokens through the model "
        "| load avg (start → end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        row(kit), *(row(n) for n in naives), "",
        "Speed-up of the kit (target ≥ 3×):", "",
        *(ratios(n) for n in naives), "",
        "The labels of the same samples are equal by construction (outputs: labels, `sft.jsonl`, "
        "`incorrect.jsonl`); texts can differ where the back end's output for a sample depends on the other "
        "sequences decoded with it (batched vs one at a time).", "",
        f"- kit: {kit_mode}; the "
        "Critic's third vote only where two disagree; the votes of one request share its prompt; the engine's "
        f"prompt store (`prompt_cache_mb`) on, prompt tokens restored from it: {kit['restored_tokens']}; response "
        "cache empty at the start (every call paid).",
        "- naive: one example at a time, one request of one sample at a time, always three votes, no response "
        "cache. What the engine keeps of earlier prompts' KV cells: *no cache*, nothing; *previous prompt "
        "kept*, the previous request's prompt only (what a plain loop over llama-cpp-python's `Llama` gets "
        "with no cache set: its one context reuses the prefix it evaluated last), so the second and third "
        "vote reuse the first one's prompt; *+ prompt store*, the kit's prompt store.",
        "- Tokens through the model: prompt tokens not taken from another prompt's KV cells plus generated "
        "tokens, i.e. the compute actually paid.",
        "- The prompt store is emptied before each implementation runs.",
        "- The machine is shared: wall time depends on what else runs (load average column); CPU time (this "
        "process, all threads) varies less with load, but not nothing: OpenMP threads wait and spin longer on a "
        "busy CPU. Tokens through the model is the measure of the work that does not vary.",
        "",
        f"Funnel (kit): levels {kit['levels']}, D_SFT* {kit['funnel']['sft']}, incorrect CoTs "
        f"{kit['funnel']['incorrect']['found']} of {kit['examples']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "demo.yaml"))
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("-o", "--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crv.md"))
    ap.add_argument("--naive", default=",".join(NAIVE),
                    help=f"naive variants to run, comma-separated (default: all of {', '.join(NAIVE)})")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.naive.split(",") if v.strip()]
    unknown = [v for v in variants if v not in NAIVE]
    if unknown or not variants:
        raise SystemExit(f"--naive: unknown variant(s) {unknown or args.naive!r}; known: {', '.join(NAIVE)}")
    work = Path(tempfile.mkdtemp(prefix="crv-bench-"))
    base = [f"data.limit={args.limit}", "crv.free_label_probe=0", f"run.output_dir={work}", *args.overrides]
    kit_params = load_params([args.params], base + ["run.run_id=kit", "crv.early_exit=true"])
    naive_params = {v: load_params([args.params], base + [f"run.run_id=naive-{v}", "crv.early_exit=false"])
                    for v in variants}
    records, _ = load_cot(kit_params.data)
    crv = kit_params.crv
    configs = {crv.critic.engine, crv.rethinker.engine, crv.verifier.engine}
    if len(configs) != 1:
        raise SystemExit("benchmarks/crv.py expects one engine for all agents (as in params/demo.yaml)")
    cfg = dataclasses.replace(crv.critic.engine, cache=CacheParams(enabled=False))
    backend = build_engine(cfg).backend  # loaded once, shared by both implementations
    try:
        kit_engine = CachedEngine(backend, work / "cache.sqlite", show_progress=False)
        kit = _run("kit", kit_params, records, kit_engine, naive=False, backend=backend)
        naives = [_run(NAIVE[v], naive_params[v], records, backend, naive=True, backend=backend, keep=v)
                  for v in variants]
    finally:
        backend.close()
    settings = {
        "argv": sys.argv[1:], "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "engine": f"{cfg.engine} {cfg.model}",
        "sampling": ", ".join(f"{name} max_tokens={getattr(crv, name).sampling.max_tokens}"
                              for name in ("critic", "rethinker", "verifier"))
        + f", T={crv.critic.sampling.temperature}, top_p={crv.critic.sampling.top_p}, top_k={crv.critic.sampling.top_k}",
    }
    text = _table(kit, naives, settings)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
