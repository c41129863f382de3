"""One planned vLLM call and its execution on an ``LLM``: shared by the engine and its replica processes.

:func:`run_call` turns a :class:`Call` (prompts and :func:`~cogpo_kit.engines.vllm_engine.sampling_kwargs`
output) into vLLM ``SamplingParams`` (:func:`make_sampling_params`) and one :class:`Row` per prompt.
vLLM itself is passed in (the module), never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from cogpo_kit.engines.base import EngineError


def make_sampling_params(vllm: Any, kwargs: dict):
    """Build ``SamplingParams`` from :func:`~cogpo_kit.engines.vllm_engine.sampling_kwargs` output,
    with the installed vLLM's structured-output class for ``choice``."""
    kw = dict(kwargs)
    choice = kw.pop("choice", None)
    if choice is not None:
        sp_mod = __import__(vllm.__name__ + ".sampling_params", fromlist=["SamplingParams"])
        if hasattr(sp_mod, "StructuredOutputsParams"):
            kw["structured_outputs"] = sp_mod.StructuredOutputsParams(choice=choice)
        elif hasattr(sp_mod, "GuidedDecodingParams"):
            kw["guided_decoding"] = sp_mod.GuidedDecodingParams(choice=choice)
        else:
            raise EngineError("vllm: this vLLM release has neither StructuredOutputsParams nor "
                              "GuidedDecodingParams; cannot constrain label answers")
    return vllm.SamplingParams(**kw)


@dataclass
class Call:
    """One ``LLM.chat`` (or ``LLM.generate`` for token prompts) call: a list of prompts."""

    prompts: list = field(default_factory=list)
    """Conversations (lists of messages), or ``{"prompt_token_ids": [...]}`` for token prompts."""
    params: list[dict] = field(default_factory=list)
    keys: list[tuple[int, int]] = field(default_factory=list)
    tokens: bool = False


@dataclass
class Row:
    """What one prompt of a call produced."""

    text: str
    finish: str
    """``stop``, ``length`` or ``error`` (vLLM's ``abort`` and ``error``)."""
    prompt_ids: list[int]
    token_ids: list[int]


def _finish(reason: Optional[str]) -> str:
    if reason in ("error", "abort"):
        return "error"
    return "length" if reason == "length" else "stop"


def run_call(llm: Any, vllm: Any, call: Call) -> list[Row]:
    """Execute one planned call on an ``LLM``; one :class:`Row` per prompt."""
    params = [make_sampling_params(vllm, p) for p in call.params]
    if call.tokens:
        outs = llm.generate(call.prompts, params, use_tqdm=False)
    else:
        outs = llm.chat(call.prompts, params, use_tqdm=False)
    rows = []
    for o in outs:
        c = o.outputs[0]
        rows.append(Row(text=c.text, finish=_finish(c.finish_reason), prompt_ids=list(o.prompt_token_ids or ()),
                        token_ids=list(c.token_ids or ())))
    return rows
