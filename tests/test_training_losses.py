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


def test_running_margin():
    r = RunningMargin(momentum=0.9)
    r.update(torch.tensor([1.0, 3.0]))
    assert (r.mean, r.std) == (2.0, 1.0)
    r.update(torch.tensor([12.0]))
    assert r.mean == pytest.approx(0.9 * 2 + 0.1 * 12) and r.std == pytest.approx(0.9)
    s = RunningMargin()
    s.load_state_dict(r.state_dict())
    assert s == r
    assert reward_margin(*[torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5)]).item() == pytest.approx(1.5)
