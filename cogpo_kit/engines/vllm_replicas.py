"""Data-parallel vLLM replicas: one offline ``vllm.LLM`` per process, each on its own GPUs.

``vllm.LLM`` starts processes of its own (the engine core, tensor-parallel workers), so a replica
must be allowed children: replicas are non-daemon processes of the ``spawn`` context (CUDA cannot
be used after ``fork``). A replica that fails to start sends its traceback, which becomes the
engine's :class:`EngineError`; one that dies silently is reported with its exit code. Each call
reads the reply of every replica it was sent to before raising, so no reply is left to pair with
the next batch. Replicas stop when the engine closes, when this process exits (they would
otherwise keep it waiting in ``multiprocessing``'s exit join), or when this process dies (their
pipe closes).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import multiprocessing.util  # noqa: F401  (its exit handler must be registered before ours)
import os
import traceback
from typing import Any, Sequence

from cogpo_kit.engines.base import EngineError

POLL_S = 0.5
JOIN_S = 30.0


def replica_main(rank: int, gpus: str, kwargs: dict, conn) -> None:  # pragma: no cover - child process
    """A replica: build the ``LLM``, then serve calls until ``None`` or the parent is gone."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        import vllm

        from cogpo_kit.engines.vllm_calls import run_call

        llm = vllm.LLM(**kwargs)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    conn.send(("ready", None))
    while True:
        try:
            call = conn.recv()
        except (EOFError, OSError):
            break
        if call is None:
            break
        try:
            reply: tuple = ("ok", run_call(llm, vllm, call))
        except BaseException:
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    conn.close()


def _receive(proc, conn, rank: int, what: str) -> tuple[str, Any]:
    """The next message of replica ``rank``, or ``("error", why)`` if it died first."""
    while True:
        try:
            if conn.poll(POLL_S):
                return conn.recv()
        except (EOFError, OSError):
            break
        if not proc.is_alive():
            try:
                if conn.poll(0):
                    return conn.recv()
            except (EOFError, OSError):
                pass
            break
    proc.join(1.0)
    return "error", (f"the process exited with code {proc.exitcode} {what} without a reply (out of GPU "
                     f"memory, killed, or a crash in native code; see its output above)")


def _stop(procs: list, conns: list) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(JOIN_S)
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
    for conn in conns:
        try:
            conn.close()
        except OSError:
            pass


class Replicas:
    """``len(gpu_groups)`` replica processes serving ``vllm.LLM(**kwargs)``."""

    def __init__(self, kwargs: dict, gpu_groups: Sequence[str], *, context: str = "spawn"):
        ctx = mp.get_context(context)
        self._procs: list = []
        self._conns: list = []
        self._broken: str = ""
        atexit.register(self.close)
        try:
            for rank, gpus in enumerate(gpu_groups):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=replica_main, args=(rank, gpus, kwargs, child), daemon=False,
                                   name=f"vllm-replica-{rank}")
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            failures = []
            for rank, (proc, conn) in enumerate(zip(self._procs, self._conns)):
                status, detail = _receive(proc, conn, rank, "while starting")
                if status != "ready":
                    failures.append(f"replica {rank} (GPUs {gpu_groups[rank]}): {detail}")
            if failures:
                raise EngineError("vllm: data-parallel replicas failed to start:\n" + "\n".join(failures))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._procs)

    def run(self, shards: Sequence[Any]) -> list[list]:
        """Send ``shards[r]`` to replica ``r`` (empty shards are not sent); every reply is read before
        a failure is raised."""
        if self._broken:
            raise EngineError(f"vllm: the data-parallel replicas are unusable: {self._broken}")
        if len(shards) != len(self._procs):
            raise ValueError(f"{len(shards)} shards for {len(self._procs)} replicas")
        sent, failures = [], []
        for rank, (conn, shard) in enumerate(zip(self._conns, shards)):
            if not shard.prompts:
                continue
            try:
                conn.send(shard)
                sent.append(rank)
            except (OSError, ValueError) as exc:
                failures.append(f"replica {rank}: cannot send the batch ({exc})")
                self._broken = f"replica {rank} is gone"
        outs: list[list] = [[] for _ in shards]
        for rank in sent:
            status, out = _receive(self._procs[rank], self._conns[rank], rank, "during a batch")
            if status == "ok":
                outs[rank] = out
            else:
                failures.append(f"replica {rank}: {out}")
                if not self._procs[rank].is_alive():
                    self._broken = f"replica {rank} exited"
        if failures:
            raise EngineError("vllm: data-parallel batch failed:\n" + "\n".join(failures))
        return outs

    def close(self) -> None:
        """Stop every replica (idempotent)."""
        procs, conns = self._procs, self._conns
        self._procs, self._conns = [], []
        if procs or conns:
            _stop(procs, conns)
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
