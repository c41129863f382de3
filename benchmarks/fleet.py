"""Requests per second one ``openai`` engine client sustains against a fleet of instant servers.

    python benchmarks/fleet.py                       # writes benchmarks/results/fleet.md
    python benchmarks/fleet.py --inflight 64 512 --servers 4 --requests 4000

Stub OpenAI-compatible servers (raw asyncio, one child process each, answering every chat request at
once with the same ~1k-token completion) stand in for a fleet of GPU servers, so what is measured is
the client alone: the async fleet client (``cogpo_kit/engines/openai_http.py``) against the thread-pool
client it replaced (the engine as of commit ``BASELINE_COMMIT``, loaded from git history: one thread per
request in flight over one pooled ``httpx`` client), at each number of requests in flight. Each
measurement runs in a fresh client process (its CPU time and peak memory are its own) that first warms
its connections with one request per slot, then times ``--requests`` samples through ``generate``
(``max_concurrency`` = requests in flight); each row is measured ``--repeat`` times, interleaved over the
clients, and the fastest kept. Where the machine has two or more cores the client is pinned to core 0
and the servers to the others. Reported: requests per second (wall), the client's CPU time per request
(all its threads), its peak resident memory and the most threads it ran; then what a 100-GPU fleet
needs from the client (the assumptions are constants below).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE_COMMIT = "140effd1eb1e0045755cb455be8f32ed309b341a"
"""The last commit whose ``openai_http.py`` is the thread-pool client."""
ANSWER_WORDS = 800
"""Words of every stub answer (~4 kB of JSON: the size of a ~1k-token completion)."""
PROMPT_WORDS = 400
"""Words of every request's user message (~2 kB, a CoT-sized prompt)."""
CLIENTS = {"threadpool": "thread-pool client (before)", "async": "async fleet client",
           "async+cache": "async fleet client + response cache"}
"""The clients measured: the engine before and after, and after with the response cache over it (every
result committed to SQLite first, as a stage has it)."""


# -- the stub server (child process) ------------------------------------------------------------
def serve(port: int, delay: float = 0.0) -> None:
    """An OpenAI-compatible server on 127.0.0.1:``port`` (0: any) answering each chat ``delay`` seconds after
    it arrives (0: at once); prints the port, then serves."""
    text = " ".join(["word"] * ANSWER_WORDS)
    chat = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 500, "completion_tokens": 1000}}).encode()
    models = json.dumps({"data": [{"id": "m", "owned_by": "stub"}]}).encode()

    def response(status: str, body: bytes) -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)

    answers = {b"POST": response("200 OK", chat), b"/models": response("200 OK", models),
               b"other": response("404 Not Found", b"{}")}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        size = int(line[15:])
                if size:
                    await reader.readexactly(size)
                first = head.split(b"\r\n", 1)[0]
                if first.startswith(b"POST"):
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(answers[b"POST"])
                elif b"/models" in first:
                    writer.write(answers[b"/models"])
                else:
                    writer.write(answers[b"other"])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=8192)
        print(srv.sockets[0].getsockname()[1], flush=True)
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())


def start_servers(k: int, cpus: list[int], delay: float = 0.0) -> tuple[list[subprocess.Popen], list[str]]:
    procs, urls = [], []
    for _ in range(k):
        p = subprocess.Popen([sys.executable, __file__, "--serve", "0", str(delay)], stdout=subprocess.PIPE,
                             text=True)
        if cpus:
            os.sched_setaffinity(p.pid, cpus)
        port = int(p.stdout.readline())
        procs.append(p)
        urls.append(f"http://127.0.0.1:{port}/v1")
    return procs, urls


# -- the clients (one fresh process per measurement) ------------------------------------------------
def thread_pool_engine_class():
    """``OpenAIEngine`` of ``openai_http.py`` at :data:`BASELINE_COMMIT`, loaded from git history."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show",
                              f"{BASELINE_COMMIT}:cogpo_kit/engines/openai_http.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"the thread-pool client comes from git history ({BASELINE_COMMIT[:8]}); "
                         f"this checkout cannot show it: {exc}") from None
    path = Path(tempfile.mkdtemp()) / "openai_http_threadpool.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("openai_http_threadpool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OpenAIEngine


def measure(client: str, inflight: int, n: int, urls: list[str]) -> dict:
    """Time ``n`` samples through one client with ``inflight`` requests in flight (this process)."""
    from cogpo_kit.engines.base import Request
    from cogpo_kit.engines.config import EngineParams, SamplingParams

    if client == "threadpool":
        cls = thread_pool_engine_class()
    else:
        from cogpo_kit.engines.openai_http import OpenAIEngine as cls
    cfg = EngineParams(engine="openai", model="m", base_urls=tuple(urls), max_concurrency=inflight,
                       timeout_s=300, max_retries=2, retry_backoff_s=0.1, guided_choice="none")
    prompt = " ".join(["token"] * PROMPT_WORDS)

    def batch(k: int, start: int) -> list:
        return [Request(messages=({"role": "user", "content": f"{start + i}: {prompt}"},),
                        sampling=SamplingParams(max_tokens=1024, seed=start + i)) for i in range(k)]

    engine = cls(cfg)
    generate = engine.generate
    if client == "async+cache":  # as a stage has it: every result committed to the response cache first
        from cogpo_kit.engines.cache import CachedEngine

        generate = CachedEngine(engine, Path(tempfile.mkdtemp()) / "responses.sqlite", show_progress=False).generate
    peak, running = [0], [True]

    def sample_threads() -> None:  # the most threads alive (this sampler not counted)
        while running[0]:
            peak[0] = max(peak[0], threading.active_count() - 1)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_threads, daemon=True)
    sampler.start()
    warm = generate(batch(inflight, 10 ** 7))  # connections opened, threads made
    assert all(row[0].ok for row in warm)
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = generate(batch(n, 0))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    running[0] = False
    sampler.join()
    retried = engine.fleet_stats()["totals"]["errors"] if hasattr(engine, "fleet_stats") else None
    engine.close()
    bad = sum(not row[0].ok for row in out)
    if bad:
        raise SystemExit(f"{client} at {inflight} in flight: {bad} of {n} samples failed")
    return {"client": client, "inflight": inflight, "requests": n, "wall_s": round(wall, 3),
            "req_s": round(n / wall, 1), "cpu_ms_per_req": round(1000 * cpu / n, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": peak[0], "failed_attempts": retried}


def run_measure(client: str, inflight: int, n: int, urls: list[str], cpus: list[int], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--measure", client, str(inflight), str(n), *urls]
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=pre)
    except subprocess.TimeoutExpired:
        return {"client": client, "inflight": inflight, "requests": n, "error": f"over {timeout:g} s"}
    if out.returncode != 0:
        return {"client": client, "inflight": inflight, "requests": n,
                "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the report ------------------------------------------------------------------------------------
def cell(row: dict, key: str, fmt: str) -> str:
    return "—" if "error" in row else format(row[key], fmt)


GPUS = 100
"""The fleet of the arithmetic below: one vLLM server per GPU."""
GPU_TOKENS_S = 5000.0
"""Assumed output tokens per second of one vLLM server on one H100 serving a 32B model (DeepSeek-R1-Distill-
Qwen-32B) at full batch with FP8 weights; bf16 weights leave less room for the KV cache (about half this)."""
SEQUENCE_TOKENS_S = 50.0
"""Assumed decode speed of one sequence in such a full batch, tokens per second."""
OUTPUT_TOKENS = 1000
"""Tokens of one answer (a Rethinker's rewrite; Critic and Verifier labels are far shorter, but their
prompts cost GPU time of the same order in prefill)."""


def fleet_arithmetic(rows: list[dict], checks: list[dict]) -> list[str]:
    """What 100 GPUs need from the client, against what it sustained."""
    req_s = GPU_TOKENS_S / OUTPUT_TOKENS
    latency = OUTPUT_TOKENS / SEQUENCE_TOKENS_S
    need, inflight = GPUS * req_s, GPUS * req_s * latency
    lines = ["## What a 100-GPU fleet needs from the client", "",
             f"Assumption: one vLLM server on one H100 serving a 32B model sustains about {GPU_TOKENS_S:,.0f} "
             f"output tokens/s at full batch (FP8 weights; about half with bf16), each sequence decoding at "
             f"~{SEQUENCE_TOKENS_S:.0f} tokens/s; answers of ~{OUTPUT_TOKENS:,} tokens. One server then finishes "
             f"{GPU_TOKENS_S:,.0f} / {OUTPUT_TOKENS:,} = {req_s:g} requests/s, each taking {OUTPUT_TOKENS:,} / "
             f"{SEQUENCE_TOKENS_S:.0f} = {latency:g} s. {GPUS} servers: {GPUS} × {req_s:g} = **{need:,.0f} "
             f"requests/s**, with {need:,.0f} × {latency:g} = **{inflight:,.0f} requests in flight** (rate × "
             f"time in the system) to keep every batch full.", ""]
    for client in ("async", "async+cache", "threadpool"):
        ok = [r for r in rows if r["client"] == client and "error" not in r]
        if not ok:
            continue
        top = max(ok, key=lambda r: r["inflight"])
        per_core = 1000.0 / top["cpu_ms_per_req"] if top["cpu_ms_per_req"] else float("inf")
        lines.append(f"- {CLIENTS[client]}: {top['req_s']:,.0f} requests/s at {top['inflight']:,} in flight, "
                     f"{top['cpu_ms_per_req']:.2f} ms of CPU per request (one core: ~{per_core:,.0f} requests/s), "
                     f"{top['threads']} threads: **{top['req_s'] / need:.1f}×** the {need:,.0f} requests/s the "
                     f"fleet needs.")
    for r in checks:
        if "error" not in r:
            lines.append(f"- {CLIENTS[r['client']]}, fleet-sized check: {r['req_s']:,.0f} requests/s with "
                         f"{r['inflight']:,} in flight answered after {r['delay_s']:g} s "
                         f"({100 * r['req_s'] / r['ideal_req_s']:.0f}% of the {r['ideal_req_s']:,.0f} possible), "
                         f"{r['peak_rss_mb']:,.0f} MB.")
    lines += ["", "The client's CPU per request hardly depends on how long the GPU takes; requests that stay in "
              "flight for seconds cost the async client memory (a connection and a task each), not threads."]
    return lines


def fleet_check(args, client_cpus: list[int], server_cpus: list[int]) -> list[dict]:
    """The async clients at ``--fleet-check`` requests in flight against servers that take their time."""
    inflight, delay = int(args.fleet_check[0]), float(args.fleet_check[1])
    procs, urls = start_servers(args.servers, server_cpus, delay)
    rows = []
    try:
        for client in ("async", "async+cache"):
            row = run_measure(client, inflight, 2 * inflight, urls, client_cpus, args.timeout)
            row.update(delay_s=delay, ideal_req_s=inflight / delay)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return rows


def check_section(checks: list[dict], servers: int) -> list[str]:
    if not checks:
        return []
    c = checks[0]
    lines = ["## Fleet-sized check", "",
             f"The async client with {c['inflight']:,} requests in flight against {servers} stub servers that "
             f"answer each request {c['delay_s']:g} s after it arrives, as the GPUs below would: at best "
             f"{c['inflight']:,} / {c['delay_s']:g} = {c['ideal_req_s']:,.0f} requests/s.", "",
             "| client | requests | req/s | share of the best possible | CPU ms/req | threads | peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in checks:
        share = f"{100 * r['req_s'] / r['ideal_req_s']:.0f}%" if "error" not in r else ""
        note = f" ({r['error']})" if "error" in r else ""
        lines.append(f"| {CLIENTS[r['client']]}{note} | {r['requests']:,} | {cell(r, 'req_s', ',.0f')} | {share} "
                     f"| {cell(r, 'cpu_ms_per_req', '.2f')} | {cell(r, 'threads', 'd')} "
                     f"| {cell(r, 'peak_rss_mb', '.0f')} |")
    return lines + [""]


def write_report(rows: list[dict], checks: list[dict], args, meta: dict, path: Path) -> None:
    base = {r["inflight"]: r for r in rows if r["client"] == "threadpool" and "error" not in r}
    lines = ["# One client against a fleet of instant servers: requests per second", "",
             f"{args.servers} stub servers (raw asyncio, one process each, every answer a ~1k-token completion "
             f"of ~4 kB at once; prompts ~2 kB) on loopback; {meta['pinning']}. Each row: a fresh client "
             f"process, connections warmed with one request per slot, then one timed `generate` of the "
             f"requests given; {args.repeat} measurements per row, interleaved over the clients, the fastest "
             f"shown (all in the last column). {meta['machine']}; {meta['when']}; load average "
             f"{meta['load_before']} before, {meta['load_after']} after (other jobs shared the machine: CPU per "
             f"request is the steadier figure).", "",
             "| in flight | client | requests | req/s | CPU ms/req | threads | peak MB | × thread pool "
             "| req/s of each try |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        b = base.get(r["inflight"])
        ratio = f"{r['req_s'] / b['req_s']:.2f}×" if b and "error" not in r else ""
        note = f" ({r['error']})" if "error" in r else ""
        lines.append(f"| {r['inflight']} | {CLIENTS[r['client']]}{note} | {r['requests']} "
                     f"| {cell(r, 'req_s', ',.0f')} | {cell(r, 'cpu_ms_per_req', '.2f')} | {cell(r, 'threads', 'd')} "
                     f"| {cell(r, 'peak_rss_mb', '.0f')} | {ratio} "
                     f"| {', '.join('—' if x is None else f'{x:,.0f}' for x in r.get('tries', []))} |")
    retried = [f"{r['inflight']} in flight, {r['client']}: {r['failed_attempts']}" for r in rows
               if r.get("failed_attempts")]
    if retried:
        lines += ["", "Attempts that failed and were retried (warm-up included): " + "; ".join(retried) + "."]
    lines += ["", f"Command: `{meta['command']}`", "", *check_section(checks, args.servers),
              *fleet_arithmetic(rows, checks), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "fleet_check": checks}, indent=1),
                                         encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inflight", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--servers", type=int, default=16,
                    help="stub servers (one process each; a server's listen backlog holds 4096 connections)")
    ap.add_argument("--requests", type=int, default=0,
                    help="timed requests per row (default: twice the requests in flight, at least 4000)")
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    ap.add_argument("--repeat", type=int, default=2,
                    help="measurements per row, interleaved over the clients; the fastest is reported")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one cell may take")
    ap.add_argument("--threadpool-max", type=int, default=4096,
                    help="the thread-pool client is not run above this many in flight (a thread each)")
    ap.add_argument("--fleet-check", type=float, nargs=2, default=[10000, 20], metavar=("IN_FLIGHT", "DELAY_S"),
                    help="then the async clients with this many in flight against servers that answer each "
                         "request DELAY_S seconds after it arrives (the fleet of the arithmetic below)")
    ap.add_argument("--no-fleet-check", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet.md"))
    args = ap.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    client_cpus, server_cpus = ([cores[0]], cores[1:]) if len(cores) >= 2 else ([], [])
    meta = {"machine": f"{platform.machine()}, {len(cores)} cores, Python {platform.python_version()}",
            "when": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "pinning": (f"client on core {client_cpus[0]}, servers on cores {','.join(map(str, server_cpus))}"
                        if client_cpus else "no pinning (one core)"),
            "command": "python benchmarks/fleet.py " + " ".join(sys.argv[1:])}
    procs, urls = start_servers(args.servers, server_cpus)
    rows = []
    try:
        for c in args.inflight:
            n = args.requests or max(2 * c, 4000)
            clients = [x for x in args.clients if not (x == "threadpool" and c > args.threadpool_max)]
            tries: dict[str, list[dict]] = {x: [] for x in clients}
            for _ in range(max(1, args.repeat)):
                for client in clients:
                    row = run_measure(client, c, n, urls, client_cpus, args.timeout)
                    tries[client].append(row)
                    print(json.dumps(row), flush=True)
            for client in clients:
                good = [r for r in tries[client] if "error" not in r]
                best = max(good, key=lambda r: r["req_s"]) if good else tries[client][0]
                rows.append({**best, "tries": [r.get("req_s") for r in tries[client]]})
    finally:
        for p in procs:
            p.kill()
            p.wait()
    checks = [] if args.no_fleet_check else fleet_check(args, client_cpus, server_cpus)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_report(rows, checks, args, meta, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    elif len(sys.argv) >= 5 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])))
    else:
        main()
