"""SimPO (Meng et al. 2024) through TRL's CPO trainer, with the per-gap metrics of the other methods.

SimPO is TRL's ``CPOTrainer`` with ``loss_type="simpo"`` and ``cpo_alpha=0`` (no behaviour-cloning
term): ``-log sigmoid(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma)``, reference-free. The subclass
only adds rewards, margins and accuracies per gap type to TRL's logged metrics.
"""

from __future__ import annotations

from collections import defaultdict

from trl.experimental.cpo import CPOConfig, CPOTrainer

from cogpo_kit.training.metrics import gap_ids, record_pair_metrics


def simpo_config(*, beta: float, gamma: float, **kwargs) -> CPOConfig:
    """A CPO config running the SimPO loss (paper Table 8: beta 2.0, gamma 0.3)."""
    return CPOConfig(loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma, remove_unused_columns=False,
                     **kwargs)


class SimPOTrainer(CPOTrainer):
    """TRL's CPO trainer with the SimPO loss and per-gap reward metrics (``<gap>_gap/rewards/...``)."""

    _tag_names = ["trl", "cpo", "simpo"]
    _name = "SimPO"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.loss_type != "simpo" or self.cpo_alpha != 0:
            raise ValueError("SimPOTrainer needs loss_type='simpo' and cpo_alpha=0 (use simpo_config)")
        self._last = None

    def cpo_loss(self, policy_chosen_logps, policy_rejected_logps):
        losses, chosen_rewards, rejected_rewards = super().cpo_loss(policy_chosen_logps, policy_rejected_logps)
        self._last = (losses.detach(), chosen_rewards, rejected_rewards)
        return losses, chosen_rewards, rejected_rewards

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        loss, metrics = super().get_batch_loss_metrics(model, batch, train_eval)
        if self._last is not None and "gap" in batch:
            losses, chosen, rejected = self._last
            store: dict = defaultdict(list)
            record_pair_metrics(store, self.accelerator.gather_for_metrics, chosen_rewards=chosen,
                                rejected_rewards=rejected, losses=losses,
                                gap=gap_ids(batch["gap"]).to(chosen.device),
                                prefix="eval_" if train_eval == "eval" else "")
            metrics.update({k: v[0] for k, v in store.items() if "_gap/" in k})
        self._last = None
        return loss, metrics
