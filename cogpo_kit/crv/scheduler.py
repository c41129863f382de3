"""Running many per-example workflows in rounds, so every engine call is as wide as it can be.

A workflow is a generator: it yields a list of :class:`Call` (role + request) and receives the
completions (one list of ``n`` per call), until it returns its result. ``yield from`` composes
workflows; :func:`gather` runs several side by side.

:class:`Scheduler` advances all workflows together. Where every role is served by one engine that
takes requests while it runs (the llama.cpp back end), it streams: a workflow's next calls join the
running batch as soon as its last ones are answered, so a long generation of one example never
leaves the engine waiting for the rest of a round. Otherwise it works in rounds: each round
collects every pending call of every example and sends them, grouped by engine, in one ``generate``
call per engine. With ``sequential=True`` it is the naive driver instead: one example after
another, one request of one sample at a time.

Workflows are deterministic functions of the completions they receive, and each completion is a
deterministic function of its cache key, so a run replayed from the response cache takes the same
path and writes the same outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Generator, Optional, Sequence

from cogpo_kit.crv.agents import Agents
from cogpo_kit.engines.base import Completion, Request
from cogpo_kit.progress import progress

Results = list[list[Completion]]
Workflow = Generator[list["Call"], Results, Any]


@dataclass(frozen=True)
class Call:
    """One request of one role."""

    role: str
    request: Request


class CRVError(RuntimeError):
    """An agent's engine failed; the message names the roles, the round and what was finished."""


class _WorkflowFailed(Exception):
    """A workflow raised while the engine was running: carried out of the engine unchanged."""


def gather(*workflows: Workflow) -> Workflow:
    """Run workflows side by side; returns their results in order."""
    results: list[Any] = [None] * len(workflows)
    pending: dict[int, list[Call]] = {}
    for i, wf in enumerate(workflows):
        try:
            pending[i] = next(wf)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        order = sorted(pending)
        calls = [c for i in order for c in pending[i]]
        got = yield calls
        pos = 0
        for i in order:
            k = len(pending[i])
            part, pos = got[pos:pos + k], pos + k
            try:
                pending[i] = workflows[i].send(part)
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results


class Scheduler:
    """Drives workflows against :class:`Agents` (round-wide batches, or the naive sequential order)."""

    def __init__(self, agents: Agents, *, logger: Optional[logging.Logger] = None, desc: str = "crv",
                 sequential: bool = False, stream: bool = True):
        self.agents = agents
        self.logger = logger
        self.desc = desc
        self.sequential = sequential
        self.stream = stream
        """Stream where the engine allows it (``False``: always rounds)."""
        self.rounds = 0
        """Rounds sent; when streaming, the longest chain of calls one workflow waited for."""
        self.generate_calls = 0
        self.streamed = False
        """Whether the last :meth:`run` streamed."""

    def _log(self, msg: str, *args) -> None:
        if self.logger:
            self.logger.info(msg, *args)

    def _send(self, calls: Sequence[Call]) -> Results:
        """All calls of a round: one ``generate`` per engine, results back in call order."""
        groups: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            groups.setdefault(self.agents.role(call.role).engine_key, []).append(i)
        out: list[Optional[list[Completion]]] = [None] * len(calls)
        for key, idxs in groups.items():
            roles = sorted({calls[i].role for i in idxs})
            t0 = time.time()
            try:
                got = self.agents.generate(key, [calls[i].request for i in idxs])
            except Exception as exc:
                raise CRVError(
                    f"engine of {'/'.join(roles)} failed in round {self.rounds + 1} on {len(idxs)} requests: "
                    f"{type(exc).__name__}: {exc}. Finished calls are kept in the response cache; rerun the "
                    "same command to continue.") from exc
            self.generate_calls += 1
            samples = sum(calls[i].request.n for i in idxs)
            self._log("round %d: %s: %d requests, %d samples in %.1f s", self.rounds + 1, "/".join(roles),
                      len(idxs), samples, time.time() - t0)
            for i, comps in zip(idxs, got):
                out[i] = comps
        return out  # type: ignore[return-value]

    def _send_one_by_one(self, calls: Sequence[Call]) -> Results:
        out: Results = []
        for call in calls:
            req = call.request
            comps: list[Completion] = []
            for j in range(req.n):
                single = dataclasses.replace(req, n=1, sample_offset=req.sample_offset + j)
                try:
                    comps.extend(self.agents.generate(self.agents.role(call.role).engine_key, [single])[0])
                except Exception as exc:
                    raise CRVError(f"engine of {call.role} failed: {type(exc).__name__}: {exc}") from exc
                self.generate_calls += 1
            out.append(comps)
        return out

    def _stream_key(self) -> Optional[str]:
        """The one engine serving every role, if it takes requests while it runs."""
        keys = {role.engine_key for role in self.agents.roles.values()}
        if self.sequential or not self.stream or len(keys) != 1:
            return None
        key = next(iter(keys))
        return key if self.agents.can_stream(key) else None

    def _run_streaming(self, key: str, workflows: Sequence[Workflow], results: list[Any], bar) -> None:
        waiting: dict[int, list] = {}  # workflow -> [answers so far, calls left]
        depth = [0] * len(workflows)
        owners: list[tuple[int, int]] = []  # request number -> (workflow, call index)
        outgoing: list[Request] = []
        finished = [0]
        step = max(1, len(workflows) // 10)
        t0 = time.time()

        def done(i: int, value: Any) -> None:
            results[i] = value
            bar.update(1)
            finished[0] += 1
            if finished[0] % step == 0 or finished[0] == len(workflows):
                self._log("%d of %d workflows finished, %d requests sent, %.1f s", finished[0], len(workflows),
                          len(owners), time.time() - t0)

        def push(i: int, calls: list[Call]) -> None:
            while not calls:  # nothing asked: answer at once
                try:
                    calls = workflows[i].send([])
                except StopIteration as stop:
                    done(i, stop.value)
                    return
            depth[i] += 1
            waiting[i] = [[None] * len(calls), len(calls)]
            for k, call in enumerate(calls):
                owners.append((i, k))
                outgoing.append(call.request)

        def on_done(n: int, comps: list[Completion]) -> None:
            i, k = owners[n]
            slot = waiting[i]
            slot[0][k] = comps
            slot[1] -= 1
            if slot[1]:
                return
            del waiting[i]
            try:
                try:
                    calls = workflows[i].send(slot[0])
                except StopIteration as stop:
                    done(i, stop.value)
                    return
                push(i, calls)
            except Exception as exc:  # the workflow's own error, not the engine's
                raise _WorkflowFailed(exc) from exc

        def more() -> list[Request]:
            out = outgoing[:]
            outgoing.clear()
            return out

        for i, wf in enumerate(workflows):
            try:
                push(i, next(wf))
            except StopIteration as stop:
                done(i, stop.value)
        try:
            self.agents.stream(key, on_done, more)
        except _WorkflowFailed as failed:
            raise failed.args[0]
        except Exception as exc:
            roles = sorted(self.agents.roles)
            raise CRVError(
                f"engine of {'/'.join(roles)} failed with {len(waiting)} of {len(workflows)} workflows unfinished: "
                f"{type(exc).__name__}: {exc}. Finished calls are kept in the response cache; rerun the "
                "same command to continue.") from exc
        if waiting:
            raise CRVError(f"{len(waiting)} workflows still wait for answers after the engine finished")
        self.generate_calls += 1
        self.rounds = max(depth, default=0)
        self._log("streamed %d requests of %d workflows through one engine call in %.1f s (longest chain %d)",
                  len(owners), len(workflows), time.time() - t0, self.rounds)

    def run(self, workflows: Sequence[Workflow]) -> list[Any]:
        """Run all workflows to completion; their results in order."""
        results: list[Any] = [None] * len(workflows)
        bar = progress(total=len(workflows), desc=self.desc, unit="job")
        key = self._stream_key()
        self.streamed = key is not None
        try:
            if key is not None:
                self._run_streaming(key, workflows, results, bar)
                return results
            if self.sequential:
                for i, wf in enumerate(workflows):
                    try:
                        calls = next(wf)
                        while True:
                            calls = wf.send(self._send_one_by_one(calls))
                    except StopIteration as stop:
                        results[i] = stop.value
                    bar.update(1)
                return results
            pending: dict[int, list[Call]] = {}
            for i, wf in enumerate(workflows):
                try:
                    pending[i] = next(wf)
                except StopIteration as stop:
                    results[i] = stop.value
                    bar.update(1)
            while pending:
                order = sorted(pending)
                calls = [c for i in order for c in pending[i]]
                got = self._send(calls)
                self.rounds += 1
                pos = 0
                for i in order:
                    k = len(pending[i])
                    part, pos = got[pos:pos + k], pos + k
                    try:
                        pending[i] = workflows[i].send(part)
                    except StopIteration as stop:
                        results[i] = stop.value
                        del pending[i]
                        bar.update(1)
                self._log("round %d done: %d workflows finished, %d pending", self.rounds,
                          len(workflows) - len(pending), len(pending))
            return results
        finally:
            bar.close()
