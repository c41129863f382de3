"""Pieces every back end shares: per-sample seeds, label parsing, grammars, stop strings, context fit.

Kept free of heavy imports so that the translation logic of each back end can be unit-tested
without the back end installed.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Optional, Sequence

from cogpo_kit.engines.base import Completion, ContextLengthError, Request


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a request whose base seed is ``seed`` (31-bit, stable)."""
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def cpu_threads(requested: int) -> int:
    """CPU threads to use: ``requested`` if positive, else the cores this process may run on."""
    if requested and requested > 0:
        return int(requested)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


SPIN_COUNT = "300"


def openmp_defaults() -> None:
    """Short OpenMP spin-waiting, set before llama.cpp (or torch) loads its OpenMP runtime.

    OpenMP threads that spin while waiting starve each other on a busy CPU; purely passive waiting
    is slower when the CPU is free. Measured on 2 cores with the 16 prompts of
    ``benchmarks/engines.py`` through the llama.cpp engine: idle CPU, passive 46.1 tok/s, spin 300
    50.9, active 52.5; with two competing busy processes, passive 27.9, spin 300 28.0, spin 10000
    13.3. Values the user set (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) win.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def describe_request(index: int, request: Request, limit: int = 60) -> str:
    """A short human description of a request for error messages (index, tag, start of last message)."""
    last = request.messages[-1].get("content", "") if request.messages else ""
    snippet = " ".join(str(last).split())[:limit]
    tag = f" tag '{request.tag}'" if request.tag else ""
    return f"request #{index}{tag} ('{snippet}...')"


def check_request(index: int, request: Request) -> None:
    """Reject malformed requests early with a message naming the request and the field."""
    where = f"request #{index}" + (f" (tag '{request.tag}')" if request.tag else "")
    if not request.messages:
        raise ValueError(f"{where}: field 'messages' is empty")
    for j, msg in enumerate(request.messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"{where}: messages[{j}] must be a dict with 'role' and 'content'")
        if not isinstance(msg["content"], str):
            raise ValueError(f"{where}: messages[{j}].content must be a string")
    if request.n < 1:
        raise ValueError(f"{where}: field 'n' must be >= 1 (got {request.n})")
    if request.sample_offset < 0:
        raise ValueError(f"{where}: field 'sample_offset' must be >= 0")
    if request.sampling.max_tokens < 1:
        raise ValueError(f"{where}: sampling.max_tokens must be >= 1")
    if request.choices is not None:
        if not request.choices or any(not isinstance(c, str) or not c for c in request.choices):
            raise ValueError(f"{where}: field 'choices' must be a non-empty tuple of non-empty strings")


def label_budget(request: Request) -> int:
    """Token budget of a label answer without a tokenizer: room for the longest choice and the end
    token (a character is at most one token), at least ``max_tokens``; "mediu" is not an answer."""
    return max(int(request.sampling.max_tokens), max(len(c) for c in request.choices or ("x",)) + 1)


def apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string (which is not included); returns (text, stopped)."""
    cut = -1
    for s in stops:
        if not s:
            continue
        k = text.find(s)
        if k >= 0 and (cut < 0 or k < cut):
            cut = k
    if cut < 0:
        return text, False
    return text[:cut], True


def gbnf_literal(text: str) -> str:
    """A GBNF string literal for ``text``."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{out}"'


def choices_grammar(choices: Sequence[str]) -> str:
    """GBNF grammar whose only sentences are the given choices (llama.cpp ``grammar``)."""
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices)


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def parse_choice(text: str, choices: Sequence[str], thinking_end: Optional[str] = None) -> Optional[str]:
    """The label a free-text answer gives, or ``None``.

    Looks after the end-of-thinking marker when one is given. An exact match (case, surrounding
    punctuation and whitespace ignored) wins; otherwise the choice whose word appears last wins
    (the final answer usually comes last); ties of overlapping words go to the longer choice.
    """
    if text is None:
        return None
    if thinking_end:
        if thinking_end in text:
            text = text.rsplit(thinking_end, 1)[1]
    norm = _norm(text)
    for c in choices:
        if norm == _norm(c):
            return c
    best: tuple[int, int, str] | None = None
    for c in choices:
        pat = r"(?<![0-9a-z])" + re.escape(_norm(c)) + r"(?![0-9a-z])"
        for m in re.finditer(pat, norm):
            cand = (m.start(), len(c), c)
            if best is None or cand[:2] > best[:2]:
                best = cand
    return best[2] if best else None


def label_completion(text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                     choices: Optional[Sequence[str]], thinking_end: Optional[str] = None,
                     constrained: bool = False) -> Completion:
    """Build a :class:`Completion`; for choice requests fill ``choice`` (exact when ``constrained``)."""
    if finish == "stop" and not text.strip():
        finish = "empty"
    choice = None
    if choices is not None and finish in ("stop", "length"):
        if constrained:
            answer = text.rsplit(thinking_end, 1)[1] if thinking_end and thinking_end in text else text
            choice = answer if answer in choices else None
            if choice is not None and finish == "length":  # the grammar is complete: so is the answer
                finish = "stop"
        else:
            choice = parse_choice(text, choices, thinking_end)
    return Completion(text=text, finish_reason=finish, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, choice=choice)


def error_completion(message: str, prompt_tokens: int = 0) -> Completion:
    """A failed sample (recorded in the cache as an error, never served later)."""
    return Completion(text="", finish_reason="error", prompt_tokens=prompt_tokens, error=message)


def fit_prompt(tokens: list[int], n_ctx: int, max_tokens: int, policy: str,
               where: str, engine: str) -> tuple[list[int], int, int]:
    """Make a prompt fit the context: returns (tokens, max_new_tokens, dropped_tokens).

    A prompt that leaves no room for one generated token is an error (``policy == "error"``) or
    loses its oldest tokens (``"left"``) so that ``max_tokens`` fit after it. A prompt that fits
    but leaves less than ``max_tokens`` has its generation budget shortened (finish "length").
    """
    n = len(tokens)
    if n + max_tokens <= n_ctx:
        return tokens, max_tokens, 0
    if policy == "left":
        keep = n_ctx - min(max_tokens, n_ctx // 2)
        if keep < n:
            return tokens[n - keep:], n_ctx - keep, n - keep
        return tokens, n_ctx - n, 0
    if n >= n_ctx:
        raise ContextLengthError(
            f"{engine}: {where} has {n} prompt tokens but the context holds {n_ctx}; shorten the "
            f"prompt, raise context_length, or set truncation: left")
    return tokens, n_ctx - n, 0
