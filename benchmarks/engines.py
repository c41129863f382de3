"""Benchmark: completion tokens per second of each CPU back end against a naive baseline.

All back ends serve the same 16 chat prompts: the paper's Critic and Rethinker prompts (Table 13,
``cogpo_kit.crv.prompts``: critic, expand, simplify, corrupt in turn) on the first 16 GSM8K-train
CoTs (problem = question, reasoning = the answer text before ``####``), sampled at the paper's
settings (T=0.7, top_p=0.9, top_k=50) with the same seeds. Measured in one run, one after the other:

* **naive**: one request at a time through transformers ``generate`` (no batching, no cache);
* **transformers**: the kit's transformers engine (batched, left-padded);
* **llamacpp**: the kit's llama.cpp engine, the agents' default CPU path (continuous batching);
* **openai → llama.cpp server**: the kit's HTTP engine against llama-cpp-python's server on loopback;
* **cache**: the same batch again through the llamacpp engine's response cache (all hits).

Throughput is completion tokens over wall time (prompt processing included); the ratio is against
the naive baseline of the same run. The table goes to ``benchmarks/results/engines.md``.

    python benchmarks/engines.py                       # 16 prompts, max_tokens 256
    python benchmarks/engines.py --max-tokens 48 --skip openai
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("COGPO_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogpo_kit.engines.common import openmp_defaults  # noqa: E402

openmp_defaults()  # before torch or llama.cpp loads OpenMP: the same waiting for every back end

from cogpo_kit.crv.prompts import build_messages  # noqa: E402
from cogpo_kit.engines import build_engine  # noqa: E402
from cogpo_kit.engines.base import Request  # noqa: E402
from cogpo_kit.engines.common import cpu_threads, sample_seed  # noqa: E402
from cogpo_kit.engines.config import CacheParams, EngineParams, SamplingParams  # noqa: E402
from cogpo_kit.io import atomic_write_json, atomic_write_text  # noqa: E402
from cogpo_kit.models.resolve import DEFAULT_MODEL, load_causal_lm, resolve  # noqa: E402

ROLES = ("critic", "expand", "simplify", "corrupt")


def prompts(n: int, max_tokens: int) -> list[Request]:
    """The agents' prompts on the first ``n`` GSM8K-train CoTs (roles in turn)."""
    rows = []
    with open(ROOT / "data" / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            row = json.loads(line)
            if "####" not in row.get("answer", ""):
                raise ValueError(f"data/gsm8k/train.jsonl line {lineno}: field 'answer' has no '####'")
            reasoning, answer = row["answer"].split("####", 1)
            rows.append((row["question"], answer.strip(), reasoning.strip()))
            if len(rows) == n:
                break
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_tokens=max_tokens)
    return [Request(messages=build_messages(ROLES[k % 4], problem=q, answer=a, reasoning=r),
                    sampling=replace(sp, seed=k), tag=ROLES[k % 4]) for k, (q, a, r) in enumerate(rows)]


def timed(label: str, fn) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    tokens = sum(c.completion_tokens for row in out for c in row)
    print(f"{label}: {tokens} completion tokens in {wall:.1f} s = {tokens / wall:.1f} tok/s "
          f"(load {load:.1f})", flush=True)
    return {"backend": label, "requests": len(out), "completion_tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "load": load}


def naive(reqs: list[Request], threads: int) -> list:
    """One request at a time through transformers ``generate`` with the chat template."""
    import torch

    from cogpo_kit.engines.base import Completion

    torch.set_num_threads(threads)
    model, tok, _ = load_causal_lm(DEFAULT_MODEL, device="cpu")
    model.eval()

    def run():
        out = []
        for r in reqs:
            ids = tok.apply_chat_template(list(r.messages), add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            torch.manual_seed(sample_seed(r.sampling.seed, 0))
            with torch.no_grad():
                gen = model.generate(**ids, do_sample=True, temperature=r.sampling.temperature,
                                     top_p=r.sampling.top_p, top_k=r.sampling.top_k,
                                     max_new_tokens=r.sampling.max_tokens, pad_token_id=tok.pad_token_id)
            new = gen[0, ids["input_ids"].shape[1]:]
            n_new = int((new != tok.pad_token_id).sum())  # the end-of-turn token is not counted
            out.append([Completion(text=tok.decode(new, skip_special_tokens=True), completion_tokens=n_new)])
        return out

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int):
    port = free_port()
    gguf = resolve(DEFAULT_MODEL).gguf_path
    proc = subprocess.Popen([sys.executable, "-m", "cogpo_kit.engines.llamacpp_server", "--model", gguf,
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                             "--n_threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama.cpp server did not start")


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown table (ratios against the naive row of the same run)."""
    base = next((r["tok_s"] for r in rows if r["backend"].startswith("naive")), None)
    lines = ["# Inference engines: completion tokens per second (CPU)", "",
             f"{meta['prompts']} chat prompts (the paper's Critic/Rethinker prompts on the first {meta['prompts']} "
             f"GSM8K-train CoTs), T=0.7 top_p=0.9 top_k=50, max_tokens={meta['max_tokens']}; model {DEFAULT_MODEL}; "
             f"{meta['threads']} threads per back end; {meta['cpu']}; measured one after the other in one run "
             f"({meta['date']}). Throughput = completion tokens / wall time, prompt processing included. The "
             "machine is shared with other jobs: `load` is the 1-minute load average at the start of each "
             "measurement.", "",
             "| back end | requests | completion tokens | wall s | tokens/s | × naive | load |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["wall_s"] < 1:  # served from the cache: no generation at all
            lines.append(f"| {r['backend']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']:.3f} | "
                         f"(all cache hits) | | {r['load']:.1f} |")
            continue
        ratio = f"{r['tok_s'] / base:.1f}×" if base else "n/a"
        lines.append(f"| {r['backend']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']:.1f} | "
                     f"{r['tok_s']:.1f} | {ratio} | {r['load']:.1f} |")
    lines += steps_table(rows)
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def steps_table(rows: list[dict]) -> list[str]:
    """Where each llama.cpp row's time went: prompt steps against decode steps (the engine's ``step_stats``)."""
    rows = [r for r in rows if r.get("steps")]
    if not rows:
        return []
    lines = ["", "Where the llama.cpp engine's time goes (`step_stats`): a *prompt step* feeds prompt tokens (the "
             "running sequences' next tokens ride along), a *decode step* one generated token per sequence; "
             "seconds are inside `llama_decode`, the rest of the wall time is sampling, scheduling and Python.", "",
             "| back end | prompt steps | prompt tokens | prompt s | decode steps | sequences per decode step | "
             "decode s | ms per decode step | other s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        st = r["steps"]
        width = st["decode_sequences"] / max(1, st["decode_steps"])
        per = 1000 * st["decode_s"] / max(1, st["decode_steps"])
        other = st["wall_s"] - st["prompt_s"] - st["decode_s"]
        lines.append(f"| {r['backend']} | {st['prompt_steps']} | {st['prompt_tokens']} | {st['prompt_s']:.1f} | "
                     f"{st['decode_steps']} | {width:.1f} | {st['decode_s']:.1f} | {per:.0f} | {other:.1f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every back end (0: all cores)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["naive", "transformers", "openai"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engines.md"))
    args = ap.parse_args(argv)
    threads = cpu_threads(args.threads)
    reqs = prompts(args.prompts, args.max_tokens)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    off = CacheParams(enabled=False)
    if "naive" not in args.skip:
        rows.append(timed("naive: transformers generate, one request at a time", naive(reqs, threads)))
    if "transformers" not in args.skip:
        eng = build_engine(EngineParams(engine="transformers", device="cpu", threads=threads, batch_size=16,
                                        cache=off))
        rows.append(timed("transformers engine (batch 16)", lambda: eng.generate(reqs)))
        eng.close()
    llama = EngineParams(engine="llamacpp", threads=threads, batch_size=16, context_length=2048,
                         cache=CacheParams(retry_truncated=False))  # the cache serves the cut ones too
    eng = build_engine(llama, cache_path=str(work / "cache.sqlite"))
    rows.append(timed(f"llamacpp engine, the agents' default (16 sequences batched; weights {eng.backend.weights})",
                      lambda: eng.generate(reqs)))
    rows[-1]["steps"] = eng.backend.step_stats.as_dict()
    cached = timed("llamacpp engine, same batch from the response cache", lambda: eng.generate(reqs))
    eng.close()
    eng = build_engine(replace(llama, gguf_weights="as_is"), cache_path=str(work / "cache.sqlite"))
    rows.append(timed("llamacpp engine (16 sequences batched; Q4_1 weights as shipped)", lambda: eng.generate(reqs)))
    rows[-1]["steps"] = eng.backend.step_stats.as_dict()
    eng.close()
    if "openai" not in args.skip:
        proc, url = start_server(threads)
        try:
            eng = build_engine(EngineParams(engine="openai", model="smollm2", base_urls=(url,), max_concurrency=4,
                                            timeout_s=600, cache=off))
            rows.append(timed("openai engine -> llama.cpp server (4 in flight)", lambda: eng.generate(reqs)))
            eng.close()
        finally:
            proc.kill()
            proc.wait()
    rows.append(cached)
    meta = {"prompts": len(reqs), "max_tokens": args.max_tokens, "threads": threads,
            "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python benchmarks/engines.py"] + (argv or sys.argv[1:]))}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    text = render(meta, rows)
    atomic_write_text(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
