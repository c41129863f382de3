"""Rows and tokens each training run will see: real where the run's stages have written them, else estimated.

Where the numbers come from, best first (each row of the plan says which):

- **rows**: ``02_rethink/sft.jsonl`` (D_SFT*), ``01_critique/input.jsonl`` (every original CoT), ``03_pairs/pairs.jsonl``;
  before those exist, the data set's size (``data.limit``; the local file's rows; the hub data sets' published
  sizes in :data:`HUB_ROWS`) and, for D_SFT* and the pairs, its expected share under the CRV assumptions
  (:mod:`cogpo_kit.planning.crv_calls`);
- **tokens per row**: the pairs' recorded lengths (``chosen_tokens`` / ``rejected_tokens``, chat template included);
  the rows' texts counted with the student's tokenizer when it is on this machine (else characters / 4), each cut
  at ``max_length``; before any text exists, ``PlanSettings.tokens_per_row`` or ``max_length`` (an upper bound).

A preference pair is counted as two sides padded to the longer one (they go through the model together).
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from cogpo_kit.answers.response import PROMPT_TEMPLATE

HUB_ROWS: dict[str, int] = {"bespoke_stratos": 16_700, "openthoughts": 114_000, "sky_t1": 16_400}
"""Approximate rows of the hub CoT data sets (their Hugging Face dataset viewers: 16.7k, 114k, 16.4k)."""
CHAT_OVERHEAD = 12
"""Tokens a chat template adds around one user and one assistant turn (role markers, BOS/EOS), roughly."""
CHARS_PER_TOKEN = 4.0
"""Characters per token where no tokenizer is on this machine (English and math text, roughly)."""
SAMPLE_ROWS = 2000
"""Rows whose texts are counted (evenly spaced); the mean of the sample stands for the set."""


@dataclass(frozen=True)
class Lengths:
    """Token lengths of a set of rows (one side of a pair each, or a whole SFT row)."""

    mean: float
    """Mean tokens per row, each row cut at the max length."""
    square_mean: float
    """Token-weighted mean length (sum of len^2 / sum of len): the sequence length the average token sits in."""
    source: str
    """Where the lengths came from."""

    @classmethod
    def of(cls, values: Sequence[float], source: str) -> "Lengths":
        vals = [float(v) for v in values if v > 0]
        if not vals:
            return cls(0.0, 0.0, source)
        return cls(statistics.fmean(vals), sum(v * v for v in vals) / sum(vals), source)

    @classmethod
    def bound(cls, length: float, source: str) -> "Lengths":
        return cls(float(length), float(length), source)


class TokenCounter:
    """Counts tokens with the student's tokenizer if it is on this machine (nothing is downloaded or converted)."""

    def __init__(self, spec: str):
        self.spec = spec
        self._tok = None
        self._tried = False

    def _tokenizer(self):
        if not self._tried:
            self._tried = True
            path = _local_tokenizer_path(self.spec)
            self._tok = _load_tokenizer(path) if path is not None else None
        return self._tok

    @property
    def how(self) -> str:
        return (f"tokenizer of {self.spec}" if self._tokenizer() is not None
                else f"characters / {CHARS_PER_TOKEN:g} (no tokenizer of {self.spec} on this machine)")

    def count(self, texts: Sequence[str]) -> list[int]:
        tok = self._tokenizer()
        if tok is None:
            return [int(len(t) / CHARS_PER_TOKEN) + 1 for t in texts]
        return [len(ids) for ids in tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # an unreadable or partial folder: count characters instead
        return None


def _local_tokenizer_path(spec: str) -> Optional[str]:
    from cogpo_kit.models.specs import cache_root, embedded_hf_dir, is_hub_id

    if spec.startswith("embedded:"):
        folder = embedded_hf_dir(spec.split(":", 1)[1])
        return str(folder) if (folder / "tokenizer_config.json").exists() else None
    if spec.startswith("tiny:"):
        from cogpo_kit.models.tiny import tiny_folder_name

        try:
            folder = cache_root() / "tiny" / tiny_folder_name(spec)
        except ValueError:
            return None
        if (folder / "tokenizer_config.json").exists():
            return str(folder)
        return _local_tokenizer_path("embedded:smollm2-135m-instruct")  # tiny models use the embedded tokenizer
    path = Path(spec).expanduser()
    if path.is_dir():
        from cogpo_kit.models.adapters import tokenizer_path

        try:
            return tokenizer_path(str(path))
        except Exception:  # an adapter whose base is gone: no tokenizer
            return None
    if is_hub_id(spec):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(spec, "tokenizer_config.json")
        except Exception:
            return None
        return str(Path(found).parent) if isinstance(found, str) else None
    return None


def sample(rows: Sequence, n: int = SAMPLE_ROWS) -> list:
    """At most ``n`` rows, evenly spaced (all of them when there are fewer)."""
    if len(rows) <= n:
        return list(rows)
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def row_lengths(rows: Sequence[dict], text: Callable[[dict], str], counter: TokenCounter, max_length: int,
                what: str) -> Lengths:
    """Lengths of SFT-like rows: the prompt template around ``text(row)`` plus the chat overhead, cut at
    ``max_length``."""
    picked = sample(rows)
    if not picked:
        return Lengths(0.0, 0.0, f"{what}: no rows")
    counts = counter.count([text(r) for r in picked])
    lengths = [min(max_length, c + CHAT_OVERHEAD) for c in counts]
    share = "" if len(picked) == len(rows) else f", {len(picked)} of {len(rows)} rows sampled"
    return Lengths.of(lengths, f"{what}, counted with the {counter.how}{share}")


def sft_text(row: dict) -> str:
    """The text of an SFT row: the prompt (problem in the training template) and the response or reasoning."""
    response = row.get("response") or row.get("reasoning") or ""
    return PROMPT_TEMPLATE.format(problem=str(row.get("problem", "")).strip()) + "\n" + str(response)


def pair_lengths(pairs: Sequence[dict], max_length: int, counter: TokenCounter, what: str) -> Lengths:
    """Per-pair model tokens: both sides padded to the longer one, each side cut at ``max_length``."""
    picked = sample(pairs)
    if not picked:
        return Lengths(0.0, 0.0, f"{what}: no pairs")
    recorded = all(isinstance(p.get("chosen_tokens"), int) and isinstance(p.get("rejected_tokens"), int)
                   for p in picked)
    if recorded:
        sides = [min(max_length, max(p["chosen_tokens"], p["rejected_tokens"])) for p in picked]
        how = "their recorded token lengths"
    else:
        prompts = [" ".join(m.get("content", "") for m in p.get("prompt", [])) for p in picked]
        chosen = counter.count([a + "\n" + str(p.get("chosen", "")) for a, p in zip(prompts, picked)])
        rejected = counter.count([a + "\n" + str(p.get("rejected", "")) for a, p in zip(prompts, picked)])
        sides = [min(max_length, max(c, r) + CHAT_OVERHEAD) for c, r in zip(chosen, rejected)]
        how = f"counted with the {counter.how}"
    share = "" if len(picked) == len(pairs) else f", {len(picked)} of {len(pairs)} pairs sampled"
    one = Lengths.of(sides, "")
    return Lengths(2 * one.mean, one.square_mean, f"{what}, {how}{share}; two sides padded to the longer")


def count_file_rows(path: Path) -> Optional[int]:
    """Rows of a local JSONL file (non-blank lines); ``None`` for other formats."""
    if path.is_file() and path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def data_rows(data) -> tuple[Optional[int], str]:
    """``(rows, source)`` of a run's CoT data set before stage 01 has read it (``None``: unknown)."""
    from cogpo_kit.data.loaders import LOADERS
    from cogpo_kit.data.readers import data_root

    spec = LOADERS.get(data.source)
    n: Optional[int] = None
    source = "unknown"
    if data.path:
        n = count_file_rows(Path(data.path).expanduser())
        source = f"{data.path}" if n is not None else f"{data.path} (rows not countable without reading it)"
    elif spec is not None and spec.default_path:
        n = count_file_rows(data_root() / spec.default_path)
        source = f"data/{spec.default_path}"
    elif data.source in HUB_ROWS:
        n = HUB_ROWS[data.source]
        source = f"{spec.hub if spec else data.source} (about {n:,} rows, its hub page)"
    if data.limit is not None:
        if n is None or data.limit < n:
            return data.limit, f"data.limit of {source}"
    return n, source
