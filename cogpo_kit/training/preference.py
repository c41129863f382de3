"""Preference training of one method on the pairs: CogPO, DPO, beta-DPO (CogPOTrainer) and SimPO (CPO).

Every method starts from the same SFT model and sees the same pairs; TRL does tokenization, the
reference model (a frozen copy, the adapter-free model under LoRA, or precomputed log-probs), gradient
checkpointing, distribution and checkpoints. ``cogpo_x<f>`` methods (``beta_sweep``) scale every pair's
beta by ``f``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cogpo_kit.training.common import (is_main_process, last_checkpoint, load_model, lora_config, save_final_model,
                                       trainer_args, write_metrics)
from cogpo_kit.training.metrics import final_metrics
from cogpo_kit.training.config import PreferenceParams


@dataclass(frozen=True)
class MethodSpec:
    """One preference method: its folder name, trainer family and options."""

    name: str
    family: str  # "cogpo" (CogPOTrainer) or "simpo" (CPO)
    options: dict = field(default_factory=dict)
    beta_scale: float = 1.0


def trl_simpo_gamma(gamma: float, beta: float, convention: str = "margin") -> float:
    """The SimPO margin in TRL's terms (``CPOConfig.simpo_gamma``, the gamma in
    ``-log sigmoid(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma)``) from a value read as ``convention``:
    ``margin`` (gamma itself) or ``ratio`` (the SimPO scripts' ``gamma_beta_ratio`` = gamma / beta)."""
    if convention == "margin":
        return float(gamma)
    if convention == "ratio":
        return float(gamma) * float(beta)
    raise ValueError(f"simpo_gamma_convention must be margin or ratio, got {convention!r}")


def method_specs(pref: PreferenceParams) -> list[MethodSpec]:
    """The methods a params file asks for, in order (with the CogPO beta sweep after them)."""
    specs = []
    for m in pref.methods:
        if m == "cogpo":
            dyn = "instance" if pref.cogpo_alpha != 0 else "none"
            specs.append(MethodSpec("cogpo", "cogpo", dict(
                beta_column="beta", beta=pref.dpo_beta, dynamic_beta=dyn, dynamic_alpha=pref.cogpo_alpha,
                dynamic_m0=pref.cogpo_m0, margin_momentum=pref.beta_dpo_momentum)))
        elif m == "dpo":
            specs.append(MethodSpec("dpo", "cogpo", dict(beta_column=None, beta=pref.dpo_beta)))
        elif m == "beta_dpo":
            specs.append(MethodSpec("beta_dpo", "cogpo", dict(
                beta_column=None, beta=pref.dpo_beta, dynamic_beta="batch", dynamic_alpha=pref.beta_dpo_alpha,
                margin_momentum=pref.beta_dpo_momentum, filter_keep=pref.beta_dpo_keep if pref.beta_dpo_filter else 1.0,
                filter_loss_average=pref.beta_dpo_loss_average)))
        elif m == "simpo":
            gamma = trl_simpo_gamma(pref.simpo_gamma, pref.simpo_beta, pref.simpo_gamma_convention)
            specs.append(MethodSpec("simpo", "simpo", dict(beta=pref.simpo_beta, gamma=gamma)))
        else:
            raise ValueError(f"unknown preference method '{m}'")
    for f in pref.beta_sweep:
        base = next((s for s in specs if s.name == "cogpo"), None) or method_specs(
            PreferenceParams(methods=("cogpo",), cogpo_alpha=pref.cogpo_alpha, cogpo_m0=pref.cogpo_m0))[0]
        specs.append(MethodSpec(f"cogpo_x{f:g}", "cogpo", dict(base.options), beta_scale=f))
    return specs


def preference_dataset(pairs: list[dict], beta_scale: float = 1.0):
    """TRL's conversational preference format plus ``beta`` and ``gap`` columns."""
    from datasets import Dataset

    return Dataset.from_list([{
        "prompt": p["prompt"],
        "chosen": [{"role": "assistant", "content": p["chosen"]}],
        "rejected": [{"role": "assistant", "content": p["rejected"]}],
        "beta": float(p["beta"]) * beta_scale,
        "gap": p["gap"],
    } for p in pairs])


def build_trainer(spec: MethodSpec, pairs: list[dict], *, init_path: str, pref: PreferenceParams,
                  out_dir: str | Path, seed: Optional[int] = None):
    """The TRL trainer of one method, ready to train (model loaded from ``init_path``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(init_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    targs = trainer_args(pref.optim, Path(out_dir) / "checkpoints", seed=seed)
    dataset = preference_dataset(pairs, spec.beta_scale)
    peft = lora_config(pref.lora)
    # The config comes first: under DeepSpeed ZeRO-3 it must exist before the weights load.
    if spec.family == "simpo":
        from cogpo_kit.training.simpo import SimPOTrainer, simpo_config

        args = simpo_config(beta=spec.options["beta"], gamma=spec.options["gamma"], **targs)
        return SimPOTrainer(model=load_model(init_path, bf16=pref.optim.bf16), args=args, train_dataset=dataset,
                            processing_class=tok, peft_config=peft)
    from cogpo_kit.training.cogpo_trainer import CogPOConfig, CogPOTrainer

    args = CogPOConfig(**targs, precompute_ref_log_probs=pref.precompute_ref_log_probs, **spec.options)
    return CogPOTrainer(model=load_model(init_path, bf16=pref.optim.bf16), args=args, train_dataset=dataset,
                        processing_class=tok, peft_config=peft)


def train_preference(spec: MethodSpec, pairs: list[dict], *, init_path: str, pref: PreferenceParams,
                     out_dir: str | Path, logger: Optional[logging.Logger] = None) -> dict:
    """Train one method; writes ``model/``, ``metrics.jsonl`` and ``checkpoints/`` in ``out_dir``."""
    log = logger or logging.getLogger(__name__)
    out_dir = Path(out_dir)
    t0 = time.time()
    trainer = build_trainer(spec, pairs, init_path=init_path, pref=pref, out_dir=out_dir)
    setup = time.time() - t0
    resume = last_checkpoint(out_dir / "checkpoints", log)
    if resume:
        log.info("%s: resuming from %s", spec.name, resume)
    t1 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t1
    write_metrics(out_dir / "metrics.jsonl", trainer.state.log_history)
    save_final_model(trainer, out_dir / "model", base_path=init_path, merge_lora=True, bf16=pref.optim.bf16)
    final = final_metrics(trainer.state.log_history)
    summary = {"method": spec.name, "pairs": len(pairs), "steps": trainer.state.global_step,
               "setup_seconds": round(setup, 2), "train_seconds": round(seconds, 2), "resumed_from": resume,
               "train_loss": result.training_loss, "final": final, "options": spec.options,
               "beta_scale": spec.beta_scale}
    if is_main_process():
        log.info("%s finished: %d steps in %.1f s, train loss %.4f, margins %s", spec.name, summary["steps"],
                 seconds, result.training_loss, final.get("rewards/margins"))
    return summary
