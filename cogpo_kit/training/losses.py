"""CogPO loss and the beta-DPO helpers, as pure functions of sequence log-probabilities.

- CogPO (paper eq. 1-3): ``loss_i = -log sigmoid(beta_i * h_i)`` with the DPO margin
  ``h_i = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))`` and each pair's own beta
  (beta_S, beta_M or beta_L by its gap). With every beta equal it is DPO's sigmoid loss.
- CogPO combined with beta-DPO (paper eq. 4): ``beta_i* = beta_i + alpha * (M_i - M_0) * beta_i``.
- beta-DPO (Wu et al. 2024): one beta per batch, ``beta = beta_0 * (1 + alpha * (mean M - M_0))``, with
  M_0 and sigma moving averages of the batch mean and standard deviation of M, and beta-guided data
  filtering that keeps pairs drawn with weights ``exp(-(M_i - M_0)^2 / (2 sigma^2))``.

The beta-DPO pieces transcribe the authors' reference code (github.com/junkangwu/beta-DPO, ``trainers.py`` at
commit 1629047): ``preference_loss`` (lines 73-95) and ``update_and_sync_tensor_mean`` (lines 242-263). As
there, the reward differential ``M_i`` is the margin ``h_i`` (detached), adjusted betas are clamped below at
``min_beta`` (1e-3) and carry no gradient. Differences from it: guards for inputs where the reference fails
(sigma = 0, fewer than one pair to keep, every weight 0, a batch of one pair), each named where it applies,
and :func:`filtered_mean`'s default ``global`` average (the reference's is ``process``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

Beta = Union[float, torch.Tensor]


def _as_beta(beta: Beta, like: torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(beta, dtype=like.dtype, device=like.device)
    if b.dim() > 1 or (b.dim() == 1 and b.shape[0] != like.shape[0]):
        raise ValueError(f"beta must be a float or hold one value per pair ({like.shape[0]}), got shape {tuple(b.shape)}")
    return b


def cogpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
               beta: Beta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair CogPO losses and implicit rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: summed log-probs of the responses under the policy, shape (B,).
        ref_chosen_logps, ref_rejected_logps: the same under the reference model, shape (B,).
        beta: a float (DPO) or a tensor of shape (B,) with each pair's beta.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape (B,); rewards are
        ``beta * (log pi - log ref)`` and detached.
    """
    b = _as_beta(beta, policy_chosen_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(b * (chosen_logratios - rejected_logratios))
    return losses, b * chosen_logratios.detach(), b * rejected_logratios.detach()


def reward_margin(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                  ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor) -> torch.Tensor:
    """The instance-level reward differential M_i (the DPO margin h_i), detached; shape (B,)."""
    return ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)).detach()


def instance_beta(beta: Beta, margins: torch.Tensor, m0: float, alpha: float, *, min_beta: float = 1e-3) -> torch.Tensor:
    """Paper eq. 4: ``beta_i* = beta_i + alpha * (M_i - M_0) * beta_i``, clamped at ``min_beta``, detached.

    ``beta`` is a float or shape (B,), ``margins`` shape (B,); returns shape (B,)."""
    b = _as_beta(beta, margins)
    return (b * (1.0 + alpha * (margins.detach() - m0))).clamp(min=min_beta).detach()


def batch_beta(beta0: float, margins: torch.Tensor, m0: float, alpha: float, *,
               mask: Optional[torch.Tensor] = None, min_beta: float = 1e-3) -> torch.Tensor:
    """beta-DPO's batch beta ``beta_0 * (1 + alpha * (mean(M over kept pairs) - M_0))``, a detached scalar.

    Reference lines 87-89: ``A_used = mean(A[sample_index])``, ``beta * (1 + a * (A_used - gap_mean))``,
    ``clamp(min=1e-3)``. ``margins`` (B,) are those of the whole (gathered) batch; ``mask`` (B,) marks the kept
    pairs (``None``: all).
    """
    m = margins.detach()
    if mask is not None:
        m = m[mask.bool()] if mask.any() else m
    return (beta0 * (1.0 + alpha * (m.mean() - m0))).clamp(min=min_beta).detach()


def filter_weights(margins: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """beta-DPO's sampling weights ``exp(-0.5 * ((M_i - M_0) / sigma)^2)`` (reference line 80); float32 (B,) on CPU.

    With ``sigma == 0`` the reference divides by zero (NaN weights for margins equal to M_0, and its draw fails);
    here the weights are then the limit as sigma -> 0: 1 for a margin equal to M_0, 0 for any other.
    """
    a = margins.detach().float().cpu()
    if std > 0:
        return torch.exp(-0.5 * ((a - mean) / std).pow(2))
    return (a == mean).float()


def filter_count(n: int, keep: float) -> int:
    """Pairs kept out of ``n``: ``int(n * keep)`` as the reference's ``int(numel * (1 - mode_weight))`` (line 81),
    at least 1 (the reference cannot draw 0 pairs)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return max(1, int(n * keep))


def filter_mask(margins: torch.Tensor, mean: float, std: float, keep: float,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """beta-DPO data filtering (reference lines 80-85): draw :func:`filter_count` pairs without replacement with
    :func:`filter_weights`; returns a 0/1 float mask of shape (B,) on the device of ``margins``.

    ``mean`` and ``std`` are the running M_0 and sigma (already updated with this batch, as in the reference).
    The draw is ``torch.multinomial`` as there, so pairs whose weight underflows to 0 (margins more than ~14
    sigma from M_0) are only taken when too few others remain, in torch's order. When every weight is 0 the
    reference's draw fails ("sum of probabilities <= 0"); here the pairs are then drawn uniformly.
    """
    n = margins.shape[0]
    k = filter_count(n, keep)
    mask = torch.zeros(n, dtype=torch.float32, device=margins.device)
    if k >= n:
        return mask.fill_(1.0)
    weights = filter_weights(margins, mean, std)
    if not weights.sum() > 0:
        weights = torch.ones_like(weights)
    idx = torch.multinomial(weights, k, replacement=False, generator=generator)
    mask[idx.to(mask.device)] = 1.0
    return mask


def filtered_mean(losses: torch.Tensor, mask: torch.Tensor, *, kept_total: float, processes: int = 1,
                  average: str = "global") -> torch.Tensor:
    """One process's beta-DPO loss over its kept pairs: ``losses`` and ``mask`` (0/1) of shape (B,) are this
    process's, ``kept_total`` the pairs kept over all ``processes``; returns a scalar.

    ``global``: ``sum(losses * mask) * processes / kept_total``, so the mean over processes (what data-parallel
    gradient averaging takes) is the mean over every kept pair of the global batch. ``process``: the
    reference's ``masked_losses.sum() / local_mask.sum()`` (0 kept counts as 1; trainers.py lines 333-338).
    """
    total = (losses * mask).sum()
    if average == "global":
        return total * processes / max(float(kept_total), 1.0)
    if average == "process":
        return total / mask.sum().clamp(min=1.0)
    raise ValueError(f"average must be global or process, got {average!r}")


@dataclass
class RunningMargin:
    """beta-DPO's M_0 and sigma: moving averages of the batch mean and standard deviation of the margins.

    As the reference (``update_and_sync_tensor_mean``, lines 242-252, called on the margins of the whole batch
    gathered over processes before the loss, line 279): both start at 0 and each batch moves them as
    ``x <- momentum * x + (1 - momentum) * batch_x`` with ``momentum`` 0.9; the batch standard deviation is
    torch's default (unbiased, divisor B - 1). A batch of one pair counts as spread 0 (the reference gets NaN).
    """

    momentum: float = 0.9
    mean: float = 0.0
    std: float = 0.0
    updates: int = 0

    def update(self, margins: torch.Tensor) -> None:
        """Fold one batch of margins (shape (B,), every pair of the global batch) into M_0 and sigma."""
        m = margins.detach().float()
        bmean = float(m.mean())
        bstd = float(m.std()) if m.numel() > 1 else 0.0
        self.mean = self.momentum * self.mean + (1 - self.momentum) * bmean
        self.std = self.momentum * self.std + (1 - self.momentum) * bstd
        self.updates += 1

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "mean": self.mean, "std": self.std, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.momentum = float(state["momentum"])
        self.mean, self.std, self.updates = float(state["mean"]), float(state["std"]), int(state["updates"])
