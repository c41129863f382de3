"""Preference metrics per gap type, and the ``metrics.jsonl`` every training stage writes.

Metrics go into the trainer's metric store (averaged over the logging window by TRL's ``log``), so they
appear in the log history next to TRL's own: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies`` for the whole batch, and the same under ``<gap>_gap/`` for each gap type
(``small_gap/rewards/margins``, ...) with the gap's mean ``loss`` and its number of ``pairs``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from cogpo_kit.levels import GAPS

GAP_IDS = {g: i for i, g in enumerate(GAPS)}


def gap_ids(values: list) -> torch.Tensor:
    """Gap names -> integer ids (-1 for anything else)."""
    return torch.tensor([GAP_IDS.get(str(v), -1) for v in values], dtype=torch.long)


def record_pair_metrics(store: dict, gather: Callable[[torch.Tensor], torch.Tensor], *,
                        chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                        losses: Optional[torch.Tensor] = None, gap: Optional[torch.Tensor] = None,
                        prefix: str = "") -> None:
    """Append batch and per-gap reward metrics to ``store`` (a ``defaultdict(list)``), gathered over processes."""
    chosen = gather(chosen_rewards.detach().float())
    rejected = gather(rejected_rewards.detach().float())
    margins = chosen - rejected
    acc = (chosen > rejected).float()
    store[f"{prefix}rewards/chosen"].append(chosen.mean().item())
    store[f"{prefix}rewards/rejected"].append(rejected.mean().item())
    store[f"{prefix}rewards/margins"].append(margins.mean().item())
    store[f"{prefix}rewards/accuracies"].append(acc.mean().item())
    if gap is None:
        return
    g = gather(gap.to(chosen.device))
    all_losses = gather(losses.detach().float()) if losses is not None else None
    for name, gid in GAP_IDS.items():
        sel = g == gid
        if not bool(sel.any()):
            continue
        key = f"{prefix}{name}_gap"
        store[f"{key}/rewards/chosen"].append(chosen[sel].mean().item())
        store[f"{key}/rewards/rejected"].append(rejected[sel].mean().item())
        store[f"{key}/rewards/margins"].append(margins[sel].mean().item())
        store[f"{key}/rewards/accuracies"].append(acc[sel].mean().item())
        store[f"{key}/pairs"].append(float(sel.sum().item()))
        if all_losses is not None:
            store[f"{key}/loss"].append(all_losses[sel].mean().item())


def final_metrics(log_history: list[dict]) -> dict:
    """The last logged value of every training metric (not the end-of-training summary row)."""
    out: dict = {}
    for row in log_history:
        if "train_runtime" in row:
            out.update({k: v for k, v in row.items() if k.startswith("train_")})
            continue
        out.update({k: v for k, v in row.items() if isinstance(v, (int, float))})
    return out
