"""Settings of a plan (the hardware it is made for and the assumptions it states), and the GPU table.

These are not run parameters: the same run can be planned for different machines. ``cogpo-kit plan`` fills
:class:`PlanSettings` from its options (``--gpu``, ``--gpu-memory-gb``, ``--mfu``, ...); a notebook passes
keyword arguments to :func:`cogpo_kit.viz.plan_view.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


class PlanError(ValueError):
    """A plan cannot be made: an unknown GPU, an unreadable launch config, a bad assumption (the message names it)."""


@dataclass(frozen=True)
class GPU:
    """One accelerator type: what a plan needs of it."""

    name: str
    """Marketing name, shown in the plan."""
    memory_gb: float
    """Memory per device in GB (10^9 bytes, as the vendors count)."""
    bf16_tflops: float
    """Peak dense bfloat16 tensor throughput per device (TFLOP/s, no sparsity), from the vendor's data sheet."""


GPUS: dict[str, GPU] = {
    "a800-80gb": GPU("NVIDIA A800 80GB", 80, 312),  # the paper's GPUs (Appendix A.2); A100 silicon
    "a100-80gb": GPU("NVIDIA A100 80GB", 80, 312),
    "a100-40gb": GPU("NVIDIA A100 40GB", 40, 312),
    "h100-80gb": GPU("NVIDIA H100 SXM 80GB", 80, 989),
    "h800-80gb": GPU("NVIDIA H800 SXM 80GB", 80, 989),
    "h200-141gb": GPU("NVIDIA H200 141GB", 141, 989),
    "l40s-48gb": GPU("NVIDIA L40S 48GB", 48, 362),
}
"""``--gpu`` choices: memory and peak dense BF16 throughput (NVIDIA data sheets)."""


@dataclass(frozen=True)
class PlanSettings:
    """The machine a plan is made for and the assumptions behind its time and call estimates."""

    gpu: str = "a100-80gb"
    """Accelerator type, a key of :data:`GPUS` (its memory and peak BF16 throughput)."""
    gpu_memory_gb: Optional[float] = None
    """Memory per GPU in GB; a stage whose per-GPU estimate is above it gets a warning (``None``: the GPU's)."""
    peak_tflops: Optional[float] = None
    """Peak BF16 TFLOP/s per GPU the time estimate is a share of (``None``: the GPU's)."""
    mfu: float = 0.4
    """Assumed model FLOPs utilisation: the share of the peak the training steps reach, counted on the model's
    own FLOPs (``6 N`` per trained token plus attention; recomputation under gradient checkpointing is not
    counted, so it lowers the share this stands for)."""
    device: Literal["gpu", "cpu"] = "gpu"
    """``gpu``: a GPU server (``optim.bf16`` trains in bfloat16, CUDA runtime reserve counted); ``cpu``: the kit's
    CPU path (float32, no launcher memory terms, the CPU fallbacks of the log-prob kernels; no time estimate)."""
    tokens_per_row: Optional[int] = None
    """Mean tokens of a training row (one side of a pair) assumed where no stage output gives real lengths
    (``None``: the stage's ``max_length``, an upper bound)."""
    runtime_reserve_gb: float = 2.0
    """Per-GPU memory no tensor of the run holds: CUDA context, cuBLAS workspace, NCCL buffers (assumed)."""
    level_shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    """Assumed shares of easy, medium and hard CoTs where ``01_critique`` has not rated the data yet."""
    vote_agreement: float = 0.75
    """Assumed chance that the Critic's first two votes agree (then early exit skips the third)."""
    verifier_yes: float = 0.75
    """Assumed chance that the Verifier accepts a CoT (medium CoTs and rewrites alike)."""
    rerated_medium: float = 0.5
    """Assumed chance that a verified rewrite is re-rated medium (and kept)."""

    def __post_init__(self) -> None:
        if self.gpu not in GPUS:
            raise PlanError(f"gpu: unknown GPU {self.gpu!r} (known: {', '.join(GPUS)}; or give --gpu-memory-gb and "
                            "--peak-tflops with the nearest one)")
        if not 0 < self.mfu <= 1:
            raise PlanError(f"mfu must be in (0, 1], got {self.mfu}")
        for name in ("gpu_memory_gb", "peak_tflops", "tokens_per_row"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PlanError(f"{name} must be positive, got {value}")
        if len(self.level_shares) != 3 or any(s < 0 for s in self.level_shares) or not sum(self.level_shares) > 0:
            raise PlanError(f"level_shares must be three non-negative shares (easy, medium, hard), got {self.level_shares}")
        for name in ("vote_agreement", "verifier_yes", "rerated_medium"):
            if not 0 <= getattr(self, name) <= 1:
                raise PlanError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    @property
    def gpu_spec(self) -> GPU:
        return GPUS[self.gpu]

    @property
    def memory_bytes(self) -> float:
        """Memory per GPU in bytes."""
        return (self.gpu_memory_gb if self.gpu_memory_gb is not None else self.gpu_spec.memory_gb) * 1e9

    @property
    def peak_flops(self) -> float:
        """Peak FLOP/s per GPU."""
        return (self.peak_tflops if self.peak_tflops is not None else self.gpu_spec.bf16_tflops) * 1e12


def add_arguments(p) -> None:
    """The ``cogpo-kit plan`` options (besides the params files and ``-o``): one per :class:`PlanSettings` field the
    command line sets."""
    p.add_argument("--gpu", default=PlanSettings.gpu, choices=sorted(GPUS),
                   help=f"GPU type: memory and peak BF16 TFLOP/s (default {PlanSettings.gpu})")
    p.add_argument("--gpu-memory-gb", type=float, help="memory per GPU in GB (default: the GPU type's)")
    p.add_argument("--peak-tflops", type=float, help="peak BF16 TFLOP/s per GPU (default: the GPU type's)")
    p.add_argument("--mfu", type=float, default=PlanSettings.mfu,
                   help=f"assumed model FLOPs utilisation (default {PlanSettings.mfu})")
    p.add_argument("--device", choices=["gpu", "cpu"], default=PlanSettings.device,
                   help="plan for GPU servers (default) or the kit's CPU path (float32; memory against this machine's RAM)")
    p.add_argument("--tokens-per-row", type=int,
                   help="mean tokens of a training row where no stage output gives real lengths (default: max_length)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write plan.json / plan.md")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when a training run will not fit")


def settings_from_args(args) -> PlanSettings:
    """The :class:`PlanSettings` of parsed ``cogpo-kit plan`` options."""
    return PlanSettings(gpu=args.gpu, gpu_memory_gb=args.gpu_memory_gb, peak_tflops=args.peak_tflops, mfu=args.mfu,
                        device=args.device, tokens_per_row=args.tokens_per_row)
