"""llama.cpp back end (llama-cpp-python): the embedded CPU default for the agents.

All samples of a batch run together in one llama.cpp context, each sequence in its own KV stream
of ``context_length`` tokens: up to ``batch_size`` sequences (fewer when their streams would
exceed ``kv_cache_mb``) decode in each step (continuous batching: a finished sequence's slot
takes the next waiting sample at once, its prompt fed in the same step as the others' next
tokens). Active sequences are kept in contiguous slots and each step is written in slot order:
with one KV stream per sequence, llama.cpp puts a sequence into the current micro-batch only if its
slot follows the previous one's, so a gap or any other order splits a step into one pass over the
weights per run of consecutive slots (benchmarks/kv_streams.py). The gap a finished sequence leaves
is filled by moving the highest one down.
Prompts share their evaluated prefix: a prompt starting like one being decoded (the other samples
of a request, the other requests of an agent with the same system prompt) copies that prefix's KV
cells and evaluates only what differs; until that prefix is evaluated it waits without a slot, so no
step has an idle slot between busy ones. Each step gives every sequence one token and the rest of
its ``N_BATCH`` tokens to prompts, shortest first. The KV cells of finished prompts are saved in host memory
(``prompt_cache_mb``, least recently used dropped first), so a prompt asked again later (a
request's later samples, asked round after round, or the next request of the same agent) restores
them instead of evaluating them again. The prompt is the model's own chat template from the GGUF
file (the template llama-cpp-python's ``create_chat_completion`` applies). Each sample has its own
sampler chain and seed (derived from the request's seed and the sample index), so a sample does not
depend on what else is in the batch. Label requests are constrained by a GBNF grammar; with
``thinking_end`` set the model first writes freely up to that marker, then the grammar applies.

This module is the engine's public side (model, tokens, samplers, jobs); one ``generate`` call runs
as a :class:`~cogpo_kit.engines.llamacpp_batch.ContinuousBatch`, the saved prompts live in
:mod:`cogpo_kit.engines.llamacpp_prompts` and the model loading in :mod:`cogpo_kit.engines.llamacpp_model`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, EngineCapabilities, EngineError, Request
from cogpo_kit.engines.common import cpu_threads, describe_request, fit_prompt, openmp_defaults, sample_seed
from cogpo_kit.engines.config import EngineParams
from cogpo_kit.engines.llamacpp_batch import MIN_CHUNK, ContinuousBatch, Job, StepStats
from cogpo_kit.engines.llamacpp_model import context_params, load_model, parallel_sequences, quiet_llama_logs
from cogpo_kit.engines.llamacpp_prompts import MIN_SHARE, PromptStore, SavedPrompt, common_prefix

N_BATCH = 512
"""Most tokens in one decode step (raised to the number of parallel sequences, which each get one)."""

__all__ = ["LlamaCppEngine", "MIN_CHUNK", "MIN_SHARE", "N_BATCH", "PromptStore", "SavedPrompt", "common_prefix"]


class LlamaCppEngine:
    """Continuous-batching llama.cpp engine over one GGUF model."""

    name = "llamacpp"
    capabilities = EngineCapabilities(streams_results=True, accepts_more=True)

    def __init__(self, config: EngineParams):
        openmp_defaults()  # before the library loads
        try:
            import llama_cpp
            from llama_cpp import _internals as internals
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError("llamacpp: llama-cpp-python is not installed (pip install "
                              "'llama-cpp-python[server]==0.3.36')") from exc
        from cogpo_kit.models.resolve import resolve

        res = resolve(config.model)
        if not res.gguf_path:
            raise EngineError(f"llamacpp: model '{config.model}' has no GGUF file; use a .gguf file, "
                              "the embedded model, or another engine (transformers, vllm)")
        self.config = config
        self.logger = logging.getLogger("cogpo_kit.engines.llamacpp")
        quiet_llama_logs()
        self.prompt_truncations: dict[str, int] = {}
        self._llama = llama_cpp
        self._internals = internals
        self._lock = threading.Lock()
        self._model, self.weights = load_model(internals, res.gguf_path, config.gguf_weights)
        self.model_id = f"llamacpp:{res.identity}" + ("" if self.weights == "as_is" else f"|{self.weights}")
        self._open_context(config)
        self._formatter = self._chat_formatter(res.gguf_path)
        self._grammar_cls = __import__("llama_cpp.llama_grammar", fromlist=["LlamaGrammar"]).LlamaGrammar
        self._piece = ctypes.create_string_buffer(256)
        self.decoded_tokens = 0
        """Tokens sent through the model so far (prompt tokens not shared from another prompt's KV cells,
        plus generated tokens): the compute actually paid, for benchmarks."""
        self.slot_moves = 0
        """Sequences moved to a lower KV stream to keep the active streams contiguous."""
        self.step_stats = StepStats()
        """Prompt against decode steps: tokens, seconds in ``llama_decode``, batch width (benchmarks)."""
        self.prompt_store = PromptStore(int(config.prompt_cache_mb) * 2**20)
        """Finished prompts' KV cells in host memory (``saved``, ``restored``, ``restored_tokens``)."""

    def _open_context(self, config: EngineParams) -> None:
        """The llama.cpp context: one KV stream of ``context_length`` tokens per parallel sequence."""
        self.n_ctx = int(config.context_length)
        self.n_parallel = parallel_sequences(self._model, config.batch_size, config.kv_cache_mb, self.n_ctx)
        if self.n_parallel < config.batch_size:
            self.logger.info("llamacpp: %d sequences in parallel (KV cache of %d MB for %d-token contexts)",
                             self.n_parallel, config.kv_cache_mb, self.n_ctx)
        self.n_batch = max(N_BATCH, self.n_parallel)  # every active sequence gets a token in each step
        cp = context_params(self.n_parallel, self.n_ctx, self.n_batch, cpu_threads(config.threads))
        self._ctx = self._internals.LlamaContext(model=self._model, params=cp, verbose=False)
        self.n_ctx = min(self.n_ctx, int(self._llama.llama_n_ctx_seq(self._ctx.ctx)))
        self._batch = self._internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._vocab = self._model.vocab

    def _chat_formatter(self, gguf_path: str):
        """The model's own chat template from the GGUF file (as ``create_chat_completion`` applies it)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._model.metadata().get("tokenizer.chat_template")
        if not template:
            raise EngineError(f"llamacpp: {gguf_path} carries no chat template")
        bos = self._model.token_get_text(self._model.token_bos())
        eos = self._model.token_get_text(self._model.token_eos())
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_special, True)

    def _piece_bytes(self, token: int) -> bytes:
        n = self._llama.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return bytes(self._piece.raw[:max(n, 0)])

    def format_prompt(self, messages: Sequence[dict]) -> list[int]:
        """Chat-template the messages and tokenize them (special tokens parsed)."""
        res = self._formatter(messages=[dict(m) for m in messages])
        return self.tokenize(res.prompt, add_special=not getattr(res, "added_special", False))

    # -- samplers -------------------------------------------------------------------------
    def _sampler(self, req: Request, seed: int, grammar: Optional[str]):
        s = self._internals.LlamaSampler()
        if grammar:
            s.add_grammar(self._model, self._grammar_cls.from_string(grammar, verbose=False))
        sp = req.sampling
        if sp.temperature <= 0:
            s.add_greedy()
        else:
            if sp.top_k and sp.top_k > 0:
                s.add_top_k(int(sp.top_k))
            if 0 < sp.top_p < 1:
                s.add_top_p(float(sp.top_p), 1)
            s.add_temp(float(sp.temperature))
            s.add_dist(seed)
        return s

    def _label_budget(self, req: Request) -> int:
        longest = max(len(self.tokenize(c, add_special=False)) for c in req.choices or ("x",))
        return max(int(req.sampling.max_tokens), longest + 1)

    # -- generation -----------------------------------------------------------------------
    def generate(self, requests: Sequence[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]] = None,
                 more: Optional[Callable[[], Sequence[Request]]] = None) -> list[list[Completion]]:
        """Generate ``requests``; ``on_result(request, sample, completion)`` as each sample finishes.

        ``more()``, when given, is asked for further requests whenever a slot is free and nothing
        waits; they join the running batch (their indices follow the ones given so far) and the
        call returns once ``more()`` has nothing left and every sequence has finished.
        """
        with self._lock:
            return ContinuousBatch(self, list(requests), on_result, more).run()

    def _jobs(self, requests: Sequence[Request], base: int = 0) -> list[Job]:
        """One job per sample of ``requests`` (numbered from ``base``), prompts fitted to the context."""
        jobs: list[Job] = []
        for i, r in enumerate(requests, start=base):
            prompt = self.format_prompt(r.messages)
            label_max = self._label_budget(r) if r.choices is not None else 0
            prompt, budget, dropped = fit_prompt(prompt, self.n_ctx, self._token_budget(r, label_max),
                                                 self.config.truncation, describe_request(i, r), self.name)
            if dropped:
                self.prompt_truncations[r.tag] = self.prompt_truncations.get(r.tag, 0) + 1
                self.logger.warning("llamacpp: %s: dropped its %d oldest prompt tokens (truncation: left)",
                                    describe_request(i, r), dropped)
            for j in range(r.n):
                jobs.append(Job(i, j, prompt, budget, label_max, r, sample_seed(r.sampling.seed,
                                                                              r.sample_offset + j)))
        return jobs

    def _token_budget(self, r: Request, label_max: int) -> int:
        """Most tokens a sample of ``r`` may generate (thinking and label together)."""
        if r.choices is not None and self.config.thinking_end:
            return int(self.config.max_thinking_tokens) + label_max
        if r.choices is not None:
            return label_max
        return int(r.sampling.max_tokens)

    def close(self) -> None:
        for attr in ("_batch", "_ctx", "_model"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)
