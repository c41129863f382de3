"""Run parameters of the SFT and preference stages (translated into TRL configs by the trainers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass(frozen=True)
class LoraParams:
    """LoRA adapters through PEFT."""

    enabled: bool = True
    """Train LoRA adapters (``false``: full fine-tuning)."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator."""
    dropout: float = 0.0
    """Adapter dropout."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Modules that get adapters."""


@dataclass(frozen=True)
class OptimParams:
    """Optimisation settings shared by SFT and preference training."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    epochs: float = 3.0
    """Training epochs (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use ``epochs``)."""
    per_device_batch_size: int = 1
    """Examples (or pairs) per device per micro-step."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step; global batch = per_device x accumulation x processes."""
    warmup_ratio: float = 0.1
    """Share of steps spent warming up the learning rate."""
    lr_scheduler: str = "cosine"
    """Transformers scheduler name."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = 1024
    """Longest tokenized example (prompt + response)."""
    bf16: bool = False
    """Train in bfloat16 (GPU servers)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    logging_steps: int = 1
    """Log metrics every N steps."""
    save_steps: int = 50
    """Checkpoint every N steps (resume after a kill picks up the latest)."""
    save_total_limit: int = 1
    """Checkpoints kept in ``checkpoints/`` (older ones are deleted)."""
    seed: int = 0
    """Training seed."""


@dataclass(frozen=True)
class SFTParams:
    """Stage 04: supervised fine-tuning on D_SFT* (CRV+SFT) and on the original CoTs (SFT baseline)."""

    model: str = "embedded:smollm2-135m-instruct"
    """The student model spec (also the zero-shot baseline)."""
    variants: tuple[str, ...] = ("crv_sft", "sft")
    """``crv_sft`` trains on D_SFT*; ``sft`` trains on the original CoTs of the same problems."""
    optim: OptimParams = field(default_factory=OptimParams)
    """Optimisation (paper Table 8: batch 96, lr 1e-5, 3 epochs)."""
    lora: LoraParams = field(default_factory=LoraParams)
    """LoRA settings (``enabled: false`` for full fine-tuning as in the paper)."""
    merge_lora: bool = True
    """Merge adapters into the saved checkpoint so later stages load one plain model."""


@dataclass(frozen=True)
class PreferenceParams:
    """Stage 05: CogPO and the baselines, all from the same SFT checkpoint on the same pairs."""

    methods: tuple[str, ...] = ("cogpo", "dpo", "beta_dpo", "simpo")
    """Methods to train."""
    init_from: str = "crv_sft"
    """SFT variant the preference methods start from."""
    optim: OptimParams = field(default_factory=lambda: OptimParams(learning_rate=5e-7, epochs=1.0))
    """Optimisation (paper Table 8: batch 96, lr 5e-7, 1 epoch)."""
    lora: LoraParams = field(default_factory=LoraParams)
    """LoRA; with adapters the adapter-free model serves as the reference (no second copy)."""
    dpo_beta: float = 0.1
    """DPO baseline beta."""
    beta_dpo_alpha: float = 0.6
    """beta-DPO: scale of the beta adjustment, beta* = beta0 * (1 + alpha * (M - M0))."""
    beta_dpo_filter: bool = False
    """beta-DPO: the optional data filter (keep pairs whose margin is near the running mean)."""
    beta_dpo_keep: float = 0.8
    """beta-DPO data filter (with ``beta_dpo_filter``): share of each global batch kept."""
    beta_dpo_momentum: float = 0.9
    """beta-DPO: momentum of the running mean M0 of reward margins."""
    simpo_beta: float = 2.0
    """SimPO beta."""
    simpo_gamma: float = 0.3
    """SimPO target margin gamma (TRL: ``simpo_gamma``)."""
    cogpo_alpha: float = 0.0
    """CogPO combined with beta-DPO (paper eq. 4): alpha; 0 disables the combination."""
    cogpo_m0: Optional[float] = None
    """CogPO + beta-DPO threshold M0; ``None``: a running mean of margins."""
    precompute_ref_log_probs: bool = False
    """Compute reference log-probs once before training (less memory, one extra pass)."""
    beta_sweep: tuple[float, ...] = ()
    """Optional sweep (paper Figure 6): scale all CogPO betas by each factor and train one model per value."""

    def __post_init__(self) -> None:
        known = ("cogpo", "dpo", "beta_dpo", "simpo")
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"methods: unknown method {unknown[0]!r} (known: {', '.join(known)})")
        for name in ("dpo_beta", "simpo_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.beta_dpo_keep <= 1.0:
            raise ValueError(f"beta_dpo_keep must be in (0, 1], got {self.beta_dpo_keep}")
        if not 0.0 <= self.beta_dpo_momentum < 1.0:
            raise ValueError(f"beta_dpo_momentum must be in [0, 1), got {self.beta_dpo_momentum}")
        bad = [f for f in self.beta_sweep if not f > 0]
        if bad:
            raise ValueError(f"beta_sweep factors must be positive, got {bad[0]}")
