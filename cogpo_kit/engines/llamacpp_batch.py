"""Continuous batching on one llama.cpp context: the sequences of one ``generate`` call.

Each sample is a sequence with its own KV stream (slot). :class:`ContinuousBatch` runs them step by
step: it admits waiting samples into free slots (sharing the longest evaluated prompt prefix of a
running sequence or of a prompt saved in the prompt store), keeps the active slots contiguous, plans
and writes one decode step (every sequence one token, the rest of the step to prompts, shortest
first), decodes it, samples the sequences whose prompt or last token is in, and finishes the ones
that stop (saving their prompt's cells in the prompt store and freeing their slot). See
:mod:`cogpo_kit.engines.llamacpp` for why each step is written in slot order.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from cogpo_kit.engines.base import Completion, EngineError, Request
from cogpo_kit.engines.common import apply_stop, choices_grammar, label_completion
from cogpo_kit.engines.llamacpp_prompts import (MIN_SHARE, PromptStore, SavedPrompt, common_prefix,
                                                restore_cells, save_cells)

MIN_CHUNK = 64
"""Fewest prompt tokens a step gives a sequence beyond its first one, unless that ends its prompt: each
sequence's extra tokens are a pass of their own over the weights, which a short chunk does not pay for."""


@dataclass
class StepStats:
    """Where an engine's decode steps went (summed over its ``generate`` calls), for benchmarks.

    A step is *prompt* when it feeds any prompt token (its sequences' next tokens ride along), else
    *decode* (one generated token per sequence)."""

    prompt_steps: int = 0
    """Steps that fed prompt tokens."""
    decode_steps: int = 0
    """Steps that fed only generated tokens."""
    prompt_tokens: int = 0
    """Prompt tokens fed (not the ones taken from another prompt's KV cells)."""
    generated_tokens: int = 0
    """Generated tokens fed back (one per sequence and step)."""
    prompt_s: float = 0.0
    """Seconds inside ``llama_decode`` in prompt steps."""
    decode_s: float = 0.0
    """Seconds inside ``llama_decode`` in decode steps."""
    decode_sequences: int = 0
    """Sequences summed over the decode steps (divided by ``decode_steps``: the mean batch width)."""
    wall_s: float = 0.0
    """Seconds inside ``generate`` (decode steps, sampling, scheduling and Python together)."""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Job:
    """One sample to generate: sample ``j`` of request ``sub``, its tokenized prompt and budgets."""

    sub: int
    j: int
    prompt: list[int]
    max_new: int
    label_max: int
    req: Request
    seed: int


@dataclass
class Seq:
    """A job being generated."""

    job: Job
    slot: int
    feed: list[int]
    pos: int
    sampler: object
    phase: int  # 1: free text (thinking or answer); 2: constrained label after thinking
    out: bytearray = field(default_factory=bytearray)
    n_phase: int = 0
    n_total: int = 0
    prefix: str = ""
    leader: Optional[Union["Seq", SavedPrompt]] = None
    """While a ``Seq``, this sequence waits for ``leader`` to have evaluated the shared prompt prefix;
    while a ``SavedPrompt``, its cells are still to be restored into this sequence's stream."""
    share: int = 0
    """Prompt tokens taken from ``leader``'s KV cells instead of being evaluated again."""

    @property
    def prompt(self) -> list[int]:
        return self.job.prompt


class ContinuousBatch:
    """The sequences of one ``generate`` call on ``engine`` (a :class:`LlamaCppEngine`), run by :meth:`run`.

    ``on_result(request, sample, completion)`` is called as each sample finishes; ``more()``, when
    given, is asked for further requests whenever a slot is free and nothing waits.
    """

    def __init__(self, engine: Any, requests: list[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]],
                 more: Optional[Callable[[], Any]]):
        self.engine = engine
        self.llama = engine._llama
        self.ctx = engine._ctx.ctx
        self.mem = engine._ctx.memory
        self.batch = engine._batch.batch
        self.store: PromptStore = engine.prompt_store  # finished prompts of this batch and earlier ones
        self.think = engine.config.thinking_end
        self.on_result, self.more = on_result, more
        self.requests = requests
        self.results: list[list[Optional[Completion]]] = [[None] * r.n for r in requests]
        self.pending = deque(engine._jobs(requests))  # all prompts checked before any work is done
        self.free = list(range(engine.n_parallel))[::-1]  # pop() takes the lowest free slot
        self.copy_sources: set[int] = set()  # streams read by a copy not yet carried out
        self.active: list[Seq] = []  # sequences holding a slot (KV stream)
        self.waiting: list[Seq] = []  # sequences whose leader has not evaluated their prefix yet: no slot
        self.step_prompt = 0  # prompt tokens in the step being written

    def run(self) -> list[list[Completion]]:
        """Step until every sequence has finished and ``more()`` has nothing left."""
        t0 = time.perf_counter()
        try:
            return self._run()
        finally:
            self.engine.step_stats.wall_s += time.perf_counter() - t0

    def _run(self) -> list[list[Completion]]:
        while True:
            self.ask_more()
            if not (self.pending or self.active or self.waiting):
                break
            self.admit()
            if self.free:
                self.compact()
            self.link_ready()
            n, to_sample = self.write_step(self.plan_step())
            self.decode(n)
            self.link_ready()  # before any leader can finish and free its cells
            for seq, idx in to_sample:
                self.sample(seq, idx)
        return [[c for c in row] for row in self.results]  # type: ignore[misc]

    # -- admitting sequences ----------------------------------------------------------------
    def ask_more(self) -> None:
        """Take further requests from ``more()`` when a slot is free and no job is pending."""
        if self.more is None or len(self.free) <= len(self.waiting) or self.pending:
            return
        added = list(self.more())
        if added:
            self.pending.extend(self.engine._jobs(added, base=len(self.requests)))
            self.requests.extend(added)
            self.results.extend([None] * r.n for r in added)

    def admit(self) -> None:
        """Start pending jobs while there are slots (a waiting sequence's slot is kept for it)."""
        while self.pending and len(self.free) > len(self.waiting):
            job = self.pending.popleft()
            self.start(job, *self.best_source(job))

    def best_source(self, job: Job) -> tuple[Optional[Union[Seq, SavedPrompt]], int]:
        """The prompt sharing the longest prefix with ``job`` (at least MIN_SHARE): a running or
        waiting sequence, or a finished one saved in host memory (a running one on a tie)."""
        best, best_n = None, 0
        limit = len(job.prompt) - 1  # the last prompt token is always evaluated: its logits are ours
        for s in self.active + self.waiting + list(self.store):
            n = common_prefix(s.prompt, job.prompt, limit)
            if n > best_n:
                best, best_n = s, n
        return (best, best_n) if best_n >= MIN_SHARE else (None, 0)

    def start(self, job: Job, leader: Optional[Union[Seq, SavedPrompt]], share: int) -> None:
        """A sequence for ``job``, its first ``share`` prompt tokens taken from ``leader``."""
        r = job.req
        constrained_now = r.choices is not None and not self.think
        grammar = choices_grammar(r.choices) if constrained_now else None
        seq = Seq(job=job, slot=-1, feed=list(job.prompt[share:]), pos=share,
                  sampler=self.engine._sampler(r, job.seed, grammar), phase=1, leader=leader, share=share)
        if isinstance(leader, Seq):  # takes a slot once the leader has evaluated the prefix
            self.waiting.append(seq)
            return
        seq.slot = self.free.pop()
        self.llama.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        self.active.append(seq)
        if isinstance(leader, SavedPrompt) and seq.slot not in self.copy_sources:
            self.restore(seq)

    def restore(self, seq: Seq) -> None:
        """Write a saved prompt's cells into ``seq``'s stream and keep the shared prefix.

        Done at once, so never into a stream that a copy issued since the last decode still
        reads (llama.cpp carries stream copies out at the next decode): such a sequence waits.
        """
        saved = seq.leader
        assert isinstance(saved, SavedPrompt)
        seq.leader = None
        if restore_cells(self.llama, self.ctx, saved, seq.slot):
            self.llama.llama_memory_seq_rm(self.mem, seq.slot, seq.share, -1)
            self.store.note_restored(saved, seq.share)
        else:  # could not restore: evaluate the whole prompt
            self.llama.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            seq.share, seq.pos, seq.feed = 0, 0, list(seq.job.prompt)

    def compact(self) -> None:
        """Move the sequences in the highest slots into the free lower ones.

        llama.cpp decodes a step in one pass only over sequences with consecutive slots; a gap
        left by a finished sequence would split every later step in two or more passes.
        """
        k = len(self.active)
        holes = sorted(slot for slot in self.free if slot < k)
        movers = sorted((s for s in self.active if s.slot >= k), key=lambda s: -s.slot)
        for seq, slot in zip(movers, holes):
            self.free.remove(slot)
            if seq.leader is None:  # it has cells: copy its stream down (done at the next decode)
                self.llama.llama_memory_seq_cp(self.mem, seq.slot, slot, -1, -1)
                self.llama.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
                self.copy_sources.add(seq.slot)
            self.free.append(seq.slot)
            seq.slot = slot
            self.engine.slot_moves += 1
        self.free.sort(reverse=True)  # pop() takes the lowest free slot

    def link_ready(self) -> None:
        """Give waiting sequences the prefix their leader has evaluated by now.

        A sequence waiting for a leader holds no slot meanwhile (its slot is kept free for it): a
        slot without tokens in a step would split that step into more passes over the weights.
        It takes the lowest free slot, next to the others after :meth:`compact`.
        """
        for s in self.active:
            if isinstance(s.leader, SavedPrompt) and s.slot not in self.copy_sources:
                self.restore(s)
        still = []
        for s in self.waiting:
            lead = s.leader
            assert isinstance(lead, Seq)
            if lead.leader is None and lead.pos >= s.share:
                s.slot = self.free.pop()
                self.llama.llama_memory_seq_rm(self.mem, s.slot, -1, -1)
                self.llama.llama_memory_seq_cp(self.mem, lead.slot, s.slot, -1, -1)  # streams copy whole
                self.llama.llama_memory_seq_rm(self.mem, s.slot, s.share, -1)
                self.copy_sources.add(lead.slot)
                s.leader = None
                self.active.append(s)
            else:
                still.append(s)
        self.waiting[:] = still

    # -- one decode step --------------------------------------------------------------------
    def plan_step(self) -> list[tuple[Seq, int]]:
        """How many tokens each sequence feeds in this step, in slot order.

        Every sequence with tokens to feed gets one (so the step's first pass runs over all of them,
        in consecutive slots); what is left goes to prompts, shortest first, in chunks of at least
        MIN_CHUNK tokens or the prompt's rest.
        """
        ready = [s for s in self.active if s.feed and s.leader is None]
        budget = self.engine.n_batch - len(ready)
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
        return plan

    def write_step(self, plan: list[tuple[Seq, int]]) -> tuple[int, list[tuple[Seq, int]]]:
        """Write ``plan`` into the llama batch; returns its token count and the (sequence, logits
        index) pairs to sample: the sequences whose feed is all in."""
        batch = self.batch
        n = 0
        self.step_prompt = 0
        to_sample: list[tuple[Seq, int]] = []
        for seq, take in plan:
            if seq.n_phase == 0:  # nothing generated in this phase yet: prompt (or thinking) tokens
                self.step_prompt += take
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
        return n, to_sample

    def decode(self, n: int) -> None:
        t0 = time.perf_counter()
        rc = self.llama.llama_decode(self.ctx, self.batch)
        seconds = time.perf_counter() - t0
        st = self.engine.step_stats
        if self.step_prompt:
            st.prompt_steps += 1
            st.prompt_s += seconds
        else:
            st.decode_steps += 1
            st.decode_s += seconds
            st.decode_sequences += n
        st.prompt_tokens += self.step_prompt
        st.generated_tokens += n - self.step_prompt
        self.copy_sources.clear()  # the decode carried the pending stream copies out
        self.engine.decoded_tokens += n
        if rc != 0:
            raise EngineError(f"llamacpp: llama_decode returned {rc} with {len(self.active)} sequences "
                              f"(context {self.engine.n_ctx} tokens); lower batch_size or raise context_length")

    # -- tokens and finished sequences -----------------------------------------------------------
    def sample(self, seq: Seq, idx: int) -> None:
        """Sample ``seq``'s next token from the logits at batch index ``idx`` and take it."""
        self.accept(seq, self.llama.llama_sampler_sample(seq.sampler.sampler, self.ctx, idx))

    def accept(self, seq: Seq, token: int) -> None:
        """Append ``token`` to ``seq``'s output; finish it on end of generation, a stop string or its limit."""
        r = seq.job.req
        if self.llama.llama_vocab_is_eog(self.engine._vocab, token):
            self.finish(seq, "stop", seq.out.decode("utf-8", errors="ignore"))
            return
        seq.out += self.engine._piece_bytes(token)
        seq.n_phase += 1
        seq.n_total += 1
        text = seq.out.decode("utf-8", errors="ignore")
        stops = tuple(r.sampling.stop)
        if seq.phase == 1 and r.choices is not None and self.think:
            stops = stops + (self.think,)
        if stops:
            cut, hit = apply_stop(text, stops)
            if hit:
                self.finish(seq, "stop", cut)
                return
        if seq.n_phase >= self.token_limit(seq) or seq.pos + 1 >= self.engine.n_ctx:
            self.finish(seq, "length", text)
            return
        seq.feed = [token]

    def token_limit(self, seq: Seq) -> int:
        """Most tokens of ``seq``'s current phase: the label, the thinking, or the free answer."""
        job, r = seq.job, seq.job.req
        if seq.phase == 2:
            return job.label_max
        if r.choices is not None and self.think:
            return int(self.engine.config.max_thinking_tokens)
        return job.max_new

    def finish(self, seq: Seq, reason: str, text: str) -> None:
        """``seq`` is done (or its thinking is: then the label follows); report it and free its slot."""
        job, r = seq.job, seq.job.req
        if seq.phase == 1 and r.choices is not None and self.think:  # thinking done: now the label
            self.start_label(seq, text)
            return
        c = label_completion(seq.prefix + text, reason, len(job.prompt), seq.n_total, r.choices, self.think,
                             constrained=True)
        self.results[job.sub][job.j] = c
        self.keep(seq)
        self.active.remove(seq)
        self.llama.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        self.free.append(seq.slot)
        self.free.sort(reverse=True)
        if self.on_result is not None:
            self.on_result(job.sub, job.j, c)

    def start_label(self, seq: Seq, thinking: str) -> None:
        """After the thinking marker: the constrained label, its grammar applying from the marker on."""
        job, r = seq.job, seq.job.req
        seq.prefix = thinking + self.think
        seq.phase = 2
        seq.n_phase = 0
        seq.out = bytearray()
        seq.sampler = self.engine._sampler(r, job.seed, choices_grammar(r.choices))
        self.llama.llama_memory_seq_rm(self.mem, seq.slot, len(job.prompt), -1)
        seq.pos = len(job.prompt)
        seq.feed = self.engine.tokenize(seq.prefix, add_special=False)

    def keep(self, seq: Seq) -> None:
        """Save a finished prompt's KV cells in host memory for the prompts still to come."""
        prompt = seq.job.prompt
        if not self.store.wants(prompt):
            return
        self.llama.llama_memory_seq_rm(self.mem, seq.slot, len(prompt), -1)  # the prompt's cells only
        save_cells(self.llama, self.ctx, self.store, seq.slot, prompt)
