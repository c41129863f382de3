"""The CRV agents: each role's engine, sampling and prompt, and the counters of what they were asked.

Roles: ``critic``, ``expand`` (Rethinker on easy CoTs), ``simplify`` (Rethinker on hard CoTs),
``verifier``, ``corrupt`` (Rethinker writing incorrect CoTs) and ``student`` (the ``student_solve``
Verifier mode). Roles with the same engine settings share one engine instance; the scheduler sends
all of a round's requests for one engine in one ``generate`` call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from cogpo_kit.crv.config import AgentParams, CRVParams
from cogpo_kit.crv.prompts import CRITIC_LABELS, VERIFIER_LABELS, build_messages
from cogpo_kit.engines.base import Completion, EngineError, Request, TagStats, capabilities_of
from cogpo_kit.engines.config import SamplingParams
from cogpo_kit.io import stable_hash

ROLES = ("critic", "expand", "simplify", "verifier", "corrupt", "student")
LABELS = {"critic": CRITIC_LABELS, "verifier": VERIFIER_LABELS}


@dataclass(frozen=True)
class Role:
    """How one role asks its engine."""

    name: str
    engine_key: str
    sampling: SamplingParams
    system_prompt: Optional[str] = None
    user_template: Optional[str] = None
    constrained: bool = True
    max_reasks: int = 2
    think_end: str = "</think>"
    thinks: bool = False
    """A reasoning model (its engine names ``thinking_end``): its outputs must close their thinking."""

    @property
    def choices(self) -> Optional[tuple[str, ...]]:
        return LABELS.get(self.name)

    def messages(self, *, problem: str, answer: str, reasoning: str) -> tuple[dict, ...]:
        return build_messages(self.name, problem=problem, answer=answer, reasoning=reasoning,
                              system_prompt=self.system_prompt, user_template=self.user_template)

    def request(self, messages: tuple[dict, ...], *, n: int = 1, sample_offset: int = 0,
                free: bool = False, tag: Optional[str] = None) -> Request:
        """A request of this role; label roles are constrained unless ``free`` or configured off."""
        choices = self.choices if (self.constrained and not free) else None
        return Request(messages=messages, sampling=self.sampling, n=n, choices=choices,
                       sample_offset=sample_offset, tag=tag or self.name)


@dataclass
class TagCounter:
    """What one tag (role) was asked and got."""

    requests: int = 0
    samples: int = 0
    cached: int = 0
    errors: int = 0
    empty: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completions: Sequence[Completion]) -> None:
        self.requests += 1
        for c in completions:
            self.samples += 1
            self.cached += int(bool(c.cached))
            self.errors += int(c.finish_reason == "error")
            self.empty += int(c.finish_reason == "empty")
            self.prompt_tokens += int(c.prompt_tokens or 0)
            self.completion_tokens += int(c.completion_tokens or 0)


@dataclass
class Agents:
    """Roles, the engines serving them, and per-tag counters."""

    roles: dict[str, Role]
    engines: dict[str, Any]
    counters: dict[str, TagCounter] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    """Engine keys this object built and closes (engines passed in belong to the caller)."""

    def role(self, name: str) -> Role:
        if name not in self.roles:
            raise KeyError(f"CRV role '{name}' has no engine in this stage (have: {', '.join(self.roles)})")
        return self.roles[name]

    def generate(self, engine_key: str, requests: Sequence[Request]) -> list[list[Completion]]:
        """One ``generate`` call on one engine; checks the answer's shape and counts it per tag."""
        engine = self.engines[engine_key]
        out = engine.generate(list(requests))
        if len(out) != len(requests):
            raise EngineError(f"engine {getattr(engine, 'name', '?')} ({getattr(engine, 'model_id', '?')}) "
                              f"returned {len(out)} results for {len(requests)} requests")
        for req, comps in zip(requests, out):
            if len(comps) != req.n:
                raise EngineError(f"engine {getattr(engine, 'name', '?')} returned {len(comps)} samples for a "
                                  f"request with n={req.n} (tag {req.tag})")
            self.counters.setdefault(req.tag, TagCounter()).add(comps)
        return out

    def can_stream(self, engine_key: str) -> bool:
        """Whether the engine takes requests while it runs (:meth:`stream`)."""
        return capabilities_of(self.engines[engine_key]).streams_requests

    def stream(self, engine_key: str, on_done: Callable[[int, list[Completion]], None],
               more: Callable[[], Sequence[Request]]) -> None:
        """Requests from ``more()`` through one running engine; ``on_done(i, completions)`` for the
        ``i``-th request as soon as it is answered (checked and counted per tag, as in :meth:`generate`)."""
        engine = self.engines[engine_key]
        asked: list[Request] = []

        def feed() -> list[Request]:
            new = list(more())
            asked.extend(new)
            return new

        def done(i: int, comps: list[Completion]) -> None:
            req = asked[i]
            if len(comps) != req.n:
                raise EngineError(f"engine {getattr(engine, 'name', '?')} returned {len(comps)} samples for a "
                                  f"request with n={req.n} (tag {req.tag})")
            self.counters.setdefault(req.tag, TagCounter()).add(comps)
            on_done(i, comps)

        engine.stream([], done, feed)

    def engine_stats(self) -> dict[str, dict]:
        """``stats_by_tag()`` of the cached engines, merged over engines."""
        merged: dict[str, dict] = {}
        for engine in self.engines.values():
            if not isinstance(engine, TagStats):
                continue
            for tag, stats in engine.stats_by_tag().items():
                slot = merged.setdefault(tag, {})
                for k, v in stats.items():
                    if isinstance(v, (int, float)):
                        slot[k] = slot.get(k, 0) + v
        return merged

    def fleet_stats(self) -> dict[str, dict]:
        """Per-server counts of the engines that spread requests over servers (``openai``: attempts,
        answers, errors, tokens, time per base URL), keyed by model id."""
        out: dict[str, dict] = {}
        for engine in self.engines.values():
            stats = getattr(getattr(engine, "backend", engine), "fleet_stats", None)
            if not callable(stats):
                continue
            name = str(getattr(engine, "model_id", "?"))
            key, k = name, 2
            while key in out:  # two engines of one model with other settings
                key, k = f"{name}#{k}", k + 1
            out[key] = stats()
        return out

    def counter_dict(self) -> dict[str, dict]:
        return {tag: dataclasses.asdict(c) for tag, c in sorted(self.counters.items())}

    def close(self) -> None:
        for key in self.owned:
            engine = self.engines[key]
            try:
                engine.close()
            except Exception:  # closing must not hide the stage's own outcome
                pass


def _seeded(sampling: SamplingParams, run_seed: int) -> SamplingParams:
    """An agent's seed: its own when set (non-zero), else the run's seed."""
    return sampling if sampling.seed else dataclasses.replace(sampling, seed=run_seed)


def role_configs(crv: CRVParams) -> dict[str, AgentParams]:
    """Each Rethinker/Verifier/Critic role's :class:`AgentParams` (``simplify``/``corrupt`` fall back to the
    Rethinker's engine and sampling, with their own paper prompt)."""
    base = dataclasses.replace(crv.rethinker, system_prompt=None, user_template=None)
    return {
        "critic": crv.critic,
        "expand": crv.rethinker,
        "simplify": crv.simplifier or base,
        "verifier": crv.verifier,
        "corrupt": crv.corrupter or base,
    }


def make_roles(crv: CRVParams, *, run_seed: int, engine_keys: dict[str, str],
               student_sampling: Optional[SamplingParams] = None,
               student_think_end: Optional[str] = None) -> dict[str, Role]:
    """Roles named in ``engine_keys`` (role -> engine key)."""
    configs = role_configs(crv)
    roles = {}
    for name, key in engine_keys.items():
        if name == "student":
            roles[name] = Role(name="student", engine_key=key,
                               sampling=_seeded(student_sampling or SamplingParams(), run_seed),
                               constrained=False, max_reasks=0, think_end=student_think_end or "</think>")
            continue
        cfg = configs[name]
        roles[name] = Role(name=name, engine_key=key, sampling=_seeded(cfg.sampling, run_seed),
                           system_prompt=cfg.system_prompt, user_template=cfg.user_template,
                           constrained=cfg.constrained, max_reasks=cfg.max_reasks,
                           think_end=cfg.engine.thinking_end or "</think>", thinks=bool(cfg.engine.thinking_end))
    return roles


def roles_needed(crv: CRVParams, stage: str) -> tuple[str, ...]:
    """Roles a stage calls under ``crv`` (``critique`` or ``rethink``)."""
    if stage == "critique":
        return ("critic",)
    verify = "student" if crv.verifier_mode == "student_solve" else "verifier"
    roles = ["corrupt"] if crv.incorrect_cots else []
    if crv.ablation == "CRV":  # re-rating verified rewrites
        roles.insert(0, "critic")
    if crv.ablation != "C":
        roles += ["expand", "simplify"]
    needs_verify = (crv.ablation == "CRV") or (crv.incorrect_cots and crv.incorrect_check == "verifier_no")
    if needs_verify:
        roles.append(verify)
    if crv.free_label_probe and crv.verifier_mode == "judge" and crv.verifier.constrained and "verifier" not in roles:
        roles.append("verifier")
    return tuple(roles)


def build_agents(params, stage: str, *, engines: Optional[dict[str, Any]] = None) -> Agents:
    """Agents of ``stage`` from run params, each engine built once by ``build_engine`` (with its cache).

    ``engines`` (role -> engine) replaces building for the roles it names (tests, benchmarks).
    """
    crv: CRVParams = params.crv
    configs = role_configs(crv)
    names = roles_needed(crv, stage)
    default_cache = str(Path(params.run.output_dir) / "cache" / "responses.sqlite")
    built: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for name in names:
        if engines and name in engines:
            key = f"given:{name}:{id(engines[name])}"
            built.setdefault(key, engines[name])
            keys[name] = key
            continue
        if name == "student":
            cfg, model = params.student.engine, params.student.model
        else:
            cfg, model = configs[name].engine, configs[name].engine.model
        cache_path = cfg.cache.path or default_cache
        key = stable_hash({"engine": dataclasses.asdict(cfg), "model": model, "cache": cache_path})
        if key not in built:
            from cogpo_kit.engines import build_engine

            try:
                built[key] = build_engine(cfg, cache_path=cache_path, model=model)
            except BaseException:
                for k, eng in built.items():  # do not leave the engines already loaded open
                    if not k.startswith("given:"):
                        eng.close()
                raise
        keys[name] = key
    # one engine object may serve several roles: key by identity so a round sends it one call
    by_id: dict[int, str] = {}
    engines_out: dict[str, Any] = {}
    for name, key in keys.items():
        eng = built[key]
        k = by_id.setdefault(id(eng), key)
        engines_out[k] = eng
        keys[name] = k
    roles = make_roles(crv, run_seed=params.run.seed, engine_keys=keys,
                       student_sampling=params.student.sampling,
                       student_think_end=params.student.engine.thinking_end)
    owned = {k for k in engines_out if not k.startswith("given:")}
    return Agents(roles=roles, engines=engines_out, owned=owned)


def agents_on(engine: Any, crv: CRVParams, *, run_seed: int = 0, roles: Iterable[str] = ROLES,
              student_sampling: Optional[SamplingParams] = None) -> Agents:
    """All ``roles`` served by one engine (tests, benchmarks, the Table 1 study)."""
    keys = {name: "engine" for name in roles}
    return Agents(roles=make_roles(crv, run_seed=run_seed, engine_keys=keys, student_sampling=student_sampling),
                  engines={"engine": engine})
