"""The transformers engine's decoding loop: rows that leave the batch when they finish, prompts read by length.

:func:`decode` does what ``model.generate`` does for the kit's requests (left-padded prompts, positions from
the attention mask, a KV cache, one token per row and step, greedy argmax or a per-row sampler) with less
work, not other tokens (up to rounding in bfloat16, where the shape of a batch can move a near tie):

- **prompts by length**: the prompts are read (prefill) in groups of similar length, each padded only to its
  group's longest (:func:`prefill_groups`), then joined in one KV cache; ``generate`` pads every prompt of the
  batch to the longest one;
- **the KV cache grows by doubling** (:class:`PreallocatedLayer`, up to the prompt width plus the token budget)
  and a step writes its one new position into it (``DynamicCache`` copies every layer's cache at every step);
- **rows retire**: a row that has ended (an end-of-turn token, its stop strings or final answer line, the
  token budget) leaves the batch with its rows of the KV cache, so a step computes the rows still running
  (``generate`` carries every row to the end of the longest). Dropping rows copies the cache, so it is done
  when the work saved (the finished rows times the steps left) outweighs the copy (:func:`worth_dropping`).

:func:`decode_batches` splits rows sorted by prompt length into decode batches where one batch would pay too
much attention over padding (a few very long prompts among short ones). The costs are in *row-steps* (one row
through one decoding step, attention aside), measured for a 135M model in bfloat16 on a 2-core CPU:
:data:`STEP_FIXED`, :data:`ATTENTION_PER_POSITION`, :data:`COPY_PER_POSITION`.

With ``row_models`` (:class:`cogpo_kit.models.lora_fold.RowModels`) rows of different models (one base with
stacked LoRA updates) share the batch; the selector follows the rows.

Run the tests with ``.venv/bin/pytest -q tests/test_engines_hf_batching.py``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

STEP_FIXED = 100.0
"""Cost of one decoding step whatever its rows (reading the weights, one call per layer), in row-steps."""
ATTENTION_PER_POSITION = 0.006
"""Cost of attending to one cached position, per row and step, in row-steps."""
COPY_PER_POSITION = 0.01
"""Cost of moving one row's cached keys and values of one position (rows dropped from the cache), in row-steps."""
PREFILL_FIXED = 100.0
"""Cost of one forward pass over prompts whatever their number, in prompt tokens (reading the weights)."""


def _layer_cls():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A decoder layer's KV cache in a buffer that grows by doubling, up to ``limit`` positions (prompt width
        + budget); ``keys`` / ``values`` are views of the filled part, so appending a position copies one
        position (and, now and then, the filled part once, when the buffer doubles)."""

        def __init__(self, capacity: int, limit: int):
            super().__init__()
            self.capacity = int(min(capacity, limit))
            self.limit = int(limit)
            self.length = 0

        def _allocate(self, rows: int, key_states, value_states) -> None:
            import torch

            self.device = key_states.device
            self.k_buf = torch.zeros(rows, key_states.shape[1], self.capacity, key_states.shape[-1],
                                     dtype=key_states.dtype, device=self.device)
            self.v_buf = torch.zeros(rows, value_states.shape[1], self.capacity, value_states.shape[-1],
                                     dtype=value_states.dtype, device=self.device)
            self.is_initialized = True

        def _views(self) -> None:
            self.keys = self.k_buf[:, :, :self.length]
            self.values = self.v_buf[:, :, :self.length]

        def _move(self, rows, capacity: int) -> None:
            """Buffers of ``capacity`` positions holding the filled part of rows ``rows`` (``None``: all)."""
            import torch

            new = []
            for buf in (self.k_buf, self.v_buf):
                n = buf.shape[0] if rows is None else len(rows)
                out = torch.empty((n, buf.shape[1], capacity, buf.shape[-1]), dtype=buf.dtype, device=self.device)
                if rows is None:
                    out[:, :, :self.length] = buf[:, :, :self.length]
                elif buf.device.type == "cpu":  # gathered straight into place (indexing, then assigning, copies twice)
                    torch.index_select(buf[:, :, :self.length], 0, rows, out=out[:, :, :self.length])
                else:
                    out[:, :, :self.length] = buf[rows, :, :self.length]
                new.append(out)
            self.k_buf, self.v_buf = new
            self.capacity = capacity
            self._views()

        def lazy_initialization(self, key_states, value_states) -> None:
            self._allocate(key_states.shape[0], key_states, value_states)

        def write_prompt(self, rows, n_rows: int, width: int, key_states, value_states) -> None:
            """Put the prompt keys/values of batch rows ``rows`` (left-padded to their own width) at the end of the
            first ``width`` positions; the positions before stay zero (padding, masked)."""
            if not self.is_initialized:
                self._allocate(n_rows, key_states, value_states)
            w = key_states.shape[-2]
            self.k_buf[rows, :, width - w:width] = key_states
            self.v_buf[rows, :, width - w:width] = value_states
            self.length = width
            self._views()

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.length + n > self.capacity:
                if self.length + n > self.limit:
                    raise RuntimeError(f"KV cache of {self.limit} positions is full ({self.length} + {n})")
                self._move(None, min(self.limit, max(2 * self.capacity, self.length + n)))
            self.k_buf[:, :, self.length:self.length + n] = key_states
            self.v_buf[:, :, self.length:self.length + n] = value_states
            self.length += n
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices) -> None:
            """Keep the rows ``indices``; only the filled positions are copied (the rest is written before read)."""
            if self.is_initialized:
                self._move(indices, self.capacity)

    return PreallocatedLayer


def cache_layers(model) -> Optional[int]:
    """How many KV-cache layers the kit's loop gives ``model`` (each one full attention), or ``None`` when the
    model's own cache has other kinds (sliding windows, linear attention, ...): then ``generate`` serves it."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config the cache cannot read: leave the model to generate
        return None
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return len(layers)


def preallocated_cache(n_layers: int, width: int, max_new: int):
    """A ``DynamicCache`` whose layers are :class:`PreallocatedLayer`: room for the prompt ``width`` and 64 new
    positions at first, doubling up to ``width + max_new``."""
    from transformers import DynamicCache

    cache = DynamicCache()
    layer = _layer_cls()
    cache.layers = [layer(width + min(max_new, 64), width + max_new) for _ in range(n_layers)]
    cache.layer_class_to_replicate = None
    return cache


def prefill_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Row numbers grouped for reading the prompts: by length, each group padded to its longest prompt; the
    split of least estimated cost (a forward pass costs :data:`PREFILL_FIXED` tokens, a group its rows times
    its width)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[order[end - 1]]
        for start in range(end):
            cost = best[start] + PREFILL_FIXED + (end - start) * width
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = n
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def decode_batches(lengths: Sequence[int], max_rows: int, steps: int) -> list[tuple[int, int]]:
    """``(start, end)`` runs of rows sorted by prompt length (``lengths`` ascending) that decode together: the
    split of least estimated cost (each batch pays :data:`STEP_FIXED` per step, each row one row-step plus
    attention over its batch's width), no batch over ``max_rows`` rows."""
    n = len(lengths)
    inf = float("inf")
    best = [0.0] + [inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max(1, max_rows)), end):
            width = lengths[end - 1] + steps / 2
            cost = best[start] + steps * (STEP_FIXED + (end - start) * (1 + ATTENTION_PER_POSITION * width))
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs = []
    end = n
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def worth_dropping(n_done: int, n_kept: int, steps_left: int, length: int) -> bool:
    """Whether dropping ``n_done`` finished rows from the cache (copying the ``n_kept`` others' ``length``
    positions) costs less than carrying them through the ``steps_left`` steps still possible."""
    if n_done == 0:
        return False
    if n_kept == 0:
        return True
    saved = n_done * steps_left * (1 + ATTENTION_PER_POSITION * length)
    return saved >= n_kept * length * COPY_PER_POSITION


StopCheck = Callable[[object, list[int]], list[bool]]
"""``check(generated, rows) -> done``: ``generated`` is the ``[active rows, steps]`` tensor of tokens so far,
``rows`` the original row numbers; one flag per active row (its stop strings or final line written)."""


def _read_prompts(model, prompts, cache, width: int, pad_id: int, device, row_models, models):
    """Read the prompts by length groups into ``cache`` (left-padded to ``width``); the last logits per row."""
    import torch

    n = len(prompts)
    logits = None
    for group in prefill_groups([len(p) for p in prompts]):
        w = max(len(prompts[i]) for i in group)
        ids = torch.tensor([[pad_id] * (w - len(prompts[i])) + list(prompts[i]) for i in group], device=device)
        mask = torch.tensor([[0] * (w - len(prompts[i])) + [1] * len(prompts[i]) for i in group], device=device)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if row_models is not None:
            row_models.select([models[i] for i in group] if models is not None else None)
        from transformers import DynamicCache

        sub = DynamicCache()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=sub, use_cache=True,
                    logits_to_keep=1).logits[:, -1, :]
        if logits is None:
            logits = torch.empty(n, out.shape[-1], dtype=out.dtype, device=device)
        rows = torch.tensor(group, device=device)
        logits[rows] = out
        for layer, filled in zip(cache.layers, sub.layers):
            layer.write_prompt(rows, n, width, filled.keys, filled.values)
    return logits


def decode(model, prompts: Sequence[Sequence[int]], *, max_new: int, pad_id: int, eos_ids: Sequence[int],
           device="cpu", sampler=None, stop: Optional[StopCheck] = None, row_models=None,
           models: Optional[Sequence[int]] = None, retire: bool = True) -> list[list[int]]:
    """Generate up to ``max_new`` tokens after each prompt (one batch); returns each row's new tokens, its
    end-of-turn token included when it wrote one.

    ``sampler(scores, rows)`` turns the ``[active, vocab]`` float scores of the rows ``rows`` (original row
    numbers) into scores whose argmax is the chosen token (``None``: greedy). ``stop`` ends rows by their text.
    ``row_models`` / ``models``: the model of each row when several share the batch. ``retire=False`` keeps
    finished rows in the batch to the end (what ``generate`` does; for checks).
    """
    import torch

    n = len(prompts)
    if n == 0:
        return []
    width = max(len(p) for p in prompts)
    n_layers = cache_layers(model)
    if n_layers is None:
        raise ValueError(f"{type(model).__name__}: its KV cache is not full attention in every layer; decode it "
                         "with model.generate")
    cache = preallocated_cache(n_layers, width, max_new)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    pos = torch.tensor([[len(p) - 1] for p in prompts], device=device)
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    active = torch.arange(n, device=device)  # original row number of each batch row
    out: list[list[int]] = [[] for _ in range(n)]
    generated = torch.empty(n, 0, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    try:
        with torch.no_grad():
            logits = _read_prompts(model, prompts, cache, width, pad_id, device, row_models, models)
            if row_models is not None:
                row_models.select(models)
            for step in range(max_new):
                scores = logits.float()
                if sampler is not None:
                    scores = sampler(scores, active)
                tok = scores.argmax(-1)
                tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
                generated = torch.cat([generated, tok[:, None]], 1)
                for row, t, f in zip(active.tolist(), tok.tolist(), finished.tolist()):
                    if not f:
                        out[row].append(t)
                if step + 1 >= max_new:
                    break
                finished = finished | torch.isin(tok, eos)
                if stop is not None:
                    finished = finished | torch.tensor(stop(generated, active.tolist()), device=device)
                n_done = int(finished.sum())
                if n_done == len(active):
                    break
                mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=device)], 1)
                pos = pos + 1
                if retire and worth_dropping(n_done, len(active) - n_done, max_new - step - 1, mask.shape[1]):
                    keep = (~finished).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    if row_models is not None:
                        row_models.keep(keep)
                    active, mask, pos, generated = active[keep], mask[keep], pos[keep], generated[keep]
                    tok, finished = tok[keep], finished[keep]
                logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=cache,
                               use_cache=True).logits[:, -1, :]
    finally:
        if row_models is not None:
            row_models.select(None)
    return out
