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
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from cogpo_kit.engines.base import Completion, EngineError, Request
from cogpo_kit.engines.common import (apply_stop, choices_grammar, cpu_threads, describe_request,
                                      fit_prompt, label_completion, openmp_defaults, sample_seed)
from cogpo_kit.engines.config import EngineConfig
from cogpo_kit.engines.llamacpp_model import auto_weights, converted_gguf, model_params, quiet_llama_logs

N_BATCH = 512
MIN_SHARE = 8
MIN_CHUNK = 64
"""Fewest prompt tokens a step gives a sequence beyond its first one, unless that ends its prompt: each
sequence's extra tokens are a pass of their own over the weights, which a short chunk does not pay for."""


@dataclass
class _Job:
    sub: int
    j: int
    prompt: list[int]
    max_new: int
    label_max: int
    req: Request
    seed: int


@dataclass
class _Seq:
    job: _Job
    slot: int
    feed: list[int]
    pos: int
    sampler: object
    phase: int  # 1: free text (thinking or answer); 2: constrained label after thinking
    out: bytearray = field(default_factory=bytearray)
    n_phase: int = 0
    n_total: int = 0
    prefix: str = ""
    leader: Optional[object] = None
    """While set, this sequence waits for ``leader`` to have evaluated the shared prompt prefix."""
    share: int = 0
    """Prompt tokens taken from ``leader``'s KV cells instead of being evaluated again."""

    @property
    def prompt(self) -> list[int]:
        return self.job.prompt


@dataclass
class _Saved:
    """A finished prompt's KV cells, serialized to host memory (``llama_state_seq_get_data``)."""

    prompt: list[int]
    data: object
    size: int


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit`` (slice compares, in C)."""
    lo, hi = 0, min(limit, len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PromptStore:
    """Finished prompts' KV cells in host memory, least recently used dropped beyond ``budget`` bytes
    (or beyond ``max_entries`` prompts, when set)."""

    def __init__(self, budget_bytes: int, max_entries: Optional[int] = None):
        self.budget = max(0, int(budget_bytes))
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple, _Saved] = OrderedDict()
        self.bytes = 0
        self.saved = 0
        self.restored = 0
        self.restored_tokens = 0

    def __iter__(self):
        return iter(self.entries.values())

    def has(self, prompt: list[int]) -> bool:
        """Whether ``prompt`` is saved; if so it becomes the most recently used."""
        key = tuple(prompt)
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        return False

    def add(self, prompt: list[int], data: object, size: int) -> None:
        if size > self.budget:
            return
        self.entries[tuple(prompt)] = _Saved(prompt=list(prompt), data=data, size=size)
        self.bytes += size
        self.saved += 1
        while self.bytes > self.budget or (self.max_entries is not None and len(self.entries) > self.max_entries):
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.size

    def touch(self, entry: _Saved) -> None:
        self.entries.move_to_end(tuple(entry.prompt))

    def clear(self) -> None:
        """Drop every saved prompt (the counters stay)."""
        self.entries.clear()
        self.bytes = 0


class LlamaCppEngine:
    """Continuous-batching llama.cpp engine over one GGUF model."""

    name = "llamacpp"
    streams_results = True
    accepts_more = True

    def __init__(self, config: EngineConfig):
        openmp_defaults()  # before the library loads
        try:
            import llama_cpp
            from llama_cpp import _internals as internals
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
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
        self._lock = threading.Lock()
        self._model = internals.LlamaModel(path_model=res.gguf_path, params=model_params(), verbose=False)
        self.weights = auto_weights(self._model) if config.gguf_weights == "auto" else config.gguf_weights
        if self.weights != "as_is":
            gguf = converted_gguf(res.gguf_path, self.weights)
            self._model.close()
            self._model = internals.LlamaModel(path_model=gguf, params=model_params(), verbose=False)
        self.model_id = f"llamacpp:{res.identity}" + ("" if self.weights == "as_is" else f"|{self.weights}")
        self.n_ctx = int(config.context_length)
        self.n_parallel = self._parallel(config)
        if self.n_parallel < config.batch_size:
            self.logger.info("llamacpp: %d sequences in parallel (KV cache of %d MB for %d-token contexts)",
                             self.n_parallel, config.kv_cache_mb, self.n_ctx)
        self.n_batch = max(N_BATCH, self.n_parallel)  # every active sequence gets a token in each step
        cp = llama_cpp.llama_context_default_params()
        cp.n_seq_max = self.n_parallel
        cp.n_ctx = self.n_ctx * cp.n_seq_max
        cp.n_batch = self.n_batch
        cp.n_ubatch = self.n_batch
        cp.kv_unified = False  # one KV stream per sequence: attention only over its own cells
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # faster here on CPU, as create_chat_completion
        cp.n_threads = cp.n_threads_batch = cpu_threads(config.threads)
        cp.no_perf = True
        self._ctx = internals.LlamaContext(model=self._model, params=cp, verbose=False)
        self.n_ctx = min(self.n_ctx, int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx)))
        self._batch = internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._vocab = self._model.vocab
        meta = self._model.metadata()
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise EngineError(f"llamacpp: {res.gguf_path} carries no chat template")
        bos = self._model.token_get_text(self._model.token_bos())
        eos = self._model.token_get_text(self._model.token_eos())
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._grammar_cls = __import__("llama_cpp.llama_grammar", fromlist=["LlamaGrammar"]).LlamaGrammar
        self._internals = internals
        self._piece = ctypes.create_string_buffer(256)
        self.decoded_tokens = 0
        """Tokens sent through the model so far (prompt tokens not shared from another prompt's KV cells,
        plus generated tokens): the compute actually paid, for benchmarks."""
        self.slot_moves = 0
        """Sequences moved to a lower KV stream to keep the active streams contiguous."""
        self.prompt_store = PromptStore(int(config.prompt_cache_mb) * 2**20)
        """Finished prompts' KV cells in host memory (``saved``, ``restored``, ``restored_tokens``)."""

    def _parallel(self, config: EngineConfig) -> int:
        """Sequences decoded together: ``batch_size``, fewer if their KV streams exceed ``kv_cache_mb``."""
        llama, model = self._llama, self._model.model
        n_embd, n_head = llama.llama_model_n_embd(model), max(1, llama.llama_model_n_head(model))
        per_token = 2 * llama.llama_model_n_layer(model) * (n_embd // n_head) * llama.llama_model_n_head_kv(model) * 2
        fit = int(config.kv_cache_mb) * 2**20 // max(1, per_token * int(config.context_length))
        return max(1, min(int(config.batch_size), fit))

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
            return self._generate(list(requests), on_result, more)

    def _jobs(self, requests: Sequence[Request], base: int = 0) -> list[_Job]:
        jobs: list[_Job] = []
        think = self.config.thinking_end
        for i, r in enumerate(requests, start=base):
            prompt = self.format_prompt(r.messages)
            label_max = self._label_budget(r) if r.choices is not None else 0
            if r.choices is not None and think:
                budget = int(self.config.max_thinking_tokens) + label_max
            elif r.choices is not None:
                budget = label_max
            else:
                budget = int(r.sampling.max_tokens)
            prompt, budget, dropped = fit_prompt(prompt, self.n_ctx, budget, self.config.truncation,
                                                 describe_request(i, r), self.name)
            if dropped:
                self.prompt_truncations[r.tag] = self.prompt_truncations.get(r.tag, 0) + 1
                self.logger.warning("llamacpp: %s: dropped its %d oldest prompt tokens (truncation: left)",
                                    describe_request(i, r), dropped)
            for j in range(r.n):
                jobs.append(_Job(i, j, prompt, budget, label_max, r, sample_seed(r.sampling.seed,
                                                                               r.sample_offset + j)))
        return jobs

    def _generate(self, requests: list[Request], on_result, more) -> list[list[Completion]]:
        results: list[list[Optional[Completion]]] = [[None] * r.n for r in requests]
        pending = deque(self._jobs(requests))  # all prompts checked before any work is done
        mem = self._ctx.memory
        llama = self._llama
        free = list(range(self.n_parallel))[::-1]
        store = self.prompt_store  # finished prompts of this batch and earlier ones
        copy_sources: set[int] = set()  # streams read by a copy not yet carried out
        active: list[_Seq] = []  # sequences holding a slot (KV stream)
        waiting: list[_Seq] = []  # sequences whose leader has not evaluated their prefix yet: no slot
        think = self.config.thinking_end

        def start(job: _Job, leader: Optional[object], share: int) -> None:
            r = job.req
            constrained_now = r.choices is not None and not think
            grammar = choices_grammar(r.choices) if constrained_now else None
            seq = _Seq(job=job, slot=-1, feed=list(job.prompt[share:]), pos=share,
                       sampler=self._sampler(r, job.seed, grammar), phase=1,
                       leader=leader, share=share)
            if isinstance(leader, _Seq):  # takes a slot once the leader has evaluated the prefix
                waiting.append(seq)
                return
            seq.slot = free.pop()
            llama.llama_memory_seq_rm(mem, seq.slot, -1, -1)
            active.append(seq)
            if isinstance(leader, _Saved) and seq.slot not in copy_sources:
                restore(seq)

        def restore(seq: _Seq) -> None:
            """Write a saved prompt's cells into ``seq``'s stream and keep the shared prefix.

            Done at once, so never into a stream that a copy issued since the last decode still
            reads (llama.cpp carries stream copies out at the next decode): such a sequence waits.
            """
            saved = seq.leader
            seq.leader = None
            if llama.llama_state_seq_set_data(self._ctx.ctx, saved.data, saved.size, seq.slot) == saved.size:
                llama.llama_memory_seq_rm(mem, seq.slot, seq.share, -1)
                store.touch(saved)
                store.restored += 1
                store.restored_tokens += seq.share
            else:  # could not restore: evaluate the whole prompt
                llama.llama_memory_seq_rm(mem, seq.slot, -1, -1)
                seq.share, seq.pos, seq.feed = 0, 0, list(seq.job.prompt)

        def best_source(job: _Job) -> tuple[Optional[object], int]:
            """The prompt sharing the longest prefix with ``job`` (at least MIN_SHARE): a running or
            waiting sequence, or a finished one saved in host memory (a running one on a tie)."""
            best, best_n = None, 0
            limit = len(job.prompt) - 1  # the last prompt token is always evaluated: its logits are ours
            for s in active + waiting + list(store):
                n = common_prefix(s.prompt, job.prompt, limit)
                if n > best_n:
                    best, best_n = s, n
            return (best, best_n) if best_n >= MIN_SHARE else (None, 0)

        def compact() -> None:
            """Move the sequences in the highest slots into the free lower ones.

            llama.cpp decodes a step in one pass only over sequences with consecutive slots; a gap
            left by a finished sequence would split every later step in two or more passes.
            """
            k = len(active)
            holes = sorted(slot for slot in free if slot < k)
            movers = sorted((s for s in active if s.slot >= k), key=lambda s: -s.slot)
            for seq, slot in zip(movers, holes):
                free.remove(slot)
                if seq.leader is None:  # it has cells: copy its stream down (done at the next decode)
                    llama.llama_memory_seq_cp(mem, seq.slot, slot, -1, -1)
                    llama.llama_memory_seq_rm(mem, seq.slot, -1, -1)
                    copy_sources.add(seq.slot)
                free.append(seq.slot)
                seq.slot = slot
                self.slot_moves += 1
            free.sort(reverse=True)  # pop() takes the lowest free slot

        def link_ready() -> None:
            """Give waiting sequences the prefix their leader has evaluated by now.

            A sequence waiting for a leader holds no slot meanwhile (its slot is kept free for it): a
            slot without tokens in a step would split that step into more passes over the weights.
            It takes the lowest free slot, next to the others after :func:`compact`.
            """
            for s in active:
                if isinstance(s.leader, _Saved) and s.slot not in copy_sources:
                    restore(s)
            still = []
            for s in waiting:
                lead = s.leader
                if lead.leader is None and lead.pos >= s.share:
                    s.slot = free.pop()
                    llama.llama_memory_seq_rm(mem, s.slot, -1, -1)
                    llama.llama_memory_seq_cp(mem, lead.slot, s.slot, -1, -1)  # streams copy whole
                    llama.llama_memory_seq_rm(mem, s.slot, s.share, -1)
                    copy_sources.add(lead.slot)
                    s.leader = None
                    active.append(s)
                else:
                    still.append(s)
            waiting[:] = still

        def keep(seq: _Seq) -> None:
            """Save a finished prompt's KV cells in host memory for the prompts still to come."""
            prompt = seq.job.prompt
            if not store.budget or len(prompt) <= MIN_SHARE or store.has(prompt):
                return
            llama.llama_memory_seq_rm(mem, seq.slot, len(prompt), -1)  # the prompt's cells only
            size = llama.llama_state_seq_get_size(self._ctx.ctx, seq.slot)
            if size <= store.budget:
                data = (ctypes.c_uint8 * size)()
                if llama.llama_state_seq_get_data(self._ctx.ctx, data, size, seq.slot) == size:
                    store.add(prompt, data, size)

        def finish(seq: _Seq, reason: str, text: str) -> None:
            job, r = seq.job, seq.job.req
            if seq.phase == 1 and r.choices is not None and think:  # thinking done: now the label
                seq.prefix = text + think
                seq.phase = 2
                seq.n_phase = 0
                seq.out = bytearray()
                seq.sampler = self._sampler(r, job.seed, choices_grammar(r.choices))
                llama.llama_memory_seq_rm(mem, seq.slot, len(job.prompt), -1)
                seq.pos = len(job.prompt)
                seq.feed = self.tokenize(seq.prefix, add_special=False)
                return
            full = seq.prefix + text
            c = label_completion(full, reason, len(job.prompt), seq.n_total, r.choices, think,
                                 constrained=True)
            results[job.sub][job.j] = c
            keep(seq)
            active.remove(seq)
            llama.llama_memory_seq_rm(mem, seq.slot, -1, -1)
            free.append(seq.slot)
            free.sort(reverse=True)
            if on_result is not None:
                on_result(job.sub, job.j, c)

        def step_token(seq: _Seq, token: int) -> None:
            job, r = seq.job, seq.job.req
            if llama.llama_vocab_is_eog(self._vocab, token):
                finish(seq, "stop", seq.out.decode("utf-8", errors="ignore"))
                return
            seq.out += self._piece_bytes(token)
            seq.n_phase += 1
            seq.n_total += 1
            text = seq.out.decode("utf-8", errors="ignore")
            stops = tuple(r.sampling.stop)
            if seq.phase == 1 and r.choices is not None and think:
                stops = stops + (think,)
            if stops:
                cut, hit = apply_stop(text, stops)
                if hit:
                    finish(seq, "stop", cut)
                    return
            limit = job.label_max if seq.phase == 2 else (
                int(self.config.max_thinking_tokens) if (r.choices is not None and think) else job.max_new)
            if seq.n_phase >= limit or seq.pos + 1 >= self.n_ctx:
                finish(seq, "length", text)
                return
            seq.feed = [token]

        batch = self._batch.batch
        while True:
            if more is not None and len(free) > len(waiting) and not pending:
                added = list(more())
                if added:
                    pending.extend(self._jobs(added, base=len(requests)))
                    requests.extend(added)
                    results.extend([None] * r.n for r in added)
            if not (pending or active or waiting):
                break
            while pending and len(free) > len(waiting):  # a waiting sequence's slot is kept for it
                job = pending.popleft()
                start(job, *best_source(job))
            if free:
                compact()
            link_ready()
            # Every sequence with tokens to feed gets one (so the step's first pass runs over all of
            # them, in consecutive slots); what is left goes to prompts, shortest first, in chunks of
            # at least MIN_CHUNK tokens or the prompt's rest.
            ready = [s for s in active if s.feed and s.leader is None]
            budget = self.n_batch - len(ready)
            plan = []
            for seq in sorted(ready, key=lambda s: len(s.feed)):
                extra = min(len(seq.feed) - 1, budget)
                if extra < len(seq.feed) - 1 and extra < MIN_CHUNK:
                    extra = 0
                plan.append((seq, 1 + extra))
                budget -= extra
            # In slot order: with one KV stream per sequence, llama.cpp puts a sequence into the current
            # micro-batch only if its slot follows the previous one's in the batch, so any other order
            # splits one decode step into several passes over the weights.
            plan.sort(key=lambda p: p[0].slot)
            n = 0
            to_sample: list[tuple[_Seq, int]] = []
            for seq, take in plan:
                for tok in seq.feed[:take]:
                    batch.token[n] = tok
                    batch.pos[n] = seq.pos
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq.slot
                    batch.logits[n] = 0
                    seq.pos += 1
                    n += 1
                seq.feed = seq.feed[take:]
                if not seq.feed:
                    batch.logits[n - 1] = 1
                    to_sample.append((seq, n - 1))
            if n == 0:
                raise EngineError("llamacpp: internal scheduling error (nothing to decode)")
            batch.n_tokens = n
            rc = llama.llama_decode(self._ctx.ctx, batch)
            copy_sources.clear()  # the decode carried the pending stream copies out
            self.decoded_tokens += n
            if rc != 0:
                raise EngineError(f"llamacpp: llama_decode returned {rc} with {len(active)} sequences "
                                  f"(context {self.n_ctx} tokens); lower batch_size or raise context_length")
            link_ready()  # before any leader can finish and free its cells
            for seq, idx in to_sample:
                tok = llama.llama_sampler_sample(seq.sampler.sampler, self._ctx.ctx, idx)
                step_token(seq, tok)
        return [[c for c in row] for row in results]  # type: ignore[misc]

    def close(self) -> None:
        for attr in ("_batch", "_ctx", "_model"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()
                setattr(self, attr, None)
