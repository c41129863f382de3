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
class LaunchParams:
    """How a training stage runs: in this process, or under a multi-process launcher it starts itself.

    With ``config`` empty and ``num_processes`` and ``num_machines`` 1 the stage trains in the calling process
    (CPU or one GPU), as ``cogpo-kit run`` and the notebooks always did. Otherwise the stage (called from a
    notebook, ``cogpo-kit run``, ``--in-process`` or ``cogpo-kit train``) writes the run's parameters to
    ``<stage>/launch/params.yaml``, starts the launcher on ``cogpo-kit train`` with that file, streams its
    output and log back, and fails with the launcher's own error; a rerun resumes from the stage's
    checkpoints as in-process runs do (:mod:`cogpo_kit.training.launch`). A process already started by a
    launcher (``torchrun``/``accelerate launch`` on the command line) trains: it never launches again."""

    launcher: Literal["accelerate", "torchrun"] = "accelerate"
    """``accelerate``: ``accelerate launch --config_file <config> --num_processes <num_processes>`` (DDP or
    DeepSpeed ZeRO, one or many nodes); ``torchrun``: ``torchrun --standalone --nproc_per_node
    <num_processes>`` (plain DDP; on CPU the processes use gloo)."""
    config: Optional[str] = None
    """Accelerate config file (``params/launch/ddp.yaml``, ``zero2.yaml``, ``zero3.yaml``, ...): an absolute path,
    or relative to the current directory or the first folder above it that holds it (a notebook opened in
    JupyterLab runs in ``notebooks/``); the launcher runs in that folder, so the DeepSpeed JSON the config
    names (if any, setting the ZeRO stage and offload) is found as on the command line. Empty: accelerate's
    own default config. Not used by ``torchrun`` (an error there)."""
    num_processes: int = 1
    """Processes in all (GPUs over all nodes); passed to the launcher and overriding the config's value. The
    global batch is ``per_device_batch_size x gradient_accumulation_steps x num_processes``."""
    num_machines: int = 1
    """Nodes; the stage starts the launcher of its own node, so with more than one, the same stage runs on
    every node and ``machine_rank``/``main_process_ip`` (accelerate) or the ``PET_*`` rendezvous variables
    (torchrun) come from the node's config or environment (a SLURM recipe)."""

    @property
    def enabled(self) -> bool:
        """Whether the stage starts a launcher instead of training in-process."""
        return bool(self.config) or self.num_processes > 1 or self.num_machines > 1

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be at least 1, got {self.num_processes}")
        if self.num_machines < 1:
            raise ValueError(f"num_machines must be at least 1, got {self.num_machines}")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                             f"({self.num_machines}): every node runs the same number of processes")
        if self.launcher == "torchrun" and self.config:
            raise ValueError(f"config {self.config!r} is an accelerate config: torchrun takes none (set "
                             "launcher: accelerate, or leave config empty)")


@dataclass(frozen=True)
class SFTParams:
    """Stage 04: supervised fine-tuning on D_SFT* (CRV+SFT) and on the original CoTs (SFT baseline)."""

    variants: tuple[str, ...] = ("crv_sft", "sft")
    """``crv_sft`` trains on D_SFT*; ``sft`` on the original dataset, every row (the paper's SFT baseline);
    ``sft_same_problems`` on the original CoTs of the D_SFT* problems only (isolates the rewrites);
    ``sft_easy`` / ``sft_medium`` / ``sft_hard`` on equal-size sets of the original CoTs of one Critic level
    (paper Table 5; needs ``crv.equal_level_subsets``)."""
    optim: OptimParams = field(default_factory=OptimParams)
    """Optimisation (paper Table 8: batch 96, lr 1e-5, 3 epochs)."""
    lora: LoraParams = field(default_factory=LoraParams)
    """LoRA settings (``enabled: false`` for full fine-tuning as in the paper)."""
    launch: LaunchParams = field(default_factory=LaunchParams)
    """In-process (default) or a multi-process launcher started by the stage itself."""
    merge_lora: bool = False
    """With LoRA, save the merged full model in ``<variant>/model/`` instead of the adapter. ``false``: the
    adapter (a few MB) with its base recorded; readers merge in memory, or once into the cache where a
    consumer needs full weights on disk (:mod:`cogpo_kit.models.adapters`)."""

    def __post_init__(self) -> None:
        known = ("crv_sft", "sft", "sft_same_problems", "sft_easy", "sft_medium", "sft_hard")
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise ValueError(f"variants: unknown SFT variant {unknown[0]!r} (known: {', '.join(known)})")


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
    """beta-DPO: scale of the beta adjustment, beta* = beta0 * (1 + alpha * (mean M of kept pairs - M0)); the
    reference's ``loss.a`` (0.6 in the run its README gives; the paper's Table 8 lists no beta-DPO values)."""
    beta_dpo_filter: bool = True
    """beta-DPO: beta-guided data filtering, on as the authors ran it (``loss.mode_loss=beta_DPO``): at each
    micro-step, pairs of the global batch are drawn with weights exp(-(M - M0)^2 / (2 sigma^2))."""
    beta_dpo_keep: float = 0.8
    """beta-DPO data filter: share kept of each global micro-batch (per-device batch x processes pairs),
    int(pairs x keep) and at least one; the reference's ``1 - loss.mode_weight`` with ``mode_weight`` 0.2."""
    beta_dpo_momentum: float = 0.9
    """beta-DPO: momentum of the moving averages M0 and sigma of the batch mean and standard deviation of
    the margins (the reference's fixed 0.9; both start at 0)."""
    beta_dpo_loss_average: Literal["global", "process"] = "global"
    """beta-DPO filter: the loss is the mean over the kept pairs of the global micro-batch (``global``).
    ``process``: each process averages its own kept pairs, as the reference does (trainers.py lines 333-338);
    on one process both are the same."""
    simpo_beta: float = 2.0
    """SimPO beta."""
    simpo_gamma: float = 0.3
    """SimPO target reward margin. Paper Table 8 gives ``gamma 0.3`` with beta 2.0 under the symbol gamma, which
    the SimPO paper uses for the margin itself in ``-log sigmoid(beta * (avg log pi(y_w) - avg log pi(y_l)) -
    gamma)``, not for gamma / beta; the kit reads it so. That is TRL's ``CPOConfig.simpo_gamma`` (TRL computes
    ``beta * (pi_logratios - simpo_gamma / beta)``), so 0.3 goes to TRL unchanged (gamma / beta = 0.15). The
    paper does not say which it meant; ``simpo_gamma_convention: ratio`` gives the other reading."""
    simpo_gamma_convention: Literal["margin", "ratio"] = "margin"
    """How ``simpo_gamma`` is read. ``margin``: the margin gamma itself (TRL's ``simpo_gamma``, the SimPO
    paper's gamma). ``ratio``: gamma / beta, the ``gamma_beta_ratio`` of the SimPO authors' scripts since July
    2024; TRL then gets ``simpo_gamma * simpo_beta`` (0.3 with beta 2.0 -> 0.6)."""
    cogpo_alpha: float = 0.0
    """CogPO combined with beta-DPO (paper eq. 4): alpha; 0 disables the combination."""
    cogpo_m0: Optional[float] = None
    """CogPO + beta-DPO threshold M0; ``None``: a running mean of margins."""
    precompute_ref_log_probs: bool = False
    """Compute reference log-probs once before training (less memory, one extra pass); with
    ``share_ref_log_probs`` the CogPO-family methods always use precomputed ones."""
    share_ref_log_probs: bool = True
    """Compute the reference log-probs of every pair once with the starting model (TRL's precompute pass,
    in the first CogPO-family trainer), keep them in ``05_preference/ref_logps.jsonl`` and give them to CogPO,
    DPO, beta-DPO and the ``cogpo_x<f>`` sweep (the same values each would compute). ``false``: each trainer
    computes its own as ``precompute_ref_log_probs`` says. SimPO uses no reference."""
    launch: LaunchParams = field(default_factory=LaunchParams)
    """In-process (default) or a multi-process launcher started by the stage itself (see ``sft.launch``)."""
    merge_lora: bool = False
    """With LoRA, save the merged full model in ``<method>/model/`` instead of the adapter (see
    ``sft.merge_lora``)."""
    logprob_head: Literal["auto", "chunked", "full", "trl"] = "auto"
    """How CogPO, DPO and beta-DPO compute log-probs through the LM head (the same values each way). ``chunked``:
    only the completion tokens, in tiles (no tokens x vocabulary tensor; on the CPU 0.18-0.20x TRL's peak memory
    and 0.17-0.28x its step time, ``benchmarks/results/training.md``). ``trl``: TRL's own head, on a GPU a Triton
    kernel that already scores only completion tokens in tiles (as little memory as ``chunked`` there and 3.7-4.4x
    faster, ``benchmarks/results/training_gpu.md``). ``auto``: ``trl`` on a CUDA device, ``chunked`` elsewhere.
    ``full``: the plain full logits and ``log_softmax`` (memory grows with tokens x vocabulary)."""
    logprob_token_chunk: int = 1024
    """Tokens per tile of the ``chunked`` log-prob path."""
    logprob_vocab_chunk: int = 8192
    """Vocabulary columns per tile of the ``chunked`` log-prob path."""
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
