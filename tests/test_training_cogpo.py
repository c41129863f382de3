"""CogPOTrainer against TRL's DPOTrainer and against the formulas, on tiny:llama."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from cogpo_kit.training.cogpo_trainer import CogPOConfig, CogPOTrainer  # noqa: E402

GAPS = ["small", "medium", "large", "medium"]


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return tiny_model_path, AutoTokenizer.from_pretrained(tiny_model_path)


def _dataset(betas):
    rows = []
    for i, (beta, gap) in enumerate(zip(betas, GAPS)):
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {i} + {i + 3}? Reason step by step."}],
            "chosen": [{"role": "assistant", "content": f"{i} + {i + 3} = {2 * i + 3}. So \\boxed{{{2 * i + 3}}}."}],
            "rejected": [{"role": "assistant", "content": f"It is {i * 7} because {i} times 7. \\boxed{{{i * 7}}}"}],
            "beta": beta, "gap": gap, "id": f"p{i}"})
    return Dataset.from_list(rows)


def _common(tmp_path, **kw):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4, bf16=False, activation_checkpointing=False,
                report_to="none", max_length=96, beta=0.1, seed=0, **kw)


def _perturb(model, seed=3, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _batch(trainer):
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(len(ds))])


def _loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("mode", ["full", "lora", "precompute"])
@pytest.mark.builds_model
def test_equal_betas_match_trl_dpo(tiny, tmp_path, mode):
    path, tok = tiny
    ds = _dataset([0.1] * 4)
    peft = None
    extra = {}
    if mode == "lora":
        from peft import LoraConfig

        peft = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    if mode == "precompute":
        extra["precompute_ref_log_probs"] = True
    trainers = []
    for cls, cfg in ((DPOTrainer, DPOConfig), (CogPOTrainer, CogPOConfig)):
        model = AutoModelForCausalLM.from_pretrained(path)
        tr = cls(model=model, args=cfg(**_common(tmp_path / cls.__name__, **extra)), train_dataset=ds,
                 processing_class=tok, peft_config=peft)
        _perturb(tr.model)  # the policy moves away from the reference, so margins are not zero
        trainers.append(tr)
    dpo, cogpo = trainers
    b_dpo, b_cogpo = _batch(dpo), _batch(cogpo)
    assert torch.equal(b_dpo["input_ids"], b_cogpo["input_ids"])
    assert b_cogpo["beta"].tolist() == pytest.approx([0.1] * 4)
    l_dpo, g_dpo = _loss_and_grads(dpo, b_dpo)
    l_cogpo, g_cogpo = _loss_and_grads(cogpo, b_cogpo)
    assert abs(l_dpo.item() - 0.6931) > 1e-3, "margins should not all be zero"
    assert torch.allclose(l_dpo, l_cogpo, atol=1e-6, rtol=0)
    assert g_dpo.keys() == g_cogpo.keys() and len(g_dpo) > 0
    for name in g_dpo:
        assert torch.allclose(g_dpo[name], g_cogpo[name], atol=1e-6, rtol=0), name
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert dpo._metrics["train"][key][-1] == pytest.approx(cogpo._metrics["train"][key][-1], abs=1e-6)


def _manual_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (lp * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


def _formula_check(trainer, batch, beta_of):
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        pc, pr = _manual_logps(trainer.model, batch)
        rc, rr = _manual_logps(trainer.ref_model, batch)
    h = (pc - rc) - (pr - rr)
    beta = beta_of(h)
    expected = -F.logsigmoid(beta * h)
    assert loss.item() == pytest.approx(expected.mean().item(), abs=1e-5)
    return h, beta, expected


@pytest.mark.builds_model
def test_mixed_betas_follow_the_formula(tiny, tmp_path):
    path, tok = tiny
    betas = [0.1, 0.2, 0.5, 0.2]
    tr = CogPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=CogPOConfig(**_common(tmp_path)),
                      train_dataset=_dataset(betas), processing_class=tok)
    _perturb(tr.model)
    batch = _batch(tr)
    h, beta, per_pair = _formula_check(tr, batch, lambda h: torch.tensor(betas))
    m = tr._metrics["train"]
    assert m["beta/mean"][-1] == pytest.approx(sum(betas) / 4)
    assert m["large_gap/loss"][-1] == pytest.approx(per_pair[2].item(), abs=1e-5)
    assert m["medium_gap/loss"][-1] == pytest.approx(per_pair[[1, 3]].mean().item(), abs=1e-5)
    assert m["medium_gap/pairs"][-1] == 2
    assert m["small_gap/rewards/margins"][-1] == pytest.approx((0.1 * h[0]).item(), abs=1e-5)


@pytest.mark.builds_model
def test_eq4_and_beta_dpo_modes(tiny, tmp_path):
    path, tok = tiny
    betas = [0.1, 0.2, 0.5, 0.2]
    cfg = CogPOConfig(**_common(tmp_path / "a"), dynamic_beta="instance", dynamic_alpha=0.5, dynamic_m0=0.0)
    tr = CogPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=cfg, train_dataset=_dataset(betas),
                      processing_class=tok)
    _perturb(tr.model)
    b = torch.tensor(betas)
    _formula_check(tr, _batch(tr), lambda h: (b + 0.5 * (h - 0.0) * b).clamp(min=1e-3))

    cfg = CogPOConfig(**_common(tmp_path / "b"), beta_column=None, dynamic_beta="batch", dynamic_alpha=0.6,
                      margin_momentum=0.9)
    tr = CogPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=cfg, train_dataset=_dataset(betas),
                      processing_class=tok)
    _perturb(tr.model)
    batch = _batch(tr)
    # First batch: M_0 starts at 0 and moves a tenth of the way to the batch mean (the reference's update).
    h, _, _ = _formula_check(tr, batch, lambda h: torch.full_like(
        h, max(1e-3, 0.1 * (1 + 0.6 * (h.mean().item() - 0.1 * h.mean().item())))))
    assert tr.margin_stats.mean == pytest.approx(0.1 * h.mean().item(), abs=1e-4)
    _perturb(tr.model, seed=9, scale=0.05)
    m0_before = tr.margin_stats.mean

    def second(h):
        m0 = 0.9 * m0_before + 0.1 * h.mean().item()
        return torch.full_like(h, max(1e-3, 0.1 * (1 + 0.6 * (h.mean().item() - m0))))

    _formula_check(tr, batch, second)


@pytest.mark.builds_model
def test_beta_dpo_trainer_equals_reference_code(tiny, tmp_path):
    """Two micro-steps of beta-DPO with its filter against the reference transcription in test_training_losses."""
    from test_training_losses import _ReferenceBetaDPO

    path, tok = tiny
    cfg = CogPOConfig(**_common(tmp_path), beta_column=None, dynamic_beta="batch", dynamic_alpha=0.6,
                      margin_momentum=0.9, filter_keep=0.5)
    tr = CogPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=cfg, train_dataset=_dataset([0.1] * 4),
                      processing_class=tok)
    ref = _ReferenceBetaDPO(beta=0.1, a=0.6, mode_weight=0.5)
    batch = _batch(tr)
    for step, seed in enumerate((3, 9)):
        _perturb(tr.model, seed=seed, scale=0.05)
        tr.model.train()
        loss = tr.compute_loss(tr.model, batch)
        with torch.no_grad():
            pc, pr = _manual_logps(tr.model, batch)
            rc, rr = _manual_logps(tr.ref_model, batch)
        gen = torch.Generator().manual_seed(0 * 1_000_003 + step)  # the trainer's draw: seed and micro-step
        r_loss, r_beta, r_mask, _ = ref.step(pc, pr, rc, rr, gen)
        assert tr.margin_stats.mean == pytest.approx(ref.gap_mean.item(), rel=1e-4, abs=1e-5)
        assert tr.margin_stats.std == pytest.approx(ref.gap_std.item(), rel=1e-4, abs=1e-5)
        m = tr._metrics["train"]
        assert m["filter/kept"][-1] == pytest.approx(r_mask.mean().item())
        assert m["beta/mean"][-1] == pytest.approx(r_beta.item(), rel=1e-4)
        assert loss.item() == pytest.approx(r_loss.item(), rel=1e-4, abs=1e-5)
        h = (pc - rc) - (pr - rr)
        assert m["rewards/margins"][-1] == pytest.approx((0.1 * h).mean().item(), abs=1e-4)  # base beta


def test_preference_stage_defaults_run_beta_dpo_and_simpo_as_published():
    from cogpo_kit.training.config import PreferenceParams
    from cogpo_kit.training.preference import method_specs

    specs = {s.name: s for s in method_specs(PreferenceParams())}
    opts = specs["beta_dpo"].options
    assert (opts["dynamic_beta"], opts["dynamic_alpha"], opts["margin_momentum"]) == ("batch", 0.6, 0.9)
    assert opts["filter_keep"] == 0.8 and opts["filter_loss_average"] == "global"  # filter on by default
    off = {s.name: s for s in method_specs(PreferenceParams(beta_dpo_filter=False, beta_dpo_loss_average="process"))}
    assert off["beta_dpo"].options["filter_keep"] == 1.0
    assert off["beta_dpo"].options["filter_loss_average"] == "process"
    assert specs["simpo"].options == {"beta": 2.0, "gamma": 0.3}
    ratio = {s.name: s for s in method_specs(PreferenceParams(simpo_gamma_convention="ratio"))}
    assert ratio["simpo"].options["gamma"] == pytest.approx(0.6)
    from cogpo_kit.training.preference import trl_simpo_gamma

    assert trl_simpo_gamma(0.3, 2.0, "margin") == 0.3
    with pytest.raises(ValueError):
        trl_simpo_gamma(0.3, 2.0, "other")


@pytest.mark.builds_model
def test_simpo_gamma_is_trl_margin(tiny, tmp_path):
    """TRL's simpo_gamma is the margin itself: loss = -log sigmoid(beta * (avg_w - avg_l) - gamma)."""
    from cogpo_kit.training.preference import preference_dataset
    from cogpo_kit.training.simpo import SimPOTrainer, simpo_config

    path, tok = tiny
    pairs = [{"prompt": [{"role": "user", "content": "1 + 1?"}], "chosen": "2", "rejected": "3", "beta": 0.1,
              "gap": "small"}] * 2
    args = simpo_config(beta=2.0, gamma=0.3, output_dir=str(tmp_path), report_to="none", max_length=64, bf16=False)
    tr = SimPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                      train_dataset=preference_dataset(pairs), processing_class=tok)
    chosen, rejected = torch.tensor([-0.5, -1.0, -2.0]), torch.tensor([-0.7, -0.4, -3.0])
    losses, _, _ = tr.cpo_loss(chosen, rejected)
    assert torch.allclose(losses, -F.logsigmoid(2.0 * (chosen - rejected) - 0.3), atol=1e-6)


@pytest.mark.builds_model
def test_config_and_dataset_errors(tiny, tmp_path):
    path, tok = tiny
    with pytest.raises(ValueError, match="sigmoid loss only"):
        CogPOConfig(**_common(tmp_path), loss_type=["ipo"])
    with pytest.raises(ValueError, match="beta_column=None"):
        CogPOConfig(**_common(tmp_path), dynamic_beta="batch")
    with pytest.raises(ValueError, match="dynamic_beta='batch'"):
        CogPOConfig(**_common(tmp_path), filter_keep=0.5)
    with pytest.raises(ValueError, match="filter_loss_average"):
        CogPOConfig(**_common(tmp_path), beta_column=None, dynamic_beta="batch", filter_loss_average="local")
    with pytest.raises(ValueError, match="no 'beta' column"):
        CogPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=CogPOConfig(**_common(tmp_path)),
                     train_dataset=_dataset([0.1] * 4).remove_columns("beta"), processing_class=tok)
