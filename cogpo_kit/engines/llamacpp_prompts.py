"""The llama.cpp engine's prompt store: finished prompts' KV cells kept in host memory.

A prompt asked again later (a request's later samples, asked round after round, or the next request
of the same agent) restores its saved cells instead of evaluating them again; a prompt starting like
a saved one restores the shared prefix. The store keeps at most ``prompt_cache_mb`` (least recently
used dropped first). :func:`save_cells` and :func:`restore_cells` move one KV stream's cells between
the llama.cpp context and host memory.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

MIN_SHARE = 8
"""Fewest prompt tokens worth taking from another prompt's KV cells (and shortest prompt worth saving)."""


@dataclass
class SavedPrompt:
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
        self.entries: OrderedDict[tuple, SavedPrompt] = OrderedDict()
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
        self.entries[tuple(prompt)] = SavedPrompt(prompt=list(prompt), data=data, size=size)
        self.bytes += size
        self.saved += 1
        while self.bytes > self.budget or (self.max_entries is not None and len(self.entries) > self.max_entries):
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.size

    def touch(self, entry: SavedPrompt) -> None:
        self.entries.move_to_end(tuple(entry.prompt))

    def note_restored(self, entry: SavedPrompt, tokens: int) -> None:
        """``entry`` gave a sequence its first ``tokens`` prompt tokens: it becomes the most recently used."""
        self.touch(entry)
        self.restored += 1
        self.restored_tokens += tokens

    def clear(self) -> None:
        """Drop every saved prompt (the counters stay)."""
        self.entries.clear()
        self.bytes = 0

    def wants(self, prompt: list[int]) -> bool:
        """Whether a finished ``prompt`` is worth saving: the store has a budget, the prompt is longer than
        :data:`MIN_SHARE` and not saved yet (a saved one becomes the most recently used)."""
        return bool(self.budget) and len(prompt) > MIN_SHARE and not self.has(prompt)


def save_cells(llama: Any, ctx: Any, store: PromptStore, slot: int, prompt: list[int]) -> None:
    """Serialize KV stream ``slot`` (holding ``prompt``'s cells only) into ``store``, if it fits."""
    size = llama.llama_state_seq_get_size(ctx, slot)
    if size <= store.budget:
        data = (ctypes.c_uint8 * size)()
        if llama.llama_state_seq_get_data(ctx, data, size, slot) == size:
            store.add(prompt, data, size)


def restore_cells(llama: Any, ctx: Any, saved: SavedPrompt, slot: int) -> bool:
    """Write ``saved``'s cells into KV stream ``slot``; whether it worked."""
    return llama.llama_state_seq_set_data(ctx, saved.data, saved.size, slot) == saved.size
