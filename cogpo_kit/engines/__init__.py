"""Inference engines: one interface, several back ends, a persistent response cache under all of them.

``build_engine(config)`` builds the back end named in :class:`~cogpo_kit.engines.config.EngineParams`
(``llamacpp``, ``transformers``, ``vllm``, ``openai``) and wraps it in
:class:`~cogpo_kit.engines.cache.CachedEngine`. Back ends are imported only when built, so the
CPU install works without vLLM and the HTTP engine works without torch.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from cogpo_kit.engines.base import (BATCH_ONLY, Completion, ContextLengthError, Engine, EngineCapabilities,
                                    EngineError, OpenBatchEngine, Request, RequestStream, StreamingEngine,
                                    TagStats, capabilities_of)
from cogpo_kit.engines.config import CacheParams, EngineParams, SamplingParams

BACKENDS: dict[str, str] = {
    "llamacpp": "cogpo_kit.engines.llamacpp:LlamaCppEngine",
    "transformers": "cogpo_kit.engines.hf:TransformersEngine",
    "vllm": "cogpo_kit.engines.vllm_engine:VLLMEngine",
    "openai": "cogpo_kit.engines.openai_http:OpenAIEngine",
}
"""Back end name -> ``module:class``; each class is built as ``cls(config)``."""

DEFAULT_CACHE = Path("outputs") / "cache" / "responses.sqlite"


class UnknownEngineError(EngineError, ValueError):
    """The params name an engine that does not exist; the message lists the known ones."""


def register_backend(name: str, target: str | Callable[[EngineParams], Any]) -> None:
    """Add a back end: ``target`` is ``"module:Class"`` or a factory ``f(config) -> engine``."""
    BACKENDS[name] = target  # type: ignore[assignment]


def _factory(name: str) -> Callable[[EngineParams], Any]:
    if name not in BACKENDS:
        raise UnknownEngineError(f"unknown engine '{name}'; known engines: {', '.join(sorted(BACKENDS))}")
    target = BACKENDS[name]
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def cache_key_extra(config: EngineParams) -> dict:
    """Engine settings that change outputs and therefore belong in the cache key."""
    extra: dict = {}
    if config.thinking_end:
        extra["thinking_end"] = config.thinking_end
        extra["max_thinking_tokens"] = int(config.max_thinking_tokens)
    if config.truncation != "error":
        extra["truncation"] = config.truncation
    return extra


def build_engine(config: EngineParams, *, cache_path: Optional[str] = None,
                 model: Optional[str] = None):
    """The back end named by ``config.engine`` wrapped in the persistent response cache.

    ``model`` overrides ``config.model``. The cache file is ``config.cache.path`` when the params
    set one, else ``cache_path`` (stages pass ``<output_dir>/cache/responses.sqlite``), else
    ``outputs/cache/responses.sqlite``; ``config.cache.enabled`` / ``clear`` switch it off or empty
    this model's entries first.
    """
    from cogpo_kit.engines.cache import CachedEngine

    if model:
        config = replace(config, model=model)
    factory = _factory(config.engine)
    path = config.cache.path or cache_path or str(DEFAULT_CACHE)
    backend = factory(config)
    try:
        return CachedEngine(backend, os.path.expanduser(path), enabled=config.cache.enabled,
                            clear=config.cache.clear, key_extra=cache_key_extra(config),
                            retry_truncated=config.cache.retry_truncated)
    except BaseException:
        backend.close()
        raise


__all__ = ["BACKENDS", "BATCH_ONLY", "CacheParams", "Completion", "ContextLengthError", "Engine",
           "EngineCapabilities", "EngineParams", "EngineError", "OpenBatchEngine", "Request", "RequestStream",
           "SamplingParams", "StreamingEngine", "TagStats", "UnknownEngineError", "build_engine",
           "cache_key_extra", "capabilities_of", "register_backend"]
