"""Decoding protocols: how the answers behind a number were sampled, named and recorded with it.

- ``greedy`` — temperature 0, one sample per problem; pass@1 is plain accuracy, so on AIME (30
  problems) every score is a multiple of 1/30 = 3.3 points. The paper's tables have that
  granularity (AIME 10.0, 20.0, 26.7, 30.0), so its replication file uses this protocol.
- ``r1`` — DeepSeek-R1's evaluation: temperature 0.6, top-p 0.95, ``n`` samples per problem
  (default 16; R1 used 4 to 64 by test-set size), pass@1 averaged over the samples. Finer
  granularity and less variance from one unlucky greedy path; the number it gives is not
  comparable with a greedy one, which is why every result carries its protocol.
- no protocol (``eval.protocol: null``) — ``eval.sampling`` and ``eval.n_samples`` as given, named
  ``greedy`` when that is what they are (temperature 0, one sample), else ``custom``.

A preset sets temperature, top-p, top-k (and greedy's single sample); ``eval.sampling`` still gives
the token budget (``max_tokens``), stop strings and seed. Several samples at temperature 0 are
refused: they would be the same answer counted n times.

The token budget must not cut long reasoners: the paper's setting uses 16k new tokens
(``max_tokens: 16384``), SkyThought's evaluation 32k; answers cut at ``max_tokens`` can be counted
wrong (``eval.truncated_as_wrong``) and are counted in every results table either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from cogpo_kit.engines.config import SamplingParams


@dataclass(frozen=True)
class Preset:
    temperature: float
    top_p: float
    top_k: int
    n_samples: int
    """Samples per problem when ``eval.n_samples`` is not set."""
    description: str
    fixed_n: bool = False
    """The preset takes exactly ``n_samples`` (greedy: one)."""


PRESETS: dict[str, Preset] = {
    "greedy": Preset(0.0, 1.0, 0, 1, "greedy decoding, one sample per problem: pass@1 is accuracy", fixed_n=True),
    "r1": Preset(0.6, 0.95, 0, 16, "DeepSeek-R1 protocol: temperature 0.6, top-p 0.95, n samples per problem, "
                                   "pass@1 averaged over them"),
}
"""The named decoding protocols (``eval.protocol``)."""

_DEFAULT_SAMPLING = (0.0, 1.0, 0)
"""``eval.sampling``'s default temperature, top-p, top-k (a preset replaces them silently)."""


@dataclass(frozen=True)
class Decoding:
    """The decoding an evaluation uses: protocol name, sampling, samples per problem."""

    name: str
    sampling: SamplingParams
    n_samples: int

    @property
    def label(self) -> str:
        """Short text for tables: ``greedy, 16k tok`` / ``r1 (T=0.6, top-p 0.95), pass@1 of 16, 32k tok``."""
        s, budget = self.sampling, token_label(self.sampling.max_tokens)
        if self.name == "greedy":
            return f"greedy, {budget} tok"
        knobs = f"T={s.temperature:g}, top-p {s.top_p:g}" + (f", top-k {s.top_k}" if s.top_k > 0 else "")
        return f"{self.name} ({knobs}), pass@1 of {self.n_samples}, {budget} tok"

    def record(self) -> dict:
        """What ``results.json`` and ``comparison.json`` store with every number."""
        s = self.sampling
        return {"name": self.name, "label": self.label, "temperature": s.temperature, "top_p": s.top_p,
                "top_k": s.top_k, "n_samples": self.n_samples, "max_tokens": s.max_tokens, "seed": s.seed,
                "metric": "pass@1" if self.n_samples == 1 else f"pass@1 averaged over {self.n_samples} samples"}


def token_label(n: int) -> str:
    """``16384`` -> ``16k``; ``192`` -> ``192``."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def resolve_decoding(protocol: Optional[str], sampling: SamplingParams, n_samples: Optional[int]) -> Decoding:
    """The decoding of ``eval.protocol`` / ``eval.sampling`` / ``eval.n_samples``; raises ``ValueError``
    for an unknown protocol, a greedy protocol with several samples, or n > 1 at temperature 0."""
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if protocol is not None:
        if protocol not in PRESETS:
            raise ValueError(f"unknown protocol {protocol!r} (known: {', '.join(PRESETS)}, or null to use "
                             "eval.sampling as given)")
        pre = PRESETS[protocol]
        if pre.fixed_n and n_samples not in (None, pre.n_samples):
            raise ValueError(f"protocol {protocol} takes {pre.n_samples} sample(s) per problem, got n_samples="
                             f"{n_samples}: use protocol r1 for several samples")
        s = replace(sampling, temperature=pre.temperature, top_p=pre.top_p, top_k=pre.top_k)
        return Decoding(protocol, s, n_samples or pre.n_samples)
    n = n_samples or 1
    if sampling.temperature <= 0 and n > 1:
        raise ValueError(f"n_samples={n} at temperature 0 would score one greedy answer {n} times: set "
                         "protocol: r1 (temperature 0.6, top-p 0.95), or sampling.temperature > 0 (on a command "
                         "line, give the protocol or temperature before n_samples)")
    return Decoding("greedy" if sampling.temperature <= 0 else "custom", sampling, n)


def ignored_sampling_note(protocol: Optional[str], sampling: SamplingParams) -> Optional[str]:
    """A note when a preset replaced temperature / top-p / top-k that ``eval.sampling`` set explicitly."""
    if protocol is None or protocol not in PRESETS:
        return None
    pre = PRESETS[protocol]
    given = (sampling.temperature, sampling.top_p, sampling.top_k)
    if given in (_DEFAULT_SAMPLING, (pre.temperature, pre.top_p, pre.top_k)):
        return None
    return (f"eval.protocol={protocol} replaced eval.sampling's temperature/top_p/top_k {given} with "
            f"({pre.temperature:g}, {pre.top_p:g}, {pre.top_k}); set protocol: null to sample as eval.sampling says")


def budget_note(max_tokens: int, truncated: int, total: int, threshold: float = 0.05) -> Optional[str]:
    """A note when more than ``threshold`` of the outputs were cut at ``max_tokens``."""
    if total and truncated / total > threshold:
        return (f"{truncated} of {total} outputs ({100 * truncated / total:.0f}%) were cut at max_tokens="
                f"{max_tokens}: long reasoners need a larger budget (the paper's setting: 16384; SkyThought: "
                "32768) in eval.sampling.max_tokens")
    return None
