"""Finished evaluations kept by content: a model's answers on a benchmark, served again without the model.

The evaluate stage stores each model's completions on each benchmark under a *generation key*: the
model's content fingerprint (:func:`cogpo_kit.models.adapters.model_fingerprint`, so the same weights
in another folder give the same key and one changed byte another) and everything else that decides the
answers: the benchmark's prompts (template, system prompt, problem order and limit included), the
decoding (temperature, top-p, top-k, token budget, stop strings, seed, samples per problem), the
final-answer stop, and the engine settings that change outputs (back end, weight dtype or GGUF weight
type, device, context length, truncation, thinking marker). The batch width is left out, as in the
response cache's key. Grading settings are not in the key: the stage grades served answers again.

A later evaluation with the same key takes the answers from the store instead of building an engine
(no model load) and records where they came from (``reused_from``). Entries are JSON files under
``<output_dir>/cache/evaluations/<key[:2]>/<key>.json`` (written atomically; any run in that output
folder may serve any other).

Run its tests with ``.venv/bin/pytest -q tests/test_eval_reuse.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from cogpo_kit.engines.base import Completion
from cogpo_kit.engines.config import EngineParams, SamplingParams
from cogpo_kit.io import DataError, atomic_write_json, read_json, stable_hash

STORE_DIR = "evaluations"
"""Folder of the store under ``<output_dir>/cache/``."""
KEY_VERSION = 1
"""Bumped when what a key covers changes (old entries are then never served)."""


def engine_output_settings(engine: EngineParams) -> dict:
    """The engine settings that change generated text (not its speed): part of every generation key."""
    out = {"engine": engine.engine, "context_length": int(engine.context_length), "truncation": engine.truncation}
    if engine.engine == "llamacpp":
        out["gguf_weights"] = engine.gguf_weights
    else:
        out["dtype"] = engine.dtype
        out["device"] = engine.device
    if engine.thinking_end:
        out["thinking_end"] = engine.thinking_end
        out["max_thinking_tokens"] = int(engine.max_thinking_tokens)
    return out


def generation_key(fingerprint: str, benchmark: str, prompts: Sequence[Sequence[dict]], sampling: SamplingParams,
                   n_samples: int, engine: EngineParams, extra: Optional[dict] = None) -> tuple[str, dict]:
    """``(key, body)`` of one model's answers on one benchmark; ``body`` is what the key hashes (the
    prompts as their hash)."""
    body = {
        "version": KEY_VERSION,
        "model": fingerprint,
        "benchmark": benchmark,
        "prompts": stable_hash([[{"role": m["role"], "content": m["content"]} for m in msgs] for msgs in prompts]),
        "n_prompts": len(prompts),
        "sampling": {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
                     "top_k": int(sampling.top_k), "max_tokens": int(sampling.max_tokens),
                     "stop": list(sampling.stop), "seed": int(sampling.seed)},
        "n_samples": int(n_samples),
        "engine": engine_output_settings(engine),
        "extra": dict(extra or {}),
    }
    return stable_hash(body), body


def _completion_row(c: Completion) -> dict:
    return {"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": int(c.prompt_tokens),
            "completion_tokens": int(c.completion_tokens), "error": c.error}


class EvaluationStore:
    """The stored answers under one folder (normally ``<output_dir>/cache/evaluations``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, n_prompts: int) -> Optional[dict]:
        """The entry under ``key`` (``{"completions": [[Completion]], "origin": {...}, ...}``), or ``None``
        when there is none. An entry that cannot be read or does not hold ``n_prompts`` answer lists is a
        :class:`~cogpo_kit.io.DataError` naming the file."""
        path = self.path(key)
        if not path.is_file():
            return None
        doc = read_json(path)
        comps = doc.get("completions") if isinstance(doc, dict) else None
        if not isinstance(comps, list) or len(comps) != n_prompts or doc.get("key") != key:
            raise DataError(f"{path}: stored evaluation does not hold {n_prompts} answer lists under key {key} "
                            "(delete the file to evaluate again)")
        try:
            doc["completions"] = [[Completion(text=c["text"], finish_reason=c["finish_reason"],
                                              prompt_tokens=c["prompt_tokens"],
                                              completion_tokens=c["completion_tokens"], cached=True,
                                              error=c.get("error")) for c in row] for row in comps]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: a stored completion lacks {exc} (delete the file to evaluate again)") from None
        return doc

    def put(self, key: str, body: dict, completions: Sequence[Sequence[Completion]], origin: dict) -> Optional[Path]:
        """Store one model's answers on one benchmark; a list holding an error is not stored (it would be
        served as an answer later). Returns the file (``None`` when nothing was stored)."""
        if any(c.finish_reason == "error" for row in completions for c in row):
            return None
        doc = {"key": key, "body": body, "origin": {**origin, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
               "completions": [[_completion_row(c) for c in row] for row in completions]}
        return atomic_write_json(self.path(key), doc, indent=None)
