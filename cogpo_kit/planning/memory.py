"""Per-GPU memory of one training run (an SFT variant or a preference method), term by term.

The estimate is the sum of what the run keeps at its peak, the backward pass of a micro-batch of
``per_device_batch_size`` rows at ``max_length`` tokens (both sides of a pair for preference training):

=====================  ==================================================================================
weights                every parameter in the training dtype (bfloat16 with ``optim.bf16`` on a GPU, else
                       float32); ZeRO-3 divides by the processes; LoRA adds its adapters in float32 (PEFT's
                       default for a 16-bit base)
gradients              one per trainable parameter (all of them, or the adapters), in the weights' dtype;
                       ZeRO-2/3 divide by the processes; plain DDP adds its gradient buckets (a second copy)
optimizer states       AdamW: without DeepSpeed two states per trainable parameter in its dtype (``torch``
                       AdamW keeps them like the parameter); under DeepSpeed with bfloat16 a float32 master copy
                       and two float32 states (12 bytes, the ZeRO paper's K), divided by the processes from
                       ZeRO-1 on, none on the GPU with optimizer offload
reference model        DPO-family methods whose reference log-probs are computed during training (neither
                       ``precompute_ref_log_probs`` nor ``share_ref_log_probs``) with full fine-tuning: a second
                       copy of the weights (ZeRO-3 shards it too); none under LoRA (the adapter-free model is
                       the reference), none when precomputed, none for SimPO
activations            with gradient checkpointing: each layer's input (hidden x tokens) for every layer, plus
                       one layer recomputed in full and its gradients; without: every layer in full. One layer
                       in full keeps per token 4 hidden + 3 query + 2 key/value widths for attention and its
                       norms (memory-efficient attention: no tokens x tokens scores) and 4 intermediate widths
                       for the gated MLP, plus 2 hidden widths of float32 RMSNorm inputs in bfloat16
logits path            SFT (TRL's fused LM head): tiles of 4096 tokens x 32768 vocabulary columns (eight float32
                       tile-sized temporaries in its CPU fallback, one buffer under Triton); CogPO, DPO and
                       beta-DPO (:mod:`cogpo_kit.training.chunked_logprobs`): two float32 tiles of
                       ``logprob_token_chunk`` x ``logprob_vocab_chunk`` (1024 x 8192); SimPO (TRL's CPO trainer):
                       the full logits of both sides and their gradient (tokens x vocabulary, twice; plus two
                       rows of float32 temporaries on CPU). All add the float32 gradient buffers of the hidden
                       states and, when the head trains, of the head weight (vocabulary x hidden)
DeepSpeed buffers      ZeRO-1/2: reduce and all-gather buckets (16-bit, 4.5 times with ``overlap_comm``, DeepSpeed's
                       own rule); ZeRO-3: its reduce and prefetch buckets and the parameters gathered at a time
                       (the LM head for the log-probs and two layers)
runtime reserve        GPU only: CUDA context, cuBLAS workspace, NCCL (an assumption, ``runtime_reserve_gb``)
=====================  ==================================================================================

The peak of a step is the LM head's backward: every activation is still saved, the log-prob temporaries are at
their largest, and the layers' gradients do not exist yet (they appear as the backward frees the activations).
So without gradient accumulation the total takes the larger of (activations + logits path) and the gradients;
with ``gradient_accumulation_steps`` above 1 the gradients of the earlier micro-steps are alive all along and
every term counts (:attr:`MemoryEstimate.total`).

Checked against measured peak memory on CPU by ``tests/test_plan.py`` (:mod:`cogpo_kit.planning.measure`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cogpo_kit.planning.parallel import Parallelism
from cogpo_kit.planning.shapes import ModelShape

LogprobPath = Literal["trl_fused", "chunked", "full_logits"]
"""How a trainer gets its per-token log-probs: TRL's fused head (SFT), the kit's chunked head (CogPO, DPO, beta-DPO),
the model's full logits (SimPO through TRL's CPO trainer)."""

TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768
"""TRL's fused LM head tiles (``trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE`` and the vocabulary chunk its
``add_fused_lm_head`` passes)."""
TRL_CPU_TEMPORARIES = 8.25
"""Tile-sized float32 tensors alive at once in TRL's torch fallback of the fused head's backward (``_backward_tile``:
the tile, the scaled tile, z, log p, p, the gradient, two expression temporaries, and a boolean mask)."""
CHUNKED_TILES = 2
"""Float32 tiles alive at once in :mod:`cogpo_kit.training.chunked_logprobs` (the forward's logits and exponentials)."""
OVERLAP_COMM_FACTOR = 4.5
"""DeepSpeed's rule for ``overlap_comm``: it uses 4.5 times the bucket sizes."""
DEFAULT_ALLGATHER_BUCKET = 5e8
"""DeepSpeed's default ``allgather_bucket_size`` (elements)."""

TERMS = ("weights", "gradients", "optimizer states", "reference model", "activations", "logits path",
         "DeepSpeed buffers", "runtime reserve")
"""The rows of a memory estimate, in order."""


@dataclass(frozen=True)
class TrainingSetup:
    """What one training run's memory depends on."""

    shape: ModelShape
    """The model trained."""
    batch: int
    """Rows (pairs) per device per micro-step."""
    max_length: int
    """Tokens of one row (one side of a pair)."""
    sequences_per_row: int = 1
    """1 for SFT; 2 for preference training (chosen and rejected go through the model together)."""
    bf16: bool = False
    """``optim.bf16`` (honoured on a GPU only, as the trainers do)."""
    gradient_checkpointing: bool = False
    """``optim.gradient_checkpointing``."""
    accumulation: int = 1
    """``optim.gradient_accumulation_steps``: above 1 the gradients of earlier micro-steps are alive all along."""
    lora_params: int = 0
    """Trainable adapter parameters (0: full fine-tuning)."""
    logprob_path: LogprobPath = "trl_fused"
    """How the trainer scores tokens."""
    reference: Literal["none", "model"] = "none"
    """``model``: a second copy of the weights serves as the reference during training."""
    parallel: Parallelism = field(default_factory=Parallelism)
    """GPUs, DDP or DeepSpeed, ZeRO stage and offload."""
    device: Literal["gpu", "cpu"] = "gpu"
    """Where it trains."""
    token_chunk: int = 1024
    """Chunked log-probs: tokens per tile."""
    vocab_chunk: int = 8192
    """Chunked log-probs: vocabulary columns per tile."""
    runtime_reserve_bytes: float = 2e9
    """GPU only: memory held by the runtime, not by tensors."""

    @property
    def half(self) -> bool:
        """Whether weights and activations are 16-bit."""
        return self.bf16 and self.device == "gpu"

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch on one device."""
        return self.batch * self.max_length * self.sequences_per_row


@dataclass
class MemoryEstimate:
    """Bytes per GPU (per process) of each term, and the peak they make together."""

    terms: dict[str, float]
    gradients_at_peak: bool = True
    """Whether the gradients are alive at the step's peak (the LM head's backward): always with gradient
    accumulation; without it only from the layers' backward on, when the activations are being freed."""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """The peak: every term, or without gradient accumulation the larger of (activations + logits path), at the
        LM head's backward, and the gradients, at the end of the backward, besides the rest."""
        total = sum(self.terms.values())
        if self.gradients_at_peak:
            return total
        return total - min(self.terms["gradients"], self.terms["activations"] + self.terms["logits path"])

    def to_dict(self) -> dict:
        return {"terms_gb": {k: round(v / 1e9, 3) for k, v in self.terms.items()},
                "gradients_at_peak": self.gradients_at_peak, "total_gb": round(self.total / 1e9, 3),
                "notes": list(self.notes)}


def layer_activation_elements(shape: ModelShape, half: bool) -> int:
    """Elements one decoder layer keeps per token for its backward pass (module doc)."""
    attn = 4 * shape.hidden + 3 * shape.q_dim + 2 * shape.kv_dim
    mlp = 4 * shape.intermediate
    norms_fp32 = 2 * shape.hidden if half else 0
    return attn + mlp + norms_fp32


def activation_bytes(s: TrainingSetup) -> float:
    """Activations of one micro-batch (module doc)."""
    b = 2 if s.half else 4
    sh = s.shape
    per_layer = layer_activation_elements(sh, s.half)
    outside = 4 * sh.hidden  # embedding output, final norm in and out, the hidden states the head reads
    if s.gradient_checkpointing:
        per_token = sh.layers * sh.hidden + per_layer + 2 * (sh.hidden + sh.intermediate) + outside
    else:
        per_token = sh.layers * per_layer + outside
    return float(per_token) * s.tokens * b


def logits_bytes(s: TrainingSetup) -> float:
    """The log-prob computation over the vocabulary (module doc)."""
    sh = s.shape
    b = 2 if s.half else 4
    n = s.tokens
    head_trains = s.lora_params == 0
    grads = 4.0 * n * sh.hidden + (0 if b == 4 else b * n * sh.hidden)  # float32 grad of the hidden states (+ cast)
    if head_trains:
        grads += 4.0 * sh.head_params() + (0 if b == 4 else b * sh.head_params())
    if s.logprob_path == "trl_fused":
        tile = min(n, TRL_TOKEN_TILE) * min(sh.vocab, TRL_VOCAB_TILE)
        work = tile * (4 * TRL_CPU_TEMPORARIES if s.device == "cpu" else b)
    elif s.logprob_path == "chunked":
        work = CHUNKED_TILES * 4.0 * min(n, s.token_chunk) * min(sh.vocab, s.vocab_chunk)
    else:  # the model's full logits and their gradient
        work = 2.0 * n * sh.vocab * b
        if s.device == "cpu":
            work += 2.0 * s.max_length * sh.vocab * 4  # a row's log-sum-exp and its backward, float32
    return work + grads


def deepspeed_bytes(s: TrainingSetup) -> float:
    """DeepSpeed's communication buckets and ZeRO-3's gathered parameters (module doc)."""
    p = s.parallel
    if p.kind != "deepspeed":
        return 0.0
    sh = s.shape
    b = 2 if s.half else 4
    factor = OVERLAP_COMM_FACTOR if p.overlap_comm else 1.0
    reduce = p.reduce_bucket if p.reduce_bucket is not None else sh.hidden * sh.hidden
    if p.zero_stage == 3:
        prefetch = p.prefetch_bucket if p.prefetch_bucket is not None else 0.9 * sh.hidden * sh.hidden
        gathered = sh.head_params() + 2 * sh.layer_params()
        return factor * b * (reduce + prefetch) + b * gathered
    if p.zero_stage in (1, 2):
        allgather = p.allgather_bucket if p.allgather_bucket is not None else DEFAULT_ALLGATHER_BUCKET
        return factor * b * (reduce + allgather)
    return 0.0


def estimate_memory(s: TrainingSetup) -> MemoryEstimate:
    """The per-GPU memory of a training run, term by term (bytes)."""
    sh, p = s.shape, s.parallel
    b = 2 if s.half else 4
    n_proc = max(1, p.processes)
    ds = p.kind == "deepspeed"
    zero = p.zero_stage if ds else 0
    total_params = sh.params()
    trainable = s.lora_params or total_params
    trainable_bytes = 4 if s.lora_params else b  # adapters stay float32
    notes: list[str] = []

    weights = total_params * b
    if s.lora_params:
        weights += 4.0 * s.lora_params
    if zero == 3:
        weights = 0.0 if p.offload_params else weights / n_proc
        if p.offload_params:
            notes.append("ZeRO-3 parameter offload: the 16-bit weights live in CPU memory, gathered layer by layer")

    grads = float(trainable) * trainable_bytes
    if zero >= 2:
        grads /= n_proc
    elif p.kind == "ddp":
        grads *= 2  # DDP's gradient buckets are a second copy (gradient_as_bucket_view is off by default)

    if ds and s.half:
        optim = 12.0 * trainable  # float32 master weights, exp_avg, exp_avg_sq
    else:
        optim = 2.0 * trainable * trainable_bytes  # exp_avg and exp_avg_sq in the parameter's dtype
    if zero >= 1:
        optim /= n_proc
        if p.offload_optimizer:
            notes.append(f"optimizer offload: {optim * n_proc / 1e9:.1f} GB of optimizer states (all processes) in "
                         "CPU memory instead")
            optim = 0.0

    reference = 0.0
    if s.reference == "model" and not s.lora_params:
        reference = total_params * b / (n_proc if zero == 3 else 1)

    terms = {
        "weights": weights,
        "gradients": grads,
        "optimizer states": optim,
        "reference model": reference,
        "activations": activation_bytes(s),
        "logits path": logits_bytes(s),
        "DeepSpeed buffers": deepspeed_bytes(s),
        "runtime reserve": s.runtime_reserve_bytes if s.device == "gpu" else 0.0,
    }
    return MemoryEstimate(terms=terms, gradients_at_peak=s.accumulation > 1, notes=notes)
