"""Wait for a fleet of vLLM servers, then write the params fragment that points the CRV agents at it.

    python -m cogpo_kit.launch.fleet_params --model deepseek-ai/DeepSeek-R1-Distill-Qwen-32B \\
        --url http://node1:8000/v1 --url http://node1:8001/v1 --wait 3600 -o outputs/fleet/fleet.yaml
    cogpo-kit run params/paper-qwen2.5-7b.yaml outputs/fleet/fleet.yaml --stages critique,rethink,pairs

``params/launch/vllm_fleet.sbatch`` and ``vllm_fleet.sh`` start the servers and call this. The fragment sets
``crv.<agent>.engine`` of each agent (``critic``, ``rethinker``, ``verifier`` unless ``--agents`` says
otherwise) to ``{engine: openai, model, base_urls, max_concurrency}`` (and ``api_key_env`` when given). Given
after the run's own params file it wins key by key: the agent's other engine settings (``thinking_end``,
``max_thinking_tokens``, ``context_length``, ``cache``) stay the run's, and the vLLM-only ones
(``tensor_parallel_size``, ``data_parallel_size``, ...) are not used by the ``openai`` engine.

With ``--wait S`` it first waits, up to S seconds, until every server answers ``GET /health`` with 200 (a vLLM
server answers only once its model is loaded) and lists ``--model`` in ``GET /v1/models``. ``--pid`` names
processes (the ``srun`` step or the ``ssh`` sessions running the servers) whose exit ends the wait at once.
The fragment is checked against the kit's parameter schema, then written atomically. Errors name the server
and what it answered; the exit code is 0 when the fragment was written, 2 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

DEFAULT_AGENTS = ("critic", "rethinker", "verifier")
"""The agents a fragment points at the fleet by default (the simplifier and corrupter follow the rethinker)."""
AGENT_KEYS = ("critic", "rethinker", "simplifier", "corrupter", "verifier")
"""Every ``crv.*`` agent section a fragment may set."""
DEFAULT_PER_SERVER = 32
"""Requests in flight per server (``max_concurrency`` = this x servers); vLLM batches them continuously."""


class FleetError(RuntimeError):
    """The fleet did not come up, or the fragment's settings are wrong; the message names the server or key."""


def server_root(url: str) -> str:
    """``http://host:8000`` from ``http://host:8000/v1`` (vLLM's ``/health`` lives at the root)."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def check_urls(urls: Sequence[str]) -> list[str]:
    """The base URLs without trailing slashes; an error for an empty list, a duplicate or a non-HTTP URL."""
    out: list[str] = []
    for url in urls:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise FleetError(f"server URL '{url}' must start with http:// or https:// (e.g. http://node1:8000/v1)")
        if url in out:
            raise FleetError(f"server URL '{url}' is given twice")
        out.append(url)
    if not out:
        raise FleetError("no server URL given (--url http://host:port/v1, or --urls-file)")
    return out


def fragment(model: str, urls: Sequence[str], *, agents: Sequence[str] = DEFAULT_AGENTS,
             api_key_env: Optional[str] = None, per_server: int = DEFAULT_PER_SERVER) -> dict:
    """The params mapping that sends every agent in ``agents`` to the servers at ``urls``."""
    urls = check_urls(urls)
    if not model.strip():
        raise FleetError("--model is empty: give the model name the servers serve (vllm serve --served-model-name)")
    unknown = [a for a in agents if a not in AGENT_KEYS]
    if unknown or not agents:
        raise FleetError(f"unknown agent '{unknown[0] if unknown else ''}' (agents: {', '.join(AGENT_KEYS)})")
    if per_server < 1:
        raise FleetError(f"--per-server must be at least 1, got {per_server}")
    engine = {"engine": "openai", "model": model, "base_urls": list(urls), "max_concurrency": per_server * len(urls)}
    if api_key_env:
        engine["api_key_env"] = api_key_env
    return {"crv": {agent: {"engine": dict(engine, base_urls=list(urls))} for agent in agents}}  # no YAML anchors


def render(data: dict, *, servers: int, model: str) -> str:
    """The fragment as YAML, under a comment saying what it is and how to use it."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"# CRV agents on {servers} vLLM server(s) of {model}, written {stamp} by\n"
            "# python -m cogpo_kit.launch.fleet_params. Give it after the run's params (later files win):\n"
            "#   cogpo-kit run params/paper-qwen2.5-7b.yaml <this file> --stages critique,rethink,pairs\n")
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def check_fragment(data: dict) -> None:
    """Load ``data`` through the kit's parameter schema (an unknown key or a wrong type is a :class:`FleetError`)."""
    from cogpo_kit.params.loader import ParamsError, from_dict
    from cogpo_kit.params.run import RunParams

    try:
        from_dict(RunParams, data, source="fleet fragment")
    except ParamsError as exc:
        raise FleetError(str(exc)) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child that exited but was not reaped yet is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _probe(client, url: str, model: str) -> Optional[str]:
    """``None`` when the server at ``url`` is ready and serves ``model``, else what it answered."""
    import httpx

    try:
        r = client.get(server_root(url) + "/health")
        if r.status_code != 200:
            return f"/health answered {r.status_code}"
        r = client.get(url + "/models")
        if r.status_code != 200:
            return f"/v1/models answered {r.status_code}: {r.text[:200]}"
        served = [m.get("id") for m in r.json().get("data", []) if isinstance(m, dict)]
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__}: {exc})"
    except ValueError:
        return "/v1/models did not answer JSON"
    if model not in served:
        raise FleetError(f"{url} serves {served}, not '{model}': give --model the server's name "
                         "(vllm serve --served-model-name)")
    return None


def wait_for_servers(urls: Sequence[str], model: str, *, timeout_s: float, interval_s: float = 5.0,
                     pids: Sequence[int] = (), api_key: Optional[str] = None,
                     log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> float:
    """Wait until every server answers ``/health`` and lists ``model``; returns the seconds waited.

    Raises :class:`FleetError` naming the servers not ready (and what they last answered) after ``timeout_s``,
    or at once when a process in ``pids`` has exited or a server serves another model.
    """
    import httpx

    urls = check_urls(urls)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.monotonic()
    pending = {u: "not asked yet" for u in urls}
    last_report = start
    with httpx.Client(timeout=10.0, headers=headers) as client:
        while True:
            for url in list(pending):
                answer = _probe(client, url, model)
                if answer is None:
                    del pending[url]
                    log(f"ready: {url} ({time.monotonic() - start:.0f} s)")
                else:
                    pending[url] = answer
            if not pending:
                return time.monotonic() - start
            gone = [p for p in pids if not _alive(p)]
            if gone:
                raise FleetError(f"process {gone[0]} running the servers has exited before {len(pending)} of "
                                 f"{len(urls)} answered (see the server logs): "
                                 + "; ".join(f"{u}: {a}" for u, a in pending.items()))
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise FleetError(f"{len(pending)} of {len(urls)} servers not ready after {timeout_s:.0f} s: "
                                 + "; ".join(f"{u}: {a}" for u, a in pending.items()))
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                log(f"waiting for {len(pending)} of {len(urls)} servers ({waited:.0f} s)")
            time.sleep(min(interval_s, max(0.0, timeout_s - waited)))


def write_fleet_params(out: str | os.PathLike, model: str, urls: Sequence[str], *,
                       agents: Sequence[str] = DEFAULT_AGENTS, api_key_env: Optional[str] = None,
                       per_server: int = DEFAULT_PER_SERVER) -> Path:
    """Check and write the fragment to ``out`` (atomically); returns its path."""
    from cogpo_kit.io import atomic_write_text

    data = fragment(model, urls, agents=agents, api_key_env=api_key_env, per_server=per_server)
    check_fragment(data)
    return atomic_write_text(out, render(data, servers=len(data["crv"][agents[0]]["engine"]["base_urls"]),
                                         model=model))


def read_urls_file(path: str | os.PathLike) -> list[str]:
    """Base URLs from a file, one a line (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the URL file ({exc.strerror})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cogpo_kit.launch.fleet_params",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model name the servers serve (their --served-model-name)")
    p.add_argument("--url", action="append", default=[], help="a server's base URL, http://host:port/v1 (repeatable)")
    p.add_argument("--urls-file", help="a file of base URLs, one a line (added after the --url ones)")
    p.add_argument("-o", "--out", required=True, help="the YAML fragment to write")
    p.add_argument("--agents", default=",".join(DEFAULT_AGENTS),
                   help=f"comma-separated agents to point at the fleet (default: {','.join(DEFAULT_AGENTS)})")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the servers' key (vLLM reads VLLM_API_KEY); written as the "
                        "agents' api_key_env, and used for the readiness checks")
    p.add_argument("--per-server", type=int, default=DEFAULT_PER_SERVER,
                   help="requests in flight per server (max_concurrency = this x servers; "
                        f"default {DEFAULT_PER_SERVER})")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for every server to answer /health and list --model (0: do not check)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between two rounds of checks")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="a process running the servers; its exit ends the wait with an error (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        urls = check_urls([*args.url, *(read_urls_file(args.urls_file) if args.urls_file else [])])
        agents = [a.strip() for a in args.agents.split(",") if a.strip()]
        fragment(args.model, urls, agents=agents, api_key_env=args.api_key_env, per_server=args.per_server)
        if args.wait > 0:
            key = os.environ.get(args.api_key_env) if args.api_key_env else None
            if args.api_key_env and not key:
                raise FleetError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
            waited = wait_for_servers(urls, args.model, timeout_s=args.wait, interval_s=args.interval,
                                      pids=args.pid, api_key=key)
            print(f"{len(urls)} server(s) of {args.model} ready after {waited:.0f} s", file=sys.stderr)
        path = write_fleet_params(args.out, args.model, urls, agents=agents, api_key_env=args.api_key_env,
                                  per_server=args.per_server)
    except FleetError as exc:
        print(f"fleet_params: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
