"""Training FLOPs and time from token counts, at an assumed utilisation of the GPUs' peak.

Per trained token: ``6 N`` for full fine-tuning (forward 2 N, backward 4 N; N = the parameters a token multiplies
through, every layer and the LM head, :meth:`~cogpo_kit.planning.shapes.ModelShape.matmul_params`), ``4 N`` under
LoRA (the frozen weights need no weight gradients; the adapters' own FLOPs are left out), plus causal attention
``6 L d s`` (scores and values, forward and backward, half the square; ``d`` the query width, ``s`` the length of
the token's sequence). A reference forward costs ``2 N + 2 L d s`` per token: each step for DPO-family methods
without precomputed log-probs, once per pair set when they are precomputed (once for all CogPO-family methods
with ``share_ref_log_probs``), never for SimPO. Recomputation under gradient checkpointing is not counted: the
utilisation (MFU) is a share of these model FLOPs, so the recomputation is part of what keeps it below 1.

Time = FLOPs / (GPUs x peak FLOP/s x MFU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from cogpo_kit.planning.shapes import ModelShape


def train_flops_per_token(shape: ModelShape, seq_len: float, *, lora: bool) -> float:
    """Model FLOPs of training on one token of a sequence of ``seq_len`` tokens."""
    dense = (4 if lora else 6) * shape.matmul_params()
    return dense + 6.0 * shape.layers * shape.q_dim * seq_len


def forward_flops_per_token(shape: ModelShape, seq_len: float) -> float:
    """FLOPs of a forward pass (a reference model's) on one token."""
    return 2.0 * shape.matmul_params() + 2.0 * shape.layers * shape.q_dim * seq_len


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps a run takes and how many tokens they process."""

    rows: float
    """Rows (pairs) per epoch."""
    epochs: float
    """Passes over them (``optim.epochs``; ignored when ``max_steps`` is set)."""
    global_batch: int
    """Rows per optimizer step: per-device batch x accumulation x processes."""
    steps: int
    """Optimizer steps."""
    tokens: float
    """Tokens the model processes over the run (both sides of every pair)."""
    by_steps: bool = False
    """Whether ``max_steps`` set the length (``epochs`` then plays no part)."""


def schedule(rows: float, tokens_per_row: float, optim, processes: int) -> Schedule:
    """The steps and tokens of a run: ``max_steps`` when set, else ``ceil(rows x epochs / global batch)``."""
    global_batch = optim.per_device_batch_size * optim.gradient_accumulation_steps * max(1, processes)
    if optim.max_steps and optim.max_steps > 0:
        steps = int(optim.max_steps)
        seen = steps * global_batch
    else:
        seen = rows * optim.epochs
        steps = int(math.ceil(seen / global_batch)) if seen > 0 else 0
    return Schedule(rows=rows, epochs=optim.epochs, global_batch=global_batch, steps=steps,
                    tokens=seen * tokens_per_row, by_steps=bool(optim.max_steps and optim.max_steps > 0))


def seconds(flops: float, gpus: int, peak_flops: float, mfu: float) -> Optional[float]:
    """Wall time of ``flops`` on ``gpus`` devices at ``mfu`` of ``peak_flops`` each (``None`` without a peak)."""
    if peak_flops <= 0:
        return None
    return flops / (max(1, gpus) * peak_flops * mfu)


def hours(secs: Optional[float]) -> str:
    """``3.2 h``, ``14 min``, ``n/a``."""
    if secs is None:
        return "n/a"
    if secs >= 3600:
        return f"{secs / 3600:.1f} h"
    if secs >= 60:
        return f"{secs / 60:.0f} min"
    return f"{secs:.0f} s"
