"""Several models on one base in one transformers engine: the student and the LoRA adapter chains trained on it
generate in shared batches, with one model load.

The evaluate stage's models are mostly one base (``zero_shot``) and LoRA adapters on it, or on an adapter on it
(``cogpo`` on ``crv_sft``). :func:`shared_groups` finds the models that can share a base: the same base
folder, the same tokenizer files, every adapter plain LoRA (:mod:`cogpo_kit.models.lora_fold`).
:class:`SharedBaseEngine` loads that base once, stacks every adapter's update on it and serves each model's
requests with the rows of all models in the same batches (``batch_size`` rows per model); each row gets its
own model's update. Per model the results are what that model's own engine returns, up to rounding (the base
weights are not merged with the update, and the batch holds other rows).

:func:`generate_shared` runs it under the response cache: each model has its own
:class:`~cogpo_kit.engines.cache.CachedEngine` (same cache keys, counters and streaming storage as the model's
own engine), over a view of the shared engine; the views' calls meet (one thread per model) and go to the
shared engine as one call.

Run the tests with ``.venv/bin/pytest -q tests/test_engines_hf_batching.py``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, EngineCapabilities, EngineError, Request
from cogpo_kit.engines.config import EngineParams
from cogpo_kit.engines.hf import TransformersEngine

_log = logging.getLogger("cogpo_kit.engines.transformers")


def share_key(spec: str) -> Optional[tuple[str, str]]:
    """``(base folder, tokenizer digest)`` of a model that can share a base with others, or ``None``: a model
    the kit cannot read (a hub id without a snapshot, a GGUF file), or an adapter that is not plain LoRA."""
    from cogpo_kit.models.adapters import TOKENIZER_FILES, file_fingerprint, tokenizer_path
    from cogpo_kit.models.lora_fold import NotFoldable, base_of, check_adapter
    from cogpo_kit.models.specs import ModelNotFoundError, plain_hf_path

    try:
        base, folders = base_of(spec)
        for f in folders:
            check_adapter(f)
        base_dir = Path(plain_hf_path(base))
        tok_dir = Path(tokenizer_path(spec))
    except (ModelNotFoundError, NotFoldable, OSError, ValueError) as exc:
        _log.info("transformers: %s is served on its own (%s)", spec, exc)
        return None
    if not (base_dir / "config.json").is_file() or not tok_dir.is_dir():
        return None
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            h.update(f"{name}\t{file_fingerprint(tok_dir / name)}\n".encode())
    return str(base_dir.resolve()), h.hexdigest()


def shared_groups(specs: dict[str, str]) -> list[list[str]]:
    """The names (of ``{name: spec}``) that can share one base, as groups of two or more, in the given order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, spec in specs.items():
        key = share_key(spec)
        if key is not None:
            groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


class SharedBaseEngine(TransformersEngine):
    """A :class:`~cogpo_kit.engines.hf.TransformersEngine` holding one base model and the stacked LoRA updates of
    several models on it (``specs``: the base itself and/or adapter folders whose chains end at it).

    ``generate_for(requests, models)`` serves requests of any of the models in the same batches
    (``models[i]``: the index in ``specs`` of request ``i``'s model); ``batch_size`` is per model, so a batch
    holds up to ``batch_size * len(specs)`` rows.
    """

    def __init__(self, config: EngineParams, specs: Sequence[str]):
        from cogpo_kit.models.lora_fold import LoraBank, base_of, install
        from cogpo_kit.models.resolve import load_tokenizer, resolve

        keys = {share_key(s) for s in specs}
        if len(keys) != 1 or None in keys:
            raise EngineError(f"transformers: models {list(specs)} do not share one base folder and tokenizer, "
                              "with plain LoRA adapters")
        chains = [base_of(s) for s in specs]
        self.specs = list(specs)
        super().__init__(replace(config, model=chains[0][0], batch_size=max(1, int(config.batch_size)) * len(specs)))
        self.tok = load_tokenizer(specs[0])
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.bank = LoraBank(self.model, [folders for _, folders in chains])
        self.row_models = install(self.model, self.bank)
        self.model_ids = [f"transformers:{resolve(s).identity}" for s in specs]
        self.model_id = self.model_ids[0]

    def generate_for(self, requests: Sequence[Request], models: Sequence[int],
                     on_result: Optional[Callable[[int, int, Completion], None]] = None) -> list[list[Completion]]:
        """Serve requests of several models in shared batches (``models[i]``: request ``i``'s model)."""
        if len(models) != len(requests) or any(not 0 <= m < len(self.specs) for m in models):
            raise EngineError(f"transformers: {len(requests)} requests need a model index each in "
                              f"0..{len(self.specs) - 1}")
        with self._lock:
            return self._generate(list(requests), on_result, models=list(models))


class _Meeting:
    """Where the models' calls meet: each model's thread hands in its back-end call (or says it needs none);
    once every model has, the calls run as one and each thread gets its own results back."""

    def __init__(self, n: int):
        self.n = n
        self.cond = threading.Condition()
        self.calls: dict[int, tuple[list[Request], Optional[Callable]]] = {}
        self.done: set[int] = set()
        self.results: dict[int, list[list[Completion]]] = {}
        self.error: Optional[BaseException] = None

    def call(self, k: int, requests: list[Request], on_result) -> list[list[Completion]]:
        with self.cond:
            self.calls[k] = (requests, on_result)
            self.cond.notify_all()
            while k not in self.results and self.error is None:
                self.cond.wait()
            if k not in self.results:
                raise EngineError(f"transformers: the shared batch failed: {self.error}") from self.error
            return self.results.pop(k)

    def leave(self, k: int) -> None:
        with self.cond:
            self.done.add(k)
            self.cond.notify_all()

    def gathered(self) -> dict[int, tuple[list[Request], Optional[Callable]]]:
        """Wait until every model has handed in its call or left; the calls handed in."""
        with self.cond:
            while len(set(self.calls) | self.done) < self.n:
                self.cond.wait()
            return dict(self.calls)

    def answer(self, results: dict[int, list[list[Completion]]], error: Optional[BaseException] = None) -> None:
        with self.cond:
            self.results.update(results)
            self.error = error
            self.cond.notify_all()


class _ModelView:
    """One model of a :class:`SharedBaseEngine` as a back end (for its own response cache)."""

    name = "transformers"
    capabilities = EngineCapabilities(streams_results=True)

    def __init__(self, engine: SharedBaseEngine, k: int, meeting: _Meeting):
        self.engine, self.k, self.meeting = engine, k, meeting
        self.model_id = engine.model_ids[k]
        self.prompt_truncations: dict[str, int] = {}

    def generate(self, requests: Sequence[Request], on_result=None) -> list[list[Completion]]:
        return self.meeting.call(self.k, list(requests), on_result)

    def close(self) -> None:
        pass


def generate_shared(config: EngineParams, specs: Sequence[str], requests: Sequence[Sequence[Request]], *,
                    cache_path: Optional[str] = None, show_progress: bool = True,
                    logger: Optional[logging.Logger] = None) -> list[tuple[list[list[Completion]], dict, str]]:
    """Serve ``requests[k]`` with model ``specs[k]``, all models on one base in shared batches, each under its
    own response cache entry (as :func:`~cogpo_kit.engines.build_engine` would); returns, per model,
    ``(completions, counters by tag, model id)``."""
    from cogpo_kit.engines import DEFAULT_CACHE, cache_key_extra
    from cogpo_kit.engines.cache import CachedEngine

    engine = SharedBaseEngine(config, specs)
    if logger is not None:
        engine.logger = logger
    meeting = _Meeting(len(specs))
    path = config.cache.path or cache_path or str(DEFAULT_CACHE)
    cached = [CachedEngine(_ModelView(engine, k, meeting), path, enabled=config.cache.enabled,
                           clear=config.cache.clear, key_extra=cache_key_extra(config), show_progress=False,
                           retry_truncated=config.cache.retry_truncated) for k in range(len(specs))]
    outs: dict[int, list[list[Completion]]] = {}
    errors: dict[int, BaseException] = {}

    def serve(k: int) -> None:
        try:
            outs[k] = cached[k].generate(requests[k])
        except BaseException as exc:  # handed to the caller below
            errors[k] = exc
        finally:
            meeting.leave(k)

    threads = [threading.Thread(target=serve, args=(k,), name=f"shared-model-{k}", daemon=True)
               for k in range(len(specs))]
    try:
        for t in threads:
            t.start()
        calls = meeting.gathered()
        results: dict[int, list[list[Completion]]] = {}
        error: Optional[BaseException] = None
        if calls:
            try:
                results = _run_calls(engine, calls, show_progress)
            except BaseException as exc:
                error = exc
        meeting.answer(results, error)
        for t in threads:
            t.join()
        if error is not None:
            raise error
        if errors:
            k = min(errors)
            raise errors[k]
        for (k, tag), count in engine.prompt_truncations.items():
            cached[k].backend.prompt_truncations[tag] = count
        return [(outs[k], cached[k].stats_by_tag(), engine.model_ids[k]) for k in range(len(specs))]
    finally:
        for c in cached:
            c.close()
        engine.close()


def _run_calls(engine: SharedBaseEngine, calls: dict[int, tuple[list[Request], Optional[Callable]]],
               show_progress: bool) -> dict[int, list[list[Completion]]]:
    """The models' back-end calls as one call of the shared engine; results per model."""
    from cogpo_kit.progress import progress

    flat: list[Request] = []
    models: list[int] = []
    owner: list[tuple[int, int]] = []
    for k, (reqs, _cb) in sorted(calls.items()):
        for i, r in enumerate(reqs):
            flat.append(r)
            models.append(k)
            owner.append((k, i))
    bar = progress(total=sum(r.n for r in flat), desc=f"transformers, {len(calls)} models in shared batches",
                   unit="sample") if show_progress else None

    def on_result(i: int, j: int, c: Completion) -> None:
        k, local = owner[i]
        cb = calls[k][1]
        if cb is not None:
            cb(local, j, c)
        if bar is not None:
            bar.update(1)

    try:
        out = engine.generate_for(flat, models, on_result=on_result)
    finally:
        if bar is not None:
            bar.close()
    by_model: dict[int, list[list[Completion]]] = {k: [] for k in calls}
    for (k, _local), comps in zip(owner, out):
        by_model[k].append(comps)
    return by_model


@dataclass(frozen=True)
class SharedResult:
    """One model's part of a shared run (:func:`generate_grouped`)."""

    completions: list
    """One list of completions per request, as the model's own engine returns them."""
    stats: dict
    """The model's response-cache counters by tag."""
    model_id: str
    """The model's identity in the response cache (the one its own engine has)."""
    seconds: float
    """The model's share of the group's wall time (the group's time over its models)."""
    group: tuple[str, ...]
    """The names of the models generated together."""


def generate_grouped(config: EngineParams, specs: dict[str, str], requests: dict[str, Sequence[Request]], *,
                     cache_path: Optional[str] = None, show_progress: bool = True,
                     logger: Optional[logging.Logger] = None) -> dict[str, SharedResult]:
    """Serve ``requests[name]`` with model ``specs[name]`` for every group of models that share a base
    (:func:`shared_groups`), each group in shared batches (:func:`generate_shared`). Models in no group are
    left out of the result: they are served on their own, as before."""
    log = logger or _log
    out: dict[str, SharedResult] = {}
    for names in shared_groups(specs):
        log.info("models %s generate together on one base (%d rows per batch)", ", ".join(names),
                 max(1, int(config.batch_size)) * len(names))
        t0 = time.time()
        res = generate_shared(config, [specs[n] for n in names], [list(requests[n]) for n in names],
                              cache_path=cache_path, show_progress=show_progress, logger=logger)
        share = (time.time() - t0) / len(names)
        for n, (comps, stats, model_id) in zip(names, res):
            out[n] = SharedResult(comps, stats, model_id, share, tuple(names))
    return out
