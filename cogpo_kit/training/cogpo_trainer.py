"""CogPO as a thin subclass of TRL's DPO trainer: each pair's own beta, optionally adjusted by its margin.

:class:`CogPOTrainer` changes only the loss: the per-pair ``beta`` column travels through the collator
into :func:`cogpo_kit.training.losses.cogpo_loss`. Tokenization, reference handling (a separate model,
the adapter-free model under LoRA, or precomputed log-probs), gradient checkpointing, distributed
training and checkpointing are TRL's. The same class runs

- CogPO: ``beta_column="beta"`` (paper eq. 3), optionally with eq. 4 (``dynamic_beta="instance"``);
- DPO: ``beta_column=None`` and ``beta`` (every pair the same beta; equal to TRL's DPO loss);
- beta-DPO (Wu et al. 2024): ``beta_column=None``, ``dynamic_beta="batch"``, ``filter_keep < 1`` for its data
  filtering (the preference stage sets 0.8, the authors' setting).

beta-DPO follows the authors' reference code (github.com/junkangwu/beta-DPO, ``trainers.py``): at every
micro-step the margins of the whole batch are gathered over processes (their ``all_gather_if_needed``), the
moving averages M_0 and sigma are updated with them first, then the kept pairs are drawn over that global batch
and the batch beta is computed from the kept pairs; see :mod:`cogpo_kit.training.losses` for the formulas.
Differences: the kept pairs are drawn from a generator seeded with ``seed`` and the micro-step (the same on
every process) instead of torch's global random state; evaluation batches neither move M_0 and sigma nor are
filtered (the reference does both on its evaluation batches; the preference stage runs no evaluation); and
``filter_loss_average`` (below).

Every variant logs rewards, margins and accuracies per gap type (see :mod:`cogpo_kit.training.metrics`).

Log-probs: the policy's and the reference's per-token log-probs (and the logged entropy) go through
:mod:`cogpo_kit.training.logprob_head`, which scores only the completion tokens in tiles of
``logprob_token_chunk`` x ``logprob_vocab_chunk`` (:mod:`cogpo_kit.training.chunked_logprobs`), so peak memory does
not grow with vocabulary x sequence length; ``logprob_path="trl"`` keeps TRL's own fused head, and the default
``"auto"`` takes it on CUDA devices (where TRL's Triton kernel tiles the completion tokens too, and is faster). The
patch is put on
the base model (under DDP and PEFT wrappers) at the first forward, which covers the reference pass of
``precompute_ref_log_probs`` inside TRL's constructor, and again after it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from accelerate.utils import is_peft_model
from transformers import ProcessorMixin
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from cogpo_kit.training.logprob_head import add_completion_logprob_head
from cogpo_kit.training.losses import (RunningMargin, batch_beta, cogpo_loss, filter_mask, filtered_mean,
                                       instance_beta, reward_margin)
from cogpo_kit.training.metrics import gap_ids, record_pair_metrics

_EXTRA_KEYS = ("beta", "gap_id")
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *_EXTRA_KEYS}
STATE_FILE = "cogpo_state.json"


@dataclass
class CogPOConfig(DPOConfig):
    """:class:`trl.DPOConfig` plus the per-pair and dynamic beta settings.

    Parameters:
        beta_column (`str` or `None`, defaults to `"beta"`):
            Dataset column holding each pair's beta (CogPO). `None`: every pair uses `beta` (DPO, beta-DPO).
        gap_column (`str` or `None`, defaults to `"gap"`):
            Dataset column with the pair's gap type (small / medium / large) for per-gap metrics; `None`: none.
        dynamic_beta (`str`, defaults to `"none"`):
            `"none"`: the beta given. `"instance"`: paper eq. 4, `beta_i* = beta_i * (1 + dynamic_alpha * (M_i - M_0))`.
            `"batch"`: beta-DPO, `beta* = beta * (1 + dynamic_alpha * (mean M - M_0))` for the whole batch.
            `M_i` is the pair's margin `h_i` (detached); adjusted betas are clamped at `min_beta`.
        dynamic_alpha (`float`, defaults to `0.0`):
            Scale of the adjustment (beta-DPO's alpha; the paper's eq. 4 alpha).
        dynamic_m0 (`float` or `None`, defaults to `None`):
            Fixed threshold M_0; `None`: the moving average of batch mean margins (momentum `margin_momentum`,
            starting at 0, as the reference).
        margin_momentum (`float`, defaults to `0.9`):
            Momentum of the moving averages M_0 and sigma (the reference's fixed `gamma=0.9`).
        filter_keep (`float`, defaults to `1.0`):
            beta-DPO data filtering (`dynamic_beta="batch"` only): share of each global micro-batch (the pairs of
            one micro-step on all processes) kept, `int(B * filter_keep)` pairs drawn without replacement with
            weights `exp(-(M_i - M_0)^2 / (2 sigma^2))`; the reference's `1 - mode_weight`. `1.0` disables it.
        filter_loss_average (`str`, defaults to `"global"`):
            With filtering, the loss is the mean over the kept pairs of the global micro-batch (`"global"`: each
            process returns the sum of its kept losses times the number of processes over the global kept count,
            so the average over processes is that mean). `"process"`: each process averages its own kept pairs,
            as the reference (`masked_losses.sum() / local_mask.sum()`); the gradient then depends on how the kept
            pairs fall across processes. Both are the same on one process.
        min_beta (`float`, defaults to `1e-3`):
            Lower bound of an adjusted beta.
        logprob_path (`str`, defaults to `"auto"`):
            How the policy and reference log-probs are computed. `"auto"`: `"trl"` when the model is on a CUDA
            device (TRL's Triton kernel already scores only completion tokens in tiles there, with as little memory
            as `"chunked"` and 3.7-4.4x faster in `benchmarks/results/training_gpu.md`), `"chunked"` elsewhere.
            `"chunked"`: only the completion tokens, in tiles
            of `logprob_token_chunk` x `logprob_vocab_chunk` through the LM head, recomputed in backward (no
            tokens x vocabulary tensor). `"full"`: through the full logits and `log_softmax` (the plain computation;
            memory grows with tokens x vocabulary). `"trl"`: TRL's fused LM head as shipped (every position scored,
            tiles of 4096 tokens x 32768 columns without Triton; on CUDA, TRL's Triton kernel over the completion
            tokens). All give the same values (within float32 rounding).
        logprob_token_chunk (`int`, defaults to `1024`):
            Tokens per tile of the chunked path. A float32 tile is `4 * token_chunk * vocab_chunk` bytes (32 MB at the
            defaults); at most two exist at a time, plus the gradient of the LM head weight.
        logprob_vocab_chunk (`int`, defaults to `8192`):
            Vocabulary columns per tile of the chunked path (a value above the vocabulary size means one tile wide).
    """

    beta_column: Optional[str] = field(default="beta", metadata={"help": "Column with each pair's beta (None: `beta`)."})
    gap_column: Optional[str] = field(default="gap", metadata={"help": "Column with each pair's gap type."})
    dynamic_beta: str = field(default="none", metadata={"help": "none | instance (eq. 4) | batch (beta-DPO)."})
    dynamic_alpha: float = field(default=0.0, metadata={"help": "Scale of the dynamic beta adjustment."})
    dynamic_m0: Optional[float] = field(default=None, metadata={"help": "Fixed M_0 (None: running mean)."})
    margin_momentum: float = field(default=0.9, metadata={"help": "Momentum of the running margin statistics."})
    filter_keep: float = field(default=1.0, metadata={"help": "beta-DPO filtering: share of each batch kept."})
    filter_loss_average: str = field(default="global", metadata={
        "help": "beta-DPO filtering: mean over the kept pairs of the global batch (global) or per process."})
    min_beta: float = field(default=1e-3, metadata={"help": "Lower bound of an adjusted beta."})
    logprob_path: str = field(default="auto", metadata={"help": "auto | chunked | full | trl: how log-probs are computed."})
    logprob_token_chunk: int = field(default=1024, metadata={"help": "Tokens per tile of the chunked log-probs."})
    logprob_vocab_chunk: int = field(default=8192, metadata={"help": "Vocabulary columns per tile of the chunked log-probs."})

    def __post_init__(self):
        super().__post_init__()
        if self.dynamic_beta not in ("none", "instance", "batch"):
            raise ValueError(f"dynamic_beta must be none, instance or batch, got {self.dynamic_beta!r}")
        if self.dynamic_beta == "batch" and self.beta_column is not None:
            raise ValueError("dynamic_beta='batch' (beta-DPO) adjusts one beta (`beta`): set beta_column=None")
        if self.filter_loss_average not in ("global", "process"):
            raise ValueError(f"filter_loss_average must be global or process, got {self.filter_loss_average!r}")
        if not 0.0 < self.filter_keep <= 1.0:
            raise ValueError(f"filter_keep must be in (0, 1], got {self.filter_keep}")
        if self.filter_keep < 1.0 and self.dynamic_beta != "batch":
            raise ValueError("filter_keep < 1 is beta-DPO's data filtering: it needs dynamic_beta='batch'")
        if self.logprob_path not in ("auto", "chunked", "full", "trl"):
            raise ValueError(f"logprob_path must be auto, chunked, full or trl, got {self.logprob_path!r}")
        if self.logprob_token_chunk < 1 or self.logprob_vocab_chunk < 1:
            raise ValueError(f"logprob_token_chunk and logprob_vocab_chunk must be >= 1, got "
                             f"{self.logprob_token_chunk} and {self.logprob_vocab_chunk}")
        if not 0.0 <= self.margin_momentum < 1.0:
            raise ValueError(f"margin_momentum must be in [0, 1), got {self.margin_momentum}")
        if self.beta <= 0 or self.min_beta <= 0:
            raise ValueError("beta and min_beta must be positive")
        unsupported = {"loss_type": (self.loss_type, ["sigmoid"]), "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
                       "ld_alpha": (self.ld_alpha, None), "use_weighting": (self.use_weighting, False),
                       "label_smoothing": (self.label_smoothing, 0.0)}
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"CogPOTrainer implements the sigmoid loss only: {name} must be {supported!r}, got {value!r}")


@dataclass
class CogPODataCollator(DataCollatorForPreference):
    """TRL's preference collator plus a ``beta`` tensor and a ``gap_id`` tensor per pair."""

    beta_column: Optional[str] = "beta"
    gap_column: Optional[str] = "gap"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if self.beta_column is not None:
            out["beta"] = torch.tensor([float(e[self.beta_column]) for e in examples], dtype=torch.float32)
        if self.gap_column is not None and self.gap_column in examples[0]:
            out["gap_id"] = gap_ids([e[self.gap_column] for e in examples])
        return out


class CogPOTrainer(DPOTrainer):
    """TRL's :class:`~trl.DPOTrainer` with per-pair (and optionally margin-adjusted) betas; see the module doc."""

    _tag_names = ["trl", "dpo", "cogpo"]
    _name = "CogPO"

    def __init__(self, model, ref_model=None, args: Optional[CogPOConfig] = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if not isinstance(args, CogPOConfig):
            raise TypeError("CogPOTrainer needs a CogPOConfig")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        columns = train_dataset.column_names or []
        for col in (args.beta_column,):
            if col is not None and col not in columns:
                raise ValueError(f"train_dataset has no '{col}' column (CogPOConfig.beta_column); columns: {columns}")
        if data_collator is None and processing_class is not None:
            tok = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            data_collator = CogPODataCollator(
                pad_token_id=tok.pad_token_id, max_length=args.max_length, truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of, beta_column=args.beta_column,
                gap_column=args.gap_column if args.gap_column in columns else None)
        self.margin_stats = RunningMargin(momentum=args.margin_momentum)
        self._micro_steps = 0
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        for m in (self.model, self.ref_model):
            if m is not None:
                self._use_logprob_head(m)

    # -- data ---------------------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for col in (self.args.beta_column, self.args.gap_column):
            if col is not None and col not in self._signature_columns:
                self._signature_columns = list(self._signature_columns) + [col]

    def logprob_path_in_use(self, model) -> str:
        """``args.logprob_path`` with ``auto`` resolved: ``trl`` when ``model``'s weights are on a CUDA device,
        else ``chunked``."""
        if self.args.logprob_path != "auto":
            return self.args.logprob_path
        try:
            device = next(model.parameters()).device
        except StopIteration:  # pragma: no cover - a model without parameters
            return "chunked"
        return "trl" if device.type == "cuda" else "chunked"

    def _use_logprob_head(self, model) -> None:
        """Put the log-prob head of ``args.logprob_path`` on the base model under ``model``'s wrappers (once)."""
        path = self.logprob_path_in_use(model)
        if path == "trl":
            return
        base = self.accelerator.unwrap_model(model)
        if is_peft_model(base):
            base = base.get_base_model()
        add_completion_logprob_head(base, path=path, token_chunk=self.args.logprob_token_chunk,
                                    vocab_chunk=self.args.logprob_vocab_chunk)

    def compute_ref_log_probs(self, model, inputs):
        self._use_logprob_head(model)
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in _EXTRA_KEYS})

    # -- loss ---------------------------------------------------------------------------------------------
    def _effective_beta(self, margins: torch.Tensor, pair_beta: Optional[torch.Tensor], mode: str):
        """The betas the loss uses, this process's filtering mask (``None``: every pair counts) and the
        number of pairs kept over all processes.

        ``margins`` (B,) are this process's; every statistic is taken over the global micro-batch (gathered
        over processes, equal-sized local batches in process order), as the reference's ``all_gather_if_needed``.
        """
        args = self.args
        beta = pair_beta if pair_beta is not None else float(self.beta)
        if args.dynamic_beta == "none":
            return beta, None, None
        all_margins = self.accelerator.gather(margins)
        if mode == "train":
            self.margin_stats.update(all_margins)  # before the loss, with every pair (reference line 279)
        m0 = args.dynamic_m0 if args.dynamic_m0 is not None else self.margin_stats.mean
        if args.dynamic_beta == "instance":
            return instance_beta(beta, margins, m0, args.dynamic_alpha, min_beta=args.min_beta), None, None
        global_mask = None
        if args.filter_keep < 1.0 and mode == "train":
            gen = torch.Generator().manual_seed(int(args.seed) * 1_000_003 + self._micro_steps)
            global_mask = filter_mask(all_margins, self.margin_stats.mean, self.margin_stats.std, args.filter_keep, gen)
        b = batch_beta(float(self.beta), all_margins, m0, args.dynamic_alpha, mask=global_mask, min_beta=args.min_beta)
        if global_mask is None:
            return b, None, None
        n = margins.shape[0]
        start = self.accelerator.process_index * n
        return b, global_mask[start:start + n].to(margins.device), global_mask.sum().item()

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        pair_beta = inputs.get("beta") if self.args.beta_column is not None else None
        gap = inputs.get("gap_id")
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_completion_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        self._use_logprob_head(model)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_completion_mask.size(1)
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)

        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(
                self.ref_model if self.ref_model is not None else self.model, inputs)

        margins = reward_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
        beta, mask, kept = self._effective_beta(margins, pair_beta, mode)
        losses, chosen_rewards, rejected_rewards = cogpo_loss(
            chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
        if self.args.dynamic_beta == "batch":
            # beta-DPO logs rewards with the base beta (reference lines 93-94), comparable with DPO's.
            chosen_rewards = float(self.beta) * (chosen_logps - ref_chosen_logps).detach()
            rejected_rewards = float(self.beta) * (rejected_logps - ref_rejected_logps).detach()
        if mask is None:
            loss = losses.mean()
        else:
            loss = filtered_mean(losses, mask, kept_total=kept, processes=self.accelerator.num_processes,
                                 average=self.args.filter_loss_average)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        if mode == "train":
            self._micro_steps += 1

        store = self._metrics[mode]
        gather = self.accelerator.gather
        record_pair_metrics(store, gather, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                            losses=losses, gap=gap)
        store["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        store["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        b = torch.as_tensor(beta, dtype=torch.float32, device=margins.device).expand_as(margins)
        store["beta/mean"].append(gather(b.contiguous()).mean().item())
        if self.args.dynamic_beta != "none":
            store["margin/running_mean"].append(self.margin_stats.mean)
        if mask is not None:
            store["filter/kept"].append(gather(mask).mean().item())
        per_token_entropy = outputs.entropy[:, -seq_len:].detach()
        entropy_sum = gather((per_token_entropy * shift_completion_mask).sum()).sum()
        total_tokens = gather(shift_completion_mask.sum()).sum()
        store["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        store["num_tokens"] = [self._total_train_tokens]

        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            if os.path.isdir(folder):
                state = {"margin_stats": self.margin_stats.state_dict(), "micro_steps": self._micro_steps}
                with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as fh:
                    json.dump(state, fh)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if path is True:
            from cogpo_kit.training.common import last_checkpoint  # skips checkpoints cut by a kill

            path = resume_from_checkpoint = last_checkpoint(self.args.output_dir)
            if path is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if isinstance(path, (str, os.PathLike)) and os.path.exists(os.path.join(path, STATE_FILE)):
            with open(os.path.join(path, STATE_FILE), encoding="utf-8") as fh:
                state = json.load(fh)
            self.margin_stats.load_state_dict(state["margin_stats"])
            self._micro_steps = int(state["micro_steps"])
        return super().train(resume_from_checkpoint, *args, **kwargs)
