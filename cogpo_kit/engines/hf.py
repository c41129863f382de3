"""transformers back end: batched, left-padded generation with the model's chat template, CPU or GPU.

Free-text samples are generated ``batch_size`` at a time (grouped by length limit and stop
strings, sorted by prompt length to keep padding small). Every row has its own sampler
(temperature, top_k, top_p and a seed derived from the request seed and the sample index), applied
by a logits processor, so a sample does not depend on its neighbours' settings (a batch of greedy
rows only needs generate's own argmax, which picks the same tokens). A request whose stop strings
hold :data:`FINAL_ANSWER_STOP` ends once it has written its boxed answer line. Label requests
score each choice's log-probability (the choice's tokens and the end-of-turn token) after the
prompt and sample a label from that distribution at the request's temperature (argmax at 0): the
answer is always one of the choices. With ``thinking_end`` set the model first writes freely up
to the marker, then the labels are scored after it.

A batch is decoded by :func:`cogpo_kit.engines.hf_decode.decode` (prompts read in groups of similar length,
finished rows leave the batch, a KV cache that grows by doubling; batches of up to ``batch_size`` rows, split
where a few long prompts would make the others attend over padding); ``retire_rows: false`` (or a model whose
cache is not full attention in every layer) runs ``model.generate`` on batches of ``batch_size`` rows
instead, every row to the end of the batch's longest one. Rows of several models on one base
(:mod:`cogpo_kit.engines.hf_multi`) carry their model's index (``_Gen.model``), which the stacked LoRA
layers read through ``row_models``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from itertools import groupby
from typing import Callable, Optional, Sequence

from cogpo_kit.answers.extraction import matching_brace
from cogpo_kit.engines.base import Completion, EngineCapabilities, EngineError, Request
from cogpo_kit.engines.common import (apply_stop, cpu_threads, describe_request, fit_prompt,
                                      label_completion, sample_seed)
from cogpo_kit.engines.config import EngineParams


FINAL_ANSWER_STOP = "\x00final-answer-line\x00"
"""A ``SamplingParams.stop`` entry asking this engine to end a sample once it has written a line holding a
complete boxed answer (the kit's ``The final answer is $\\boxed{...}$.``) and gone on to the next line;
the text is cut at the end of that line. Engines that do not know it never meet it (it holds NUL
characters), so their samples run to end of turn or ``max_tokens`` as before."""

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def final_answer_end(text: str) -> Optional[int]:
    """Where a completion asked to stop at its final answer ends: the end of the first line that holds a
    complete ``\\boxed{...}`` once that line has ended (a line break follows it); ``None`` before that."""
    for m in _BOX.finditer(text):
        close = matching_brace(text, m.end() - 1)
        if close < 0:
            return None
        nl = text.find("\n", close)
        return nl if nl >= 0 else None
    return None


@dataclass
class _Gen:
    """One free-text sample to generate."""

    key: tuple[int, int]
    ids: list[int]
    max_new: int
    stops: tuple[str, ...]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    model: int = 0
    """The row's model among those sharing the engine's base (:mod:`cogpo_kit.engines.hf_multi`)."""


def _row_sampler_cls():
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        """Samples each row with its own settings and generator; the chosen token keeps score 0.

        Vectorised over rows (one top-k or sort per step); each row draws its uniform number from its own
        generator and picks the token by inverse-CDF over the filtered distribution.
        """

        def __init__(self, rows: Sequence[_Gen]):
            self.rows = list(rows)
            self.gens: Optional[list] = None

        def __call__(self, input_ids, scores):
            return self.pick(scores)

        def pick(self, scores, index=None):
            """Scores of the batch rows ``index`` (their numbers among ``rows``; ``None``: all rows in order)."""
            dev = scores.device
            if self.gens is None:
                self.gens = [torch.Generator(device="cpu").manual_seed(r.seed) for r in self.rows]
                self.temp_all = torch.tensor([max(r.temperature, 1e-6) for r in self.rows], device=dev)[:, None]
                self.greedy_all = torch.tensor([r.temperature <= 0 for r in self.rows], device=dev)
                vocab = scores.shape[-1]
                self.top_k_all = torch.tensor([r.top_k if r.top_k and r.top_k > 0 else vocab for r in self.rows],
                                              device=dev)[:, None]
                self.top_p_all = torch.tensor([r.top_p if 0 < r.top_p < 1 else 1.0 for r in self.rows],
                                              device=dev)[:, None]
            if index is None:
                gens, self.temp, self.greedy = self.gens, self.temp_all, self.greedy_all
                self.top_k, self.top_p = self.top_k_all, self.top_p_all
            else:
                gens = [self.gens[i] for i in index.tolist()]
                self.temp, self.greedy = self.temp_all[index], self.greedy_all[index]
                self.top_k, self.top_p = self.top_k_all[index], self.top_p_all[index]
            logits = scores.float() / self.temp
            kmax = int(self.top_k.max())
            if kmax < logits.shape[-1]:  # every row has a top_k: a partial sort is enough
                sorted_l, order = torch.topk(logits, kmax, dim=-1)
            else:
                sorted_l, order = torch.sort(logits, dim=-1, descending=True)
            ranks = torch.arange(sorted_l.shape[-1], device=dev)[None, :]
            # top-p over the row's own top-k (renormalised), whatever the widest top-k of the batch
            probs = torch.softmax(sorted_l.masked_fill(ranks >= self.top_k, float("-inf")), -1)
            drop = (ranks >= self.top_k) | ((probs.cumsum(-1) - probs) > self.top_p)
            probs = probs.masked_fill(drop, 0.0)
            cdf = probs.cumsum(-1)
            u = torch.stack([torch.rand(1, generator=g) for g in gens]).to(dev) * cdf[:, -1:]
            idx = torch.searchsorted(cdf, u).clamp(max=cdf.shape[-1] - 1)
            tok = order.gather(1, idx).squeeze(1)
            tok = torch.where(self.greedy, scores.argmax(-1), tok)
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, tok[:, None], 0.0)
            return out

    return RowSampler


def _stop_on_text_cls():
    import torch
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        """Stops a row once its generated text (never the prompt) contains a stop string, or, with
        :data:`FINAL_ANSWER_STOP` among the stops, once it has written its final answer line."""

        def __init__(self, tok, stops: Sequence[str], start: int):
            self.final = FINAL_ANSWER_STOP in stops
            self.tok, self.stops, self.start = tok, [s for s in stops if s and s != FINAL_ANSWER_STOP], start
            self.window = max((len(s) for s in self.stops), default=0) + 4

        def __call__(self, input_ids, scores, **kwargs):
            done = [False] * input_ids.shape[0]
            if self.stops:
                tail = input_ids[:, self.start:][:, -self.window:]
                texts = self.tok.batch_decode(tail, skip_special_tokens=True)
                done = [any(s in t for s in self.stops) for t in texts]
            if self.final:
                texts = self.tok.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
                done = [d or final_answer_end(t) is not None for d, t in zip(done, texts)]
            return torch.tensor(done, device=input_ids.device)

    return StopOnText


class TransformersEngine:
    """Any causal LM transformers can load (HF id, local folder, converted embedded model, tiny)."""

    name = "transformers"
    capabilities = EngineCapabilities(streams_results=True)

    def __init__(self, config: EngineParams):
        import torch

        from cogpo_kit.models.resolve import load_causal_lm, resolve

        self.config = config
        self.logger = logging.getLogger("cogpo_kit.engines.transformers")
        self.prompt_truncations: dict[str, int] = {}
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and config.threads > 0:
            torch.set_num_threads(cpu_threads(config.threads))
        self.device = device
        self.model_id = f"transformers:{resolve(config.model).identity}"
        self.model, self.tok, seconds = load_causal_lm(config.model, dtype=config.dtype, device=device)
        self.model.eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        limit = getattr(self.model.config, "max_position_embeddings", None) or config.context_length
        self.n_ctx = int(min(config.context_length, limit))
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tok.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        self._lock = threading.Lock()
        self._full_attention: Optional[bool] = None
        """Whether the model's KV cache is full attention in every layer (then ``retire_rows`` takes the kit's
        decoding loop; else ``generate`` serves it)."""
        self.row_models = None
        """With several models on this base (:mod:`cogpo_kit.engines.hf_multi`): the row selector of the stacked
        LoRA layers (:class:`cogpo_kit.models.lora_fold.RowModels`)."""
        self.logger.info("transformers: loaded %s on %s in %.1f s", config.model, device, seconds)

    # -- prompts --------------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        text = self.tok.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True,
                                            tokenize=False)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    # -- generation -----------------------------------------------------------------------
    def generate(self, requests: Sequence[Request],
                 on_result: Optional[Callable[[int, int, Completion], None]] = None) -> list[list[Completion]]:
        with self._lock:
            return self._generate(list(requests), on_result)

    def _generate(self, requests: list[Request], on_result,
                  models: Optional[Sequence[int]] = None) -> list[list[Completion]]:
        """Serve ``requests``; ``models[i]``: request ``i``'s model among those sharing the base (``None``: all
        are the engine's one model)."""
        results: list[list[Optional[Completion]]] = [[None] * r.n for r in requests]
        think = self.config.thinking_end
        prompts: list[list[int]] = []
        free: list[_Gen] = []
        thinking: list[_Gen] = []
        for i, r in enumerate(requests):
            ids = self.prompt_ids(r.messages)
            if r.choices is not None:
                longest = max(len(self._encode(c)) for c in r.choices) + 1
                budget = longest + (int(self.config.max_thinking_tokens) if think else 0)
            else:
                budget = int(r.sampling.max_tokens)
            ids, budget, dropped = fit_prompt(ids, self.n_ctx, budget, self.config.truncation,
                                              describe_request(i, r), self.name)
            if dropped:
                count_key = r.tag if models is None else (models[i], r.tag)  # several models: counted per model
                self.prompt_truncations[count_key] = self.prompt_truncations.get(count_key, 0) + 1
                self.logger.warning("transformers: %s: dropped its %d oldest prompt tokens",
                                    describe_request(i, r), dropped)
            prompts.append(ids)
            sp = r.sampling
            for j in range(r.n):
                seed = sample_seed(sp.seed, r.sample_offset + j)
                model = models[i] if models is not None else 0
                if r.choices is None:
                    free.append(_Gen((i, j), ids, budget, tuple(sp.stop), sp.temperature, sp.top_k, sp.top_p,
                                     seed, model))
                elif think:
                    thinking.append(_Gen((i, j), ids, min(budget, int(self.config.max_thinking_tokens)),
                                         tuple(sp.stop) + (think,), sp.temperature, sp.top_k, sp.top_p, seed, model))

        def emit(i: int, j: int, c: Completion) -> None:
            results[i][j] = c
            if on_result is not None:
                on_result(i, j, c)

        for g, (text, finish, n_new) in self._run_free(free):
            i, j = g.key
            emit(i, j, label_completion(text, finish, len(g.ids), n_new, None))
        # label requests: (thinking first, then) score the choices
        contexts: list[tuple[tuple[int, int], list[int], str, int]] = []
        for g, (text, _finish, n_new) in self._run_free(thinking):
            prefix = text + think
            contexts.append((g.key, g.ids + self._encode(prefix), prefix, n_new))
        for i, r in enumerate(requests):
            if r.choices is not None and not think:
                contexts.append(((i, -1), prompts[i], "", 0))
        by_key = {c[0]: c for c in contexts}
        for (i, j), logps in self._score_all(contexts, requests, models):
            r = requests[i]
            ctx = by_key[(i, j)]
            samples = range(r.n) if j < 0 else [j]
            for jj in samples:
                label = self._pick(r, logps, sample_seed(r.sampling.seed, r.sample_offset + jj))
                n_tok = len(self._encode(label)) + ctx[3]
                emit(i, jj, label_completion(ctx[2] + label, "stop", len(prompts[i]), n_tok, r.choices, think,
                                             constrained=True))
        return [[c for c in row] for row in results]  # type: ignore[misc]

    @staticmethod
    def _pick(r: Request, logps: list[float], seed: int) -> str:
        import random

        t = r.sampling.temperature
        if t <= 0:
            return r.choices[max(range(len(logps)), key=lambda k: logps[k])]
        m = max(lp / t for lp in logps)
        weights = [math.exp(lp / t - m) for lp in logps]
        return random.Random(seed).choices(list(r.choices), weights=weights, k=1)[0]

    def _run_free(self, gens: list[_Gen]):
        """Yield (gen, (text, finish_reason, new_tokens)) batch by batch."""
        from cogpo_kit.engines.hf_decode import cache_layers, decode_batches

        if self._full_attention is None:  # a model with sliding-window (or other) cache layers is left to generate
            self._full_attention = cache_layers(self.model) is not None
        kit_loop = bool(self.config.retire_rows) and self._full_attention
        bs = max(1, int(self.config.batch_size))
        order = sorted(gens, key=lambda g: (g.max_new, g.stops, len(g.ids)))
        for (max_new, stops), group in groupby(order, key=lambda g: (g.max_new, g.stops)):
            group = list(group)
            if kit_loop:  # batches of at most bs rows, split where padding would cost more
                runs = decode_batches([len(g.ids) for g in group], bs, max_new)
            else:
                runs = [(k, min(k + bs, len(group))) for k in range(0, len(group), bs)]
            for start, end in runs:
                chunk = group[start:end]
                if kit_loop:
                    news = self._decode(chunk, max_new, stops)
                else:
                    news = self._generate_chunk(chunk, max_new, stops)
                for g, new in zip(chunk, news):
                    ended = False
                    for t_i, t in enumerate(new):
                        if t in self.eos_ids:
                            new, ended = new[:t_i], True
                            break
                    text = self.tok.decode(new, skip_special_tokens=True)
                    text, hit = apply_stop(text, stops)
                    end = final_answer_end(text) if FINAL_ANSWER_STOP in stops else None
                    if end is not None:
                        text, hit = text[:end], True
                    finish = "stop" if (ended or hit) else ("length" if len(new) >= max_new else "stop")
                    yield g, (text, finish, len(new))  # the end-of-turn token is not counted

    def _decode(self, chunk: list[_Gen], max_new: int, stops: tuple[str, ...]) -> list[list[int]]:
        """New tokens of each row of one batch, rows leaving the batch as they finish (:mod:`hf_decode`)."""
        from cogpo_kit.engines.hf_decode import decode

        sampler = _row_sampler_cls()(chunk) if any(g.temperature > 0 for g in chunk) else None
        crit = _stop_on_text_cls()(self.tok, stops, 0) if stops else None
        return decode(self.model, [g.ids for g in chunk], max_new=max_new, pad_id=self.tok.pad_token_id,
                      eos_ids=self.eos_ids, device=self.device, sampler=sampler.pick if sampler else None,
                      stop=(lambda generated, _rows: crit(generated, None).tolist()) if crit else None,
                      row_models=self.row_models, models=[g.model for g in chunk])

    def _generate_chunk(self, chunk: list[_Gen], max_new: int, stops: tuple[str, ...]) -> list[list[int]]:
        """New tokens of each row of one batch through ``model.generate`` (every row to the batch's end)."""
        import torch
        from transformers import GenerationConfig

        width = max(len(g.ids) for g in chunk)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(g.ids)) + g.ids for g in chunk], device=self.device)
        mask = torch.tensor([[0] * (width - len(g.ids)) + [1] * len(g.ids) for g in chunk], device=self.device)
        gc = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=self.eos_ids, pad_token_id=pad)
        kwargs = {"stopping_criteria": [_stop_on_text_cls()(self.tok, stops, width)]} if stops else {}
        if any(g.temperature > 0 for g in chunk):
            kwargs["logits_processor"] = [_row_sampler_cls()(chunk)]
        # an all-greedy chunk needs no sampler: generate's own argmax picks the same tokens without
        # sorting the vocabulary of every row at every step
        if self.row_models is not None:
            self.row_models.select([g.model for g in chunk])
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gc, **kwargs)
        finally:
            if self.row_models is not None:
                self.row_models.select(None)
        return [out[b, width:].tolist() for b in range(len(chunk))]

    def _score_all(self, contexts, requests: list[Request], models: Optional[Sequence[int]] = None):
        """Yield (key, [log p(choice + end of turn | context) for each choice])."""
        import torch

        rows: list[tuple[int, int, list[int], int]] = []  # (context index, choice index, ids, n_prompt)
        for ci, (key, ids, _p, _n) in enumerate(contexts):
            r = requests[key[0]]
            for k, choice in enumerate(r.choices):
                cont = self._encode(choice) + [self.eos_ids[0]]
                rows.append((ci, k, ids + cont, len(ids)))
        scores: dict[int, list[float]] = {ci: [0.0] * len(requests[c[0][0]].choices) for ci, c in enumerate(contexts)}
        base = self.model.base_model
        head = self.model.get_output_embeddings()
        bs = max(1, int(self.config.batch_size))
        rows.sort(key=lambda x: len(x[2]))
        for k in range(0, len(rows), bs):
            chunk = rows[k:k + bs]
            width = max(len(x[2]) for x in chunk)
            pad = self.tok.pad_token_id
            ids = torch.tensor([x[2] + [pad] * (width - len(x[2])) for x in chunk], device=self.device)
            mask = torch.tensor([[1] * len(x[2]) + [0] * (width - len(x[2])) for x in chunk], device=self.device)
            if self.row_models is not None:
                self.row_models.select([models[contexts[x[0]][0][0]] if models is not None else 0 for x in chunk])
            try:
                with torch.no_grad():
                    hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            finally:
                if self.row_models is not None:
                    self.row_models.select(None)
            with torch.no_grad():
                for b, (ci, choice_k, seq, n_prompt) in enumerate(chunk):
                    pos = torch.arange(n_prompt - 1, len(seq) - 1, device=self.device)
                    logp = torch.log_softmax(head(hidden[b, pos]).float(), -1)
                    target = torch.tensor(seq[n_prompt:], device=self.device)
                    scores[ci][choice_k] = float(logp.gather(1, target[:, None]).sum())
        for ci, (key, *_rest) in enumerate(contexts):
            if any(math.isnan(v) for v in scores[ci]):
                raise EngineError(f"transformers: NaN choice scores for request #{key[0]}")
            yield key, scores[ci]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
