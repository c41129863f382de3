"""The pure CogPO / beta-DPO loss functions against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from cogpo_kit.training.losses import (RunningMargin, batch_beta, cogpo_loss, filter_mask, instance_beta,
                                       reward_margin)


def _logps(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 50 + 1) for _ in range(4)]


def test_mixed_betas_follow_the_formula():
    pc, pr, rc, rr = _logps()
    beta = torch.tensor([0.1, 0.2, 0.5, 0.1, 0.5, 0.2], dtype=torch.float64)
    losses, cr, rj = cogpo_loss(pc, pr, rc, rr, beta)
    for i in range(6):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        expected = math.log1p(math.exp(-float(beta[i] * h)))  # -log sigmoid(beta h)
        assert losses[i].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert cr[i].item() == pytest.approx(float(beta[i] * (pc[i] - rc[i])))
        assert rj[i].item() == pytest.approx(float(beta[i] * (pr[i] - rr[i])))


def test_float_beta_equals_uniform_tensor_and_dpo():
    pc, pr, rc, rr = _logps(1)
    a = cogpo_loss(pc, pr, rc, rr, 0.1)
    b = cogpo_loss(pc, pr, rc, rr, torch.full((6,), 0.1, dtype=torch.float64))
    dpo = -torch.nn.functional.logsigmoid(0.1 * ((pc - rc) - (pr - rr)))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert torch.equal(a[0], dpo)


def test_gradient_flows_through_policy_only():
    pc, pr, rc, rr = (t.clone().requires_grad_(True) for t in _logps(2))
    beta = torch.tensor([0.1, 0.2, 0.5, 0.1, 0.5, 0.2], dtype=torch.float64)
    losses, cr, _ = cogpo_loss(pc, pr, rc, rr, beta)
    losses.sum().backward()
    h = ((pc - rc) - (pr - rr)).detach()
    expected = -beta * torch.sigmoid(-beta * h)  # d/dpc of -log sigmoid(beta h)
    assert torch.allclose(pc.grad, expected) and torch.allclose(pr.grad, -expected)
    assert not cr.requires_grad


def test_beta_shape_is_checked():
    pc, pr, rc, rr = _logps()
    with pytest.raises(ValueError, match="one value per pair"):
        cogpo_loss(pc, pr, rc, rr, torch.ones(5))


def test_eq4_instance_beta():
    m = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    beta = torch.tensor([0.1, 0.2, 0.5, 0.5])
    out = instance_beta(beta, m, m0=1.0, alpha=0.5)
    expected = beta + 0.5 * (m - 1.0) * beta  # paper eq. 4
    expected = expected.clamp(min=1e-3)
    assert torch.allclose(out, expected)
    assert out[0].item() == pytest.approx(1e-3)  # 0.1 * (1 - 1.5) < 0 -> clamped
    assert instance_beta(0.2, m, m0=0.0, alpha=0.0).tolist() == pytest.approx([0.2] * 4)


def test_beta_dpo_batch_beta_and_filter():
    m = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert batch_beta(0.1, m, m0=1.0, alpha=0.6).item() == pytest.approx(0.1 * (1 + 0.6 * (1.5 - 1.0)))
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert batch_beta(0.1, m, m0=1.0, alpha=0.6, mask=mask).item() == pytest.approx(0.1 * (1 + 0.6 * (0.5 - 1.0)))
    assert batch_beta(0.1, m, m0=100.0, alpha=1.0).item() == pytest.approx(1e-3)
    g = torch.Generator().manual_seed(0)
    big = torch.cat([torch.zeros(50), torch.full((50,), 40.0)])
    kept = torch.stack([filter_mask(big, mean=0.0, std=1.0, keep=0.5, generator=g) for _ in range(20)])
    assert kept.sum(dim=1).eq(50).all()
    assert kept[:, :50].mean() > 0.99  # margins near the running mean are the ones kept
    assert filter_mask(big, 0.0, 1.0, keep=1.0).sum() == 100
    with pytest.raises(ValueError):
        filter_mask(big, 0.0, 1.0, keep=0.0)


# -- beta-DPO against its authors' code --------------------------------------------------------------------
# A straight transcription of github.com/junkangwu/beta-DPO, trainers.py at commit 1629047 (one process, so
# all_gather_if_needed and the all_reduce are identities): __init__ lines 191-192, update_and_sync_tensor_mean
# lines 242-252, get_batch_metrics lines 276-279 and 331-338, preference_loss lines 67-95 with
# loss_config.mode_loss == "beta_DPO". The draw takes an explicit generator instead of the global one.

class _ReferenceBetaDPO:
    def __init__(self, beta, a, mode_weight):
        self.beta, self.a, self.mode_weight = beta, a, mode_weight
        self.gap_mean = torch.zeros(1)
        self.gap_std = torch.zeros(1)

    def update_and_sync_tensor_mean(self, gap_local, gamma=0.9):
        with torch.no_grad():
            batch_gap_mean = gap_local.mean()
            batch_gap_std = gap_local.std()
            self.gap_mean.mul_(gamma).add_(batch_gap_mean, alpha=1 - gamma)
            self.gap_std.mul_(gamma).add_(batch_gap_std, alpha=1 - gamma)

    def preference_loss(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                        reference_rejected_logps, generator):
        pi_logratios = policy_chosen_logps - policy_rejected_logps
        ref_logratios = reference_chosen_logps - reference_rejected_logps
        logits = pi_logratios - ref_logratios
        A_gap = (policy_chosen_logps - reference_chosen_logps - policy_rejected_logps + reference_rejected_logps)
        A = A_gap.detach()
        mean = self.gap_mean
        std = self.gap_std
        weight_sample = torch.exp(-0.5 * ((A - mean) / std).pow(2))
        sample_num = int(weight_sample.numel() * (1 - self.mode_weight))
        sample_index = torch.multinomial(weight_sample, sample_num, replacement=False, generator=generator)
        one_hot_like = torch.zeros_like(weight_sample)
        one_hot_like[sample_index] = 1
        global_mask = one_hot_like.detach()
        A_used = torch.mean(A[sample_index])
        beta_used = self.beta * (1 + self.a * (A_used - self.gap_mean))
        beta_used = beta_used.clamp(min=1e-3)
        losses = -torch.nn.functional.logsigmoid(beta_used.detach() * logits)
        return losses, global_mask, beta_used, weight_sample

    def step(self, pc, pr, rc, rr, generator):
        gap_local = (pc - rc - pr + rr).detach()
        self.update_and_sync_tensor_mean(gap_local)
        losses, global_mask, beta_used, weights = self.preference_loss(pc, pr, rc, rr, generator)
        local_mask = global_mask.float()
        masked_losses = losses * local_mask
        effective_loss_count = local_mask.sum()
        effective_loss_count = effective_loss_count if effective_loss_count > 0 else 1
        return masked_losses.sum() / effective_loss_count, beta_used, global_mask, weights


def _kit_beta_dpo_step(stats, pc, pr, rc, rr, generator, *, beta=0.1, alpha=0.6, keep=0.8):
    """What CogPOTrainer does for beta-DPO at one micro-step on one process."""
    margins = reward_margin(pc, pr, rc, rr)
    stats.update(margins)
    mask = filter_mask(margins, stats.mean, stats.std, keep, generator)
    b = batch_beta(beta, margins, stats.mean, alpha, mask=mask)
    losses, _, _ = cogpo_loss(pc, pr, rc, rr, b)
    loss = (losses * mask).sum() / mask.sum()
    return loss, b, mask


def _f32_logps(seed, n):
    g = torch.Generator().manual_seed(seed)
    base = -(torch.rand(n, generator=g) * 40 + 5)
    return [base + torch.randn(n, generator=g) * s for s in (3.0, 2.0, 0.0, 0.5)]


def test_beta_dpo_equals_reference_code_on_fixed_tensors():
    ref = _ReferenceBetaDPO(beta=0.1, a=0.6, mode_weight=0.2)
    stats = RunningMargin(momentum=0.9)
    for step, n in enumerate((10, 10, 7, 12)):
        pc, pr, rc, rr = _f32_logps(step, n)
        r_loss, r_beta, r_mask, _ = ref.step(pc, pr, rc, rr, torch.Generator().manual_seed(100 + step))
        k_loss, k_beta, k_mask = _kit_beta_dpo_step(stats, pc, pr, rc, rr, torch.Generator().manual_seed(100 + step))
        assert (stats.mean, stats.std) == (pytest.approx(ref.gap_mean.item(), rel=1e-5, abs=1e-6),
                                           pytest.approx(ref.gap_std.item(), rel=1e-5, abs=1e-6)), step
        assert torch.equal(k_mask, r_mask), step  # the same pairs kept: int(n * 0.8) of them
        assert k_mask.sum().item() == int(n * 0.8)
        assert k_beta.item() == pytest.approx(r_beta.item(), rel=1e-5), step
        assert k_loss.item() == pytest.approx(r_loss.item(), rel=1e-5, abs=1e-7), step
    assert stats.updates == 4


def test_beta_dpo_filter_weights_and_count_equal_reference():
    from cogpo_kit.training.losses import filter_count, filter_weights

    ref = _ReferenceBetaDPO(beta=0.1, a=0.6, mode_weight=0.2)
    pc, pr, rc, rr = _f32_logps(5, 9)
    ref.update_and_sync_tensor_mean((pc - rc - pr + rr).detach())
    _, _, _, r_weights = ref.preference_loss(pc, pr, rc, rr, torch.Generator().manual_seed(0))
    weights = filter_weights(reward_margin(pc, pr, rc, rr), ref.gap_mean.item(), ref.gap_std.item())
    assert torch.allclose(weights, r_weights, rtol=1e-5, atol=1e-7)
    assert all(filter_count(n, 0.8) == int(n * (1 - 0.2)) for n in range(2, 40))


def test_beta_dpo_filter_keeps_int_of_b_times_keep():
    # The reference keeps int(numel * (1 - mode_weight)): 1 of 2, 5 of 7, 8 of 11 with mode_weight 0.2.
    for n in range(2, 40):
        kept = filter_mask(torch.arange(n, dtype=torch.float32), float(n) / 2, float(n), 0.8).sum().item()
        assert kept == int(n * (1 - 0.2)), n


def test_beta_dpo_running_margin_starts_at_zero_with_unbiased_std():
    r = RunningMargin(momentum=0.9)
    r.update(torch.tensor([1.0, 3.0]))
    assert r.mean == pytest.approx(0.1 * 2.0) and r.std == pytest.approx(0.1 * math.sqrt(2.0))
    r.update(torch.tensor([12.0, 0.0, 6.0]))
    assert r.mean == pytest.approx(0.9 * 0.2 + 0.1 * 6.0)
    assert r.std == pytest.approx(0.9 * 0.1 * math.sqrt(2) + 0.1 * 6.0)  # unbiased std of [12, 0, 6] is 6


def test_beta_dpo_guards_where_the_reference_fails():
    from cogpo_kit.training.losses import filter_weights

    # sigma = 0 (the reference divides 0 by 0): the limit, 1 at M_0 and 0 elsewhere.
    m = torch.tensor([0.0, 0.0, 2.0, 3.0])
    assert filter_weights(m, 0.0, 0.0).tolist() == [1.0, 1.0, 0.0, 0.0]
    mask = filter_mask(m, 0.0, 0.0, keep=0.75, generator=torch.Generator().manual_seed(0))
    assert mask.sum() == 3 and mask[:2].tolist() == [1.0, 1.0]
    # Every margin ~100 sigma away: all weights underflow to 0 and the reference's draw fails; here it is uniform.
    far = torch.tensor([100.0, -100.0, 200.0, 150.0, 120.0])
    assert filter_weights(far, 0.0, 1.0).sum() == 0
    kept = torch.stack([filter_mask(far, 0.0, 1.0, keep=0.8, generator=torch.Generator().manual_seed(i))
                        for i in range(200)])
    assert kept.sum(dim=1).eq(4).all() and (kept.mean(dim=0) - 0.8).abs().max() < 0.1
    # Some weights 0: torch's draw (as in the reference) takes the positive ones first.
    mask = filter_mask(torch.tensor([0.5, 100.0, -100.0, 200.0, 150.0]), 0.0, 1.0, keep=0.8,
                       generator=torch.Generator().manual_seed(1))
    assert mask.sum() == 4 and mask[0] == 1.0
    # One pair (the reference keeps int(0.8) = 0 pairs and its unbiased std is NaN): the pair is kept, spread 0.
    assert filter_mask(torch.tensor([3.0]), 0.0, 0.0, keep=0.8).tolist() == [1.0]
    r = RunningMargin()
    r.update(torch.tensor([3.0]))
    assert (r.mean, r.std) == (pytest.approx(0.3), 0.0)


def test_filtered_mean_global_and_per_process():
    from cogpo_kit.training.losses import filtered_mean

    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # process 0 holds pairs 0-2, process 1 pairs 3-5
    kept = mask.sum().item()
    parts = [(losses[:3], mask[:3]), (losses[3:], mask[3:])]
    glob = [filtered_mean(lo, ma, kept_total=kept, processes=2) for lo, ma in parts]
    # What data-parallel averaging makes of it: the mean over all kept pairs, as on one process.
    assert (sum(glob) / 2).item() == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert filtered_mean(losses, mask, kept_total=kept).item() == pytest.approx((1 + 2 + 3 + 5) / 4)
    per = [filtered_mean(lo, ma, kept_total=kept, processes=2, average="process") for lo, ma in parts]
    assert [p.item() for p in per] == pytest.approx([2.0, 5.0])  # reference: each process its own mean
    assert filtered_mean(losses[3:4], mask[3:4], kept_total=kept, processes=2, average="process").item() == 0.0


def test_running_margin():
    r = RunningMargin(momentum=0.9)
    r.update(torch.tensor([1.0, 3.0]))
    r.update(torch.tensor([12.0]))
    assert r.mean == pytest.approx(0.9 * 0.2 + 0.1 * 12) and r.std == pytest.approx(0.9 * 0.1 * math.sqrt(2))
    s = RunningMargin()
    s.load_state_dict(r.state_dict())
    assert s == r
    assert reward_margin(*[torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5)]).item() == pytest.approx(1.5)
