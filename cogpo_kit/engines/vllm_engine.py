"""vLLM back end (GPU servers): offline ``vllm.LLM``, chat template applied by ``LLM.chat``.

vLLM is imported only when this engine is built (the CPU install has none). The translation from
our requests to vLLM's arguments lives in pure functions (:func:`sampling_kwargs`,
:func:`llm_kwargs`, :func:`plan_calls`, :func:`continuation_ids`) so it can be tested without vLLM.
Each sample is one prompt with ``n=1`` and its own seed (vLLM's prefix cache shares the prompt's
work). Labels use vLLM's structured outputs (``StructuredOutputsParams(choice=...)``;
``GuidedDecodingParams`` on releases before it).

Reasoning models first write freely up to ``thinking_end`` (at most ``max_thinking_tokens``); the
label is then generated at token level: the prompt's token ids, the generated thinking's token ids
and the end-of-thinking ids (added when the budget ran out) are sent back with ``LLM.generate``
under the choice constraint. Re-rendering the chat with the thinking as an assistant message would
not work: chat templates of reasoning models (DeepSeek-R1's) drop the thinking from assistant
messages. ``tensor_parallel_size`` goes to ``LLM``; ``data_parallel_size > 1`` starts one ``LLM``
per replica in its own process (:mod:`cogpo_kit.engines.vllm_replicas`) and splits the prompts.
A planned call and its execution on an ``LLM`` (:mod:`cogpo_kit.engines.vllm_calls`) are shared with
those replica processes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from cogpo_kit.engines.base import BATCH_ONLY, Completion, ContextLengthError, EngineError, Request
from cogpo_kit.engines.common import (describe_request, error_completion, label_budget, label_completion,
                                      sample_seed)
from cogpo_kit.engines.config import EngineParams
from cogpo_kit.engines.vllm_calls import Call, Row, make_sampling_params, run_call

__all__ = ["Call", "Row", "VLLMEngine", "continuation_ids", "count_prompt_tokens", "llm_kwargs",
           "make_sampling_params", "plan_calls", "run_call", "sampling_kwargs"]


def sampling_kwargs(request: Request, index: int, *, max_tokens: Optional[int] = None,
                    extra_stop: Sequence[str] = (), choices: Optional[Sequence[str]] = None) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for sample ``index`` of ``request``.

    ``top_k`` 0 is vLLM's "no limit" (-1 is still accepted but deprecated). ``choices`` is returned
    under the key ``"choice"`` (not a SamplingParams argument): the process that owns the ``LLM``
    turns it into structured-output params (:func:`make_sampling_params`).
    """
    s = request.sampling
    kw: dict[str, Any] = {
        "n": 1,
        "temperature": max(0.0, float(s.temperature)),
        "top_p": float(s.top_p) if 0 < s.top_p <= 1 else 1.0,
        "top_k": int(s.top_k) if s.top_k and s.top_k > 0 else 0,
        "max_tokens": int(max_tokens if max_tokens is not None else s.max_tokens),
        "seed": sample_seed(s.seed, index),
    }
    stop = list(s.stop) + [x for x in extra_stop if x]
    if stop:
        kw["stop"] = stop
    if choices is not None:
        kw["choice"] = list(choices)
    return kw


def llm_kwargs(config: EngineParams, model_path: str) -> dict:
    """Keyword arguments of ``vllm.LLM`` for one replica."""
    kw: dict[str, Any] = {
        "model": model_path,
        "tensor_parallel_size": int(config.tensor_parallel_size),
        "max_model_len": int(config.context_length),
        "gpu_memory_utilization": float(config.gpu_memory_utilization),
        "dtype": config.dtype,
    }
    return kw


def plan_calls(requests: Sequence[Request], config: EngineParams, *, phase: int = 1,
               continuations: Optional[dict[tuple[int, int], list[int]]] = None,
               prompt_lengths: Optional[Sequence[int]] = None,
               tokenized: Optional[dict[int, list[int]]] = None,
               think_ids: Optional[Sequence[int]] = None) -> list[Call]:
    """The vLLM calls serving ``requests`` (phase 2: the labels after reasoning models' thoughts).

    ``prompt_lengths`` (chat-templated prompt tokens) are checked against the context; prompts
    that do not fit raise :class:`ContextLengthError` or, with ``truncation: left``, are sent as
    the last ``context_length - max_tokens`` tokens of ``tokenized[i]``. Phase 2 sends
    ``continuations[(i, j)]`` (prompt + thinking + end-of-thinking token ids) as token prompts.
    An end-of-thinking marker of one token (``think_ids``) also stops the thinking as a token, in
    case the tokenizer counts it as special and leaves it out of the text.
    """
    think = config.thinking_end
    ctx = int(config.context_length)
    chat, toks = Call(), Call(tokens=True)
    if phase == 2:
        for (i, j), ids in sorted((continuations or {}).items()):
            r = requests[i]
            room = max(1, min(label_budget(r), ctx - len(ids)))
            toks.prompts.append({"prompt_token_ids": list(ids)})
            toks.params.append(sampling_kwargs(r, r.sample_offset + j, max_tokens=room, choices=r.choices))
            toks.keys.append((i, j))
        return [toks] if toks.prompts else []
    for i, r in enumerate(requests):
        for j in range(r.n):
            index = r.sample_offset + j
            if r.choices is not None and think:
                kw = sampling_kwargs(r, index, max_tokens=int(config.max_thinking_tokens), extra_stop=(think,))
                if think_ids is not None and len(think_ids) == 1:
                    kw["stop_token_ids"] = list(think_ids)
                budget = kw["max_tokens"] + label_budget(r)
            elif r.choices is not None:
                kw = sampling_kwargs(r, index, max_tokens=label_budget(r), choices=r.choices)
                budget = kw["max_tokens"]
            else:
                kw = sampling_kwargs(r, index)
                budget = kw["max_tokens"]
            n_prompt = prompt_lengths[i] if prompt_lengths is not None else 0
            if n_prompt and n_prompt < ctx - 1 and n_prompt + budget > ctx:
                kw["max_tokens"] = max(1, kw["max_tokens"] - (n_prompt + budget - ctx))
            if n_prompt + budget > ctx and n_prompt >= ctx - 1:
                if config.truncation != "left" or tokenized is None:
                    raise ContextLengthError(
                        f"vllm: {describe_request(i, r)} has {n_prompt} prompt tokens but max_model_len is "
                        f"{ctx}; shorten it, raise context_length, or set truncation: left")
                keep = ctx - min(budget, ctx // 2)
                kw["max_tokens"] = max(1, min(kw["max_tokens"], ctx - keep - (budget - kw["max_tokens"])))
                toks.prompts.append({"prompt_token_ids": tokenized[i][-keep:]})
                toks.params.append(kw)
                toks.keys.append((i, j))
                continue
            chat.prompts.append([{"role": m["role"], "content": m["content"]} for m in r.messages])
            chat.params.append(kw)
            chat.keys.append((i, j))
    return [c for c in (chat, toks) if c.prompts]


def continuation_ids(prompt_ids: Sequence[int], token_ids: Sequence[int], text: str, finish: str,
                     think_ids: Sequence[int], encode: Callable[[str], list[int]]) -> list[int]:
    """Token ids that continue a reasoning model's answer after its thinking.

    vLLM keeps the tokens of a matched stop string in ``token_ids`` (only the text is cut): the
    thinking is kept up to the end of the end-of-thinking ids. A thought cut by the budget gets
    those ids appended; one ended by another stop string is re-encoded from its text.
    """
    gen, think = list(token_ids), list(think_ids)
    for k in range(len(gen) - len(think) + 1):
        if think and gen[k:k + len(think)] == think:
            return list(prompt_ids) + gen[:k + len(think)]
    if finish == "length":
        return list(prompt_ids) + gen + think
    return list(prompt_ids) + list(encode(text)) + think


def count_prompt_tokens(tokenizer: Any, messages: Sequence[dict]) -> list[int]:
    """The token ids of a chat prompt as vLLM builds them: the template rendered to text, then
    tokenized without special tokens (the template writes its own). transformers 5 returns a
    ``BatchEncoding`` from ``apply_chat_template(tokenize=True)``, whose ``len`` is its key count."""
    text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


class VLLMEngine:
    """Offline vLLM engine (one ``LLM``, or one per data-parallel replica)."""

    name = "vllm"
    capabilities = BATCH_ONLY

    def __init__(self, config: EngineParams):
        try:
            import vllm
        except ImportError as exc:
            raise EngineError("vllm: the vllm package is not installed (GPU servers: pip install -e .[gpu])") from exc
        from cogpo_kit.models.resolve import hf_path, resolve

        self.config = config
        self.logger = logging.getLogger("cogpo_kit.engines.vllm")
        self.model_id = f"vllm:{resolve(config.model).identity}"
        self._vllm = vllm
        self._replicas = None
        self._llm = None
        path = hf_path(config.model)
        kwargs = llm_kwargs(config, path)
        dp = max(1, int(config.data_parallel_size))
        if dp == 1:
            self._llm = vllm.LLM(**kwargs)
            self._tokenizer = self._llm.get_tokenizer()
        else:
            from transformers import AutoTokenizer

            from cogpo_kit.engines.vllm_replicas import Replicas

            tp = int(config.tensor_parallel_size)
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",") if visible else [str(k) for k in range(dp * tp)]
            if len(devices) < dp * tp:
                raise EngineError(f"vllm: data_parallel_size {dp} x tensor_parallel_size {tp} needs {dp * tp} "
                                  f"GPUs; {len(devices)} visible")
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._replicas = Replicas(kwargs, [",".join(devices[r * tp:(r + 1) * tp]) for r in range(dp)])
        self._think_ids: Optional[list[int]] = None

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _prompt_lengths(self, requests: Sequence[Request]) -> tuple[list[int], dict[int, list[int]]]:
        tokenized = {i: count_prompt_tokens(self._tokenizer, r.messages) for i, r in enumerate(requests)}
        return [len(tokenized[i]) for i in range(len(requests))], tokenized

    def _run(self, call: Call) -> list[Row]:
        if self._llm is not None:
            return run_call(self._llm, self._vllm, call)
        if self._replicas is None:
            raise EngineError("vllm: the engine is closed")
        k = len(self._replicas)
        shards = [replace(call, prompts=call.prompts[r::k], params=call.params[r::k], keys=call.keys[r::k])
                  for r in range(k)]
        outs = self._replicas.run(shards)
        rows: list = [None] * len(call.prompts)
        for r, out in enumerate(outs):
            for pos, row in zip(range(r, len(call.prompts), k), out):
                rows[pos] = row
        return rows

    def generate(self, requests: Sequence[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]] = None) -> list[list[Completion]]:
        requests = list(requests)
        think = self.config.thinking_end
        lengths, tokenized = self._prompt_lengths(requests)
        results: list[list[Optional[Completion]]] = [[None] * r.n for r in requests]
        thoughts: dict[tuple[int, int], Row] = {}
        if think and self._think_ids is None:
            self._think_ids = self._encode(think)
        for call in plan_calls(requests, self.config, prompt_lengths=lengths, tokenized=tokenized,
                               think_ids=self._think_ids):
            for (i, j), row in zip(call.keys, self._run(call)):
                r = requests[i]
                if row.finish == "error":
                    results[i][j] = error_completion(f"vllm: generation of {describe_request(i, r)} was aborted "
                                                     f"by the engine", len(row.prompt_ids))
                elif r.choices is not None and think:
                    thoughts[(i, j)] = row
                else:
                    results[i][j] = label_completion(row.text, row.finish, len(row.prompt_ids), len(row.token_ids),
                                                     r.choices, think, constrained=r.choices is not None)
        if thoughts:
            conts = {key: continuation_ids(row.prompt_ids, row.token_ids, row.text, row.finish, self._think_ids or [],
                                           self._encode) for key, row in thoughts.items()}
            for call in plan_calls(requests, self.config, phase=2, continuations=conts):
                for (i, j), row in zip(call.keys, self._run(call)):
                    first = thoughts[(i, j)]
                    if row.finish == "error":
                        results[i][j] = error_completion(f"vllm: the label of {describe_request(i, requests[i])} "
                                                         f"was aborted by the engine", len(first.prompt_ids))
                        continue
                    results[i][j] = label_completion(first.text + think + row.text, row.finish, len(first.prompt_ids),
                                                     len(first.token_ids) + len(row.token_ids), requests[i].choices,
                                                     think, constrained=True)
        return [[c for c in row] for row in results]  # type: ignore[misc]

    def close(self) -> None:
        if self._replicas is not None:
            self._replicas.close()
        self._replicas = None
        self._llm = None
