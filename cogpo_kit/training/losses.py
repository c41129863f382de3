"""CogPO loss and the beta-DPO helpers, as pure functions of sequence log-probabilities.

- CogPO (paper eq. 1-3): ``loss_i = -log sigmoid(beta_i * h_i)`` with the DPO margin
  ``h_i = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))`` and each pair's own beta
  (beta_S, beta_M or beta_L by its gap). With every beta equal it is DPO's sigmoid loss.
- CogPO combined with beta-DPO (paper eq. 4): ``beta_i* = beta_i + alpha * (M_i - M_0) * beta_i``.
- beta-DPO (Wu et al. 2024): one beta per batch, ``beta = beta_0 * (1 + alpha * (mean M - M_0))``, with
  M_0 (and the spread of M) running means of the batch statistics, and optional data filtering that keeps
  pairs with probability proportional to ``exp(-(M_i - M_0)^2 / (2 sigma^2))``.

As in the reference beta-DPO implementation, the reward differential ``M_i`` is the margin ``h_i``
(detached), and adjusted betas are clamped below at ``min_beta`` and carry no gradient.
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
    """The instance-level reward differential M_i (the DPO margin h_i), detached."""
    return ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)).detach()


def instance_beta(beta: Beta, margins: torch.Tensor, m0: float, alpha: float, *, min_beta: float = 1e-3) -> torch.Tensor:
    """Paper eq. 4: ``beta_i* = beta_i + alpha * (M_i - M_0) * beta_i``, clamped at ``min_beta``, detached."""
    b = _as_beta(beta, margins)
    return (b * (1.0 + alpha * (margins.detach() - m0))).clamp(min=min_beta).detach()


def batch_beta(beta0: float, margins: torch.Tensor, m0: float, alpha: float, *,
               mask: Optional[torch.Tensor] = None, min_beta: float = 1e-3) -> torch.Tensor:
    """beta-DPO's batch beta ``beta_0 * (1 + alpha * (mean(M over kept pairs) - M_0))``, a detached scalar."""
    m = margins.detach()
    if mask is not None:
        m = m[mask.bool()] if mask.any() else m
    return (beta0 * (1.0 + alpha * (m.mean() - m0))).clamp(min=min_beta).detach()


def filter_mask(margins: torch.Tensor, mean: float, std: float, keep: float,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """beta-DPO data filtering: draw ``round(keep * B)`` pairs (at least one) without replacement with weights
    ``exp(-(M_i - mean)^2 / (2 std^2))``; returns a 0/1 float mask of shape (B,)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    n = margins.shape[0]
    mask = torch.zeros(n, dtype=torch.float32, device=margins.device)
    k = max(1, int(round(keep * n)))
    if k >= n:
        return mask.fill_(1.0)
    z = (margins.detach().float().cpu() - mean) / max(std, 1e-6)
    weights = torch.exp(-0.5 * z.pow(2)).clamp(min=1e-12)
    idx = torch.multinomial(weights, k, replacement=False, generator=generator)
    mask[idx.to(mask.device)] = 1.0
    return mask


@dataclass
class RunningMargin:
    """Running mean and spread of the reward margins (beta-DPO's M_0 and sigma), updated with momentum.

    The first batch sets both; later batches move them by ``(1 - momentum)`` of the difference.
    """

    momentum: float = 0.9
    mean: float = 0.0
    std: float = 1.0
    updates: int = 0

    def update(self, margins: torch.Tensor) -> None:
        m = margins.detach().float()
        bmean = float(m.mean())
        bstd = float(m.std(unbiased=False)) if m.numel() > 1 else 0.0
        if self.updates == 0:
            self.mean, self.std = bmean, bstd
        else:
            self.mean = self.momentum * self.mean + (1 - self.momentum) * bmean
            self.std = self.momentum * self.std + (1 - self.momentum) * bstd
        self.updates += 1

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "mean": self.mean, "std": self.std, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.momentum = float(state["momentum"])
        self.mean, self.std, self.updates = float(state["mean"]), float(state["std"]), int(state["updates"])
