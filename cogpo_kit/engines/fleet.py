"""The servers behind the ``openai`` engine: routing by load, health, ejection, per-server counts.

Pure bookkeeping, no I/O: the clock is passed in (``now``, seconds), so every rule can be unit-tested;
:mod:`cogpo_kit.engines.openai_http` sends the requests and the health checks.

- **Routing.** :meth:`Fleet.pick` gives the server in rotation with the fewest requests in flight
  (ties: the one picked least recently), avoiding the server an attempt just failed on when another is
  in rotation. With none in rotation it gives the ejected server due back first: requests are never
  held back, their own retries and backoff still apply (one server that is down fails as before).
- **Ejection.** A server leaves rotation after a refused connection, after ``eject_after`` failed
  attempts in a row (timeouts, 5xx, dropped connections, malformed answers; 429 and the other "busy"
  statuses are back-pressure, not failures), or after a failed health check. It is checked again
  ``eject_s`` later, then after twice as long each time the check fails (up to ``eject_max_s``); a passed
  check puts it back in rotation. An answer from it clears its failures and its backoff.
- **Moving work.** A failed health check (:meth:`Fleet.check_done`) returns the attempts in flight on
  that server when another server is in rotation: the engine cancels them and sends them elsewhere (each
  finished as ``moved``; one answered just before counts as answered). A server that died has failed
  them already (each retries elsewhere); one that merely failed some requests keeps the others running
  until a check finds it gone or hung.
- **Health.** A server in rotation that has answered nothing for ``health_interval_s`` is due a check
  (:meth:`Fleet.checks_due`), as is an ejected one whose time has come.
- **Counts.** :meth:`Fleet.stats` gives per server: attempts sent, answered, failed, moved away,
  throttled (busy statuses), prompt and completion tokens, seconds spent in requests, the most in
  flight at once, ejections and health checks.

    fleet = Fleet(["http://a:8000/v1", "http://b:8000/v1"])
    url = fleet.pick(now)
    fleet.start(url, ticket, now)
    ...
    fleet.finish(url, ticket, now, "ok", prompt_tokens=120, completion_tokens=9)
    for url in fleet.checks_due(now): ...   # GET /health, then fleet.check_done(url, now, ok)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Hashable, Iterable, Literal, Optional, Sequence

Outcome = Literal["ok", "answered", "throttled", "failed", "refused", "moved"]
"""How an attempt ended: ``ok`` (a good answer), ``answered`` (a 4xx answer, recorded as an error
completion: the server is fine), ``throttled`` (429 and other busy statuses), ``failed`` (timeout,
5xx, dropped connection, malformed answer), ``refused`` (no connection: the server is down) or
``moved`` (cancelled to be sent elsewhere after a failed health check, see :meth:`Fleet.check_done`)."""

OUTCOMES = ("ok", "answered", "throttled", "failed", "refused", "moved")


@dataclass
class ServerStats:
    """What one server did for the engine (since it was built)."""

    requests: int = 0
    """Attempts sent to it."""
    ok: int = 0
    """Attempts it answered with a usable completion."""
    answered_errors: int = 0
    """Attempts it answered with a client error (4xx), recorded as error completions."""
    errors: int = 0
    """Attempts that failed on it (timeouts, 5xx, dropped or refused connections, malformed answers)."""
    throttled: int = 0
    """Attempts it turned away as busy (429, 408, 409, 425): retried, not held against it."""
    moved: int = 0
    """Attempts in flight on it when it left rotation, cancelled and sent to other servers."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    """Time its attempts took, summed (attempts overlap: this exceeds wall time when they do)."""
    max_in_flight: int = 0
    """The most attempts in flight on it at once."""
    ejections: int = 0
    """Times it was taken out of rotation."""
    health_checks: int = 0
    health_failures: int = 0
    last_error: str = ""
    """Why its last failed attempt or check failed."""


@dataclass
class _Server:
    url: str
    index: int
    in_flight: dict = field(default_factory=dict)
    """Ticket -> start time of the attempts in flight on it."""
    in_rotation: bool = True
    failures: int = 0
    """Failed attempts in a row."""
    backoff: int = 0
    """Failed re-admission checks since it was ejected (the next wait doubles with each)."""
    retry_at: float = 0.0
    """When an ejected server is checked again."""
    last_ok: float = 0.0
    """Last answer or passed check (a server in rotation is checked after ``health_interval_s`` without one)."""
    last_check: float = float("-inf")
    checking: bool = False
    last_pick: int = -1
    stats: ServerStats = field(default_factory=ServerStats)


class Fleet:
    """Load, health and counts of the servers behind one engine."""

    def __init__(self, urls: Sequence[str], *, eject_after: int = 3, eject_s: float = 5.0,
                 eject_max_s: float = 120.0, health_interval_s: float = 30.0, now: float = 0.0):
        urls = list(urls)
        if not urls:
            raise ValueError("a fleet needs at least one server URL")
        if len(set(urls)) != len(urls):
            dup = next(u for u in urls if urls.count(u) > 1)
            raise ValueError(f"server URL {dup} is listed twice")
        if eject_after < 1:
            raise ValueError(f"eject_after must be >= 1, got {eject_after}")
        self.eject_after = int(eject_after)
        self.eject_s = float(eject_s)
        self.eject_max_s = float(eject_max_s)
        self.health_interval_s = float(health_interval_s)
        self.servers = {u: _Server(u, k, last_ok=now) for k, u in enumerate(urls)}
        self._picks = 0
        self._where: dict[Hashable, str] = {}

    # -- routing ------------------------------------------------------------------------------
    def in_rotation(self, url: str) -> bool:
        return self.servers[url].in_rotation

    def rotation(self) -> list[str]:
        """The servers in rotation, in the order given."""
        return [s.url for s in self.servers.values() if s.in_rotation]

    def pick(self, now: float, avoid: Optional[str] = None) -> str:
        """The server for the next attempt: fewest in flight in rotation (``avoid`` only if it is the
        only one); with none in rotation, the ejected server due back first."""
        live = [s for s in self.servers.values() if s.in_rotation]
        if avoid is not None and len(live) > 1:
            live = [s for s in live if s.url != avoid] or live
        if live:
            best = min(live, key=lambda s: (len(s.in_flight), s.last_pick, s.index))
        else:
            best = min(self.servers.values(), key=lambda s: (s.retry_at, len(s.in_flight), s.index))
        self._picks += 1
        best.last_pick = self._picks
        return best.url

    def load(self) -> dict[str, int]:
        """Attempts in flight per server."""
        return {u: len(s.in_flight) for u, s in self.servers.items()}

    # -- attempts -----------------------------------------------------------------------------
    def start(self, url: str, ticket: Hashable, now: float) -> None:
        """An attempt (``ticket``, unique) is sent to ``url``."""
        s = self.servers[url]
        if ticket in self._where:
            raise ValueError(f"attempt {ticket!r} is already in flight on {self._where[ticket]}")
        s.in_flight[ticket] = now
        self._where[ticket] = url
        s.stats.requests += 1
        s.stats.max_in_flight = max(s.stats.max_in_flight, len(s.in_flight))

    def finish(self, url: str, ticket: Hashable, now: float, outcome: Outcome, *, prompt_tokens: int = 0,
               completion_tokens: int = 0, error: str = "") -> bool:
        """Attempt ``ticket`` on ``url`` ended with ``outcome``; returns whether this took the server out of
        rotation. An attempt already finished or dropped is not counted again."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r} (one of {', '.join(OUTCOMES)})")
        s = self.servers[url]
        started = s.in_flight.pop(ticket, None)
        if started is None:
            return False
        self._where.pop(ticket, None)
        st = s.stats
        st.seconds += max(0.0, now - started)
        if outcome in ("ok", "answered"):
            st.ok += outcome == "ok"
            st.answered_errors += outcome == "answered"
            st.prompt_tokens += int(prompt_tokens)
            st.completion_tokens += int(completion_tokens)
            s.failures, s.backoff, s.last_ok = 0, 0, max(s.last_ok, now)
            s.in_rotation = True  # it answers: back in rotation without waiting for its check
            return False
        if outcome == "throttled":
            st.throttled += 1
            return False
        if outcome == "moved":
            st.moved += 1
            return False
        st.errors += 1
        st.last_error = error
        s.failures += 1
        if s.in_rotation and (outcome == "refused" or s.failures >= self.eject_after):
            self.eject(url, now, error)
            return True
        return False

    def drop(self, url: str, ticket: Hashable) -> None:
        """Forget attempt ``ticket`` without counting it (cancelled because its batch stopped)."""
        if self.servers[url].in_flight.pop(ticket, None) is not None:
            self._where.pop(ticket, None)

    def eject(self, url: str, now: float, reason: str = "") -> None:
        """Take ``url`` out of rotation; it is checked again after its backoff."""
        s = self.servers[url]
        if s.in_rotation:
            s.in_rotation = False
            s.stats.ejections += 1
            s.retry_at = now + self._backoff(s)
        if reason:
            s.stats.last_error = reason

    def to_move(self, url: str) -> list[Hashable]:
        """The attempts in flight on ``url`` when another server is in rotation to take them (the engine
        cancels them, finishes each as ``moved`` and sends it elsewhere); with no other server, none."""
        s = self.servers[url]
        if not any(o.in_rotation for o in self.servers.values() if o is not s):
            return []
        return list(s.in_flight)

    def _backoff(self, s: _Server) -> float:
        return min(self.eject_max_s, self.eject_s * (2 ** s.backoff))

    # -- health -------------------------------------------------------------------------------
    def checks_due(self, now: float) -> list[str]:
        """Servers to check now: ejected ones whose wait is over, and ones in rotation that have answered
        nothing for ``health_interval_s`` (and were not checked in that time). Each is marked as being
        checked until :meth:`check_done`."""
        due = []
        for s in self.servers.values():
            if s.checking:
                continue
            if s.in_rotation:
                quiet = self.health_interval_s > 0 and now - max(s.last_ok, s.last_check) >= self.health_interval_s
                if not quiet:
                    continue
            elif now < s.retry_at:
                continue
            s.checking = True
            s.last_check = now
            due.append(s.url)
        return due

    def next_check_at(self) -> Optional[float]:
        """When the next check falls due (``None``: none planned)."""
        times = []
        for s in self.servers.values():
            if s.checking:
                continue
            if not s.in_rotation:
                times.append(s.retry_at)
            elif self.health_interval_s > 0:
                times.append(max(s.last_ok, s.last_check) + self.health_interval_s)
        return min(times) if times else None

    def check_done(self, url: str, now: float, ok: bool, detail: str = "") -> list[Hashable]:
        """A health check of ``url`` passed (``ok``) or failed. A passed check puts an ejected server back.
        A failed one ejects a server in rotation or doubles an ejected one's wait, and returns the attempts
        in flight there to move elsewhere (:meth:`to_move`)."""
        s = self.servers[url]
        s.checking = False
        s.stats.health_checks += 1
        if ok:
            s.last_ok = max(s.last_ok, now)
            if not s.in_rotation:
                s.in_rotation, s.failures = True, 0
            return []
        s.stats.health_failures += 1
        if s.in_rotation:
            self.eject(url, now, f"health check: {detail}")
        else:
            s.backoff += 1
            s.retry_at = now + self._backoff(s)
            s.stats.last_error = f"health check: {detail}"
        return self.to_move(url)

    # -- counts -------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict]:
        """Per server (in the order given): its :class:`ServerStats` as a dict, plus ``in_rotation``."""
        out = {}
        for u, s in self.servers.items():
            row = asdict(s.stats)
            row["seconds"] = round(row["seconds"], 3)
            row["in_rotation"] = s.in_rotation
            out[u] = row
        return out


def fleet_totals(stats: dict[str, dict], keys: Iterable[str] = ("requests", "ok", "answered_errors", "errors",
                                                                   "throttled", "moved", "prompt_tokens",
                                                                   "completion_tokens", "ejections")) -> dict:
    """Sums of :meth:`Fleet.stats` over servers."""
    return {k: sum(int(row.get(k, 0)) for row in stats.values()) for k in keys}
