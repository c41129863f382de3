"""Preference training of one method on the pairs: CogPO, DPO, beta-DPO (CogPOTrainer) and SimPO (CPO).

Every method starts from the same SFT model and sees the same pairs; TRL does tokenization, the
reference model (a frozen copy, the adapter-free model under LoRA, or precomputed log-probs), gradient
checkpointing, distribution and checkpoints. ``cogpo_x<f>`` methods (``beta_sweep``) scale every pair's
beta by ``f``. With ``share_ref_log_probs`` the CogPO-family methods share one set of reference
log-probs (:mod:`cogpo_kit.training.ref_logps`).

The starting model may be an SFT adapter folder: its base is loaded once and the adapter merged in memory,
then the method's own LoRA goes on top; the saved ``model/`` is that LoRA, whose base is the SFT adapter
folder (so evaluation loads base + SFT adapter + method adapter, nothing merged on disk).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cogpo_kit.training.common import (is_main_process, load_model, load_tokenizer, lora_config,
                                       resumable_checkpoint, save_final_model, saved_kind, trainer_args, write_metrics)
from cogpo_kit.training.metrics import final_metrics
from cogpo_kit.training.config import PreferenceParams

if TYPE_CHECKING:
    from cogpo_kit.training.ref_logps import SharedRefLogps


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


def preference_dataset(pairs: list[dict], beta_scale: float = 1.0, ref_columns: Optional[dict] = None):
    """TRL's conversational preference format plus ``beta``, ``gap`` and ``pair_id`` (the pair's ``id``, its
    row number when it has none) columns, and the reference log-prob columns when given."""
    from datasets import Dataset

    rows = [{
        "prompt": p["prompt"],
        "chosen": [{"role": "assistant", "content": p["chosen"]}],
        "rejected": [{"role": "assistant", "content": p["rejected"]}],
        "beta": float(p["beta"]) * beta_scale,
        "gap": p["gap"],
        "pair_id": str(p.get("id", i)),
    } for i, p in enumerate(pairs)]
    for name, values in (ref_columns or {}).items():
        for row, value in zip(rows, values):
            row[name] = value
    return Dataset.from_list(rows)


def build_trainer(spec: MethodSpec, pairs: list[dict], *, init_path: str, pref: PreferenceParams,
                  out_dir: str | Path, seed: Optional[int] = None, shared: Optional["SharedRefLogps"] = None):
    """The TRL trainer of one method, ready to train (model loaded from ``init_path``: an HF folder, an
    adapter or a pointer folder). With ``shared``, a CogPO-family trainer uses the shared reference
    log-probs, or computes them (TRL's precompute pass) and hands them to ``shared`` when there are none yet."""
    tok = load_tokenizer(init_path)
    targs = trainer_args(pref.optim, Path(out_dir) / "checkpoints", seed=seed)
    peft = lora_config(pref.lora)
    # The config comes first: under DeepSpeed ZeRO-3 it must exist before the weights load.
    if spec.family == "simpo":
        from cogpo_kit.training.simpo import SimPOTrainer, simpo_config

        args = simpo_config(beta=spec.options["beta"], gamma=spec.options["gamma"], **targs)
        return SimPOTrainer(model=load_model(init_path, bf16=pref.optim.bf16), args=args,
                            train_dataset=preference_dataset(pairs, spec.beta_scale), processing_class=tok,
                            peft_config=peft)
    from cogpo_kit.training.cogpo_trainer import CogPOConfig
    from cogpo_kit.training.ref_logps import PrecomputedRefCogPOTrainer, ref_settings

    heads = dict(logprob_path=pref.logprob_head, logprob_token_chunk=pref.logprob_token_chunk,
                 logprob_vocab_chunk=pref.logprob_vocab_chunk)
    if shared is None:
        args = CogPOConfig(**targs, precompute_ref_log_probs=pref.precompute_ref_log_probs, **heads, **spec.options)
        return PrecomputedRefCogPOTrainer(model=load_model(init_path, bf16=pref.optim.bf16), args=args,
                                          train_dataset=preference_dataset(pairs, spec.beta_scale),
                                          processing_class=tok, peft_config=peft)
    args = CogPOConfig(**targs, precompute_ref_log_probs=True, **heads, **spec.options)
    settings = ref_settings(args)
    reuse = shared.ready(settings)
    columns = shared.columns([p["id"] for p in pairs]) if reuse else None
    trainer = PrecomputedRefCogPOTrainer(model=load_model(init_path, bf16=pref.optim.bf16), args=args,
                                         train_dataset=preference_dataset(pairs, spec.beta_scale, columns),
                                         processing_class=tok, peft_config=peft)
    if reuse:
        shared.check_used(trainer, spec.name)
    else:
        shared.take_from(trainer, settings, spec.name)
    return trainer


def train_preference(spec: MethodSpec, pairs: list[dict], *, init_path: str, pref: PreferenceParams,
                     out_dir: str | Path, logger: Optional[logging.Logger] = None,
                     shared: Optional["SharedRefLogps"] = None) -> dict:
    """Train one method; writes ``model/``, ``metrics.jsonl`` and ``checkpoints/`` in ``out_dir``.

    ``model/`` holds the method's LoRA adapter with ``init_path`` as its base (the merged model with
    ``merge_lora``), or the full weights without LoRA."""
    log = logger or logging.getLogger(__name__)
    out_dir = Path(out_dir)
    t0 = time.time()
    use_shared = shared if spec.family == "cogpo" else None
    ref_before = use_shared.source if use_shared is not None else None
    trainer = build_trainer(spec, pairs, init_path=init_path, pref=pref, out_dir=out_dir, shared=use_shared)
    from cogpo_kit.training.step_bar import use_step_bar

    use_step_bar(trainer, spec.name)
    setup = time.time() - t0
    from cogpo_kit.io import stable_hash
    from cogpo_kit.models.adapters import model_fingerprint
    from cogpo_kit.params.loader import params_dict

    key = {"pairs": stable_hash(pairs), "method": spec.name, "options": spec.options, "beta_scale": spec.beta_scale,
           "preference": params_dict(pref), "init": model_fingerprint(init_path)}
    resume = resumable_checkpoint(out_dir / "checkpoints", key, log)
    if resume:
        log.info("%s: resuming from %s", spec.name, resume)
    t1 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t1
    write_metrics(out_dir / "metrics.jsonl", trainer.state.log_history)
    save_final_model(trainer, out_dir / "model", base_path=init_path, merge_lora=pref.merge_lora, bf16=pref.optim.bf16)
    final = final_metrics(trainer.state.log_history)
    if use_shared is None:
        ref = "none" if spec.family == "simpo" else ("precomputed" if pref.precompute_ref_log_probs else "per step")
    else:
        computed_here = use_shared.source == "computed" and ref_before != "computed"
        ref = "computed for all" if computed_here else f"shared ({use_shared.source})"
    summary = {"method": spec.name, "pairs": len(pairs), "steps": trainer.state.global_step,
               "setup_seconds": round(setup, 2), "train_seconds": round(seconds, 2), "resumed_from": resume,
               "train_loss": result.training_loss, "final": final, "options": spec.options,
               "beta_scale": spec.beta_scale, "reference_logps": ref,
               "saved": saved_kind(pref.lora.enabled, pref.merge_lora), "base": str(init_path)}
    if is_main_process():
        log.info("%s finished: %d steps in %.1f s, train loss %.4f, margins %s", spec.name, summary["steps"],
                 seconds, result.training_loss, final.get("rewards/margins"))
    return summary
